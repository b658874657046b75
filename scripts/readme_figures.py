#!/usr/bin/env python
"""Render the README's pictures of the packaged model (run after shipping a new one).

docs/demo_matte.jpg             the packaged sample clip at 512x288: input | alpha | composite
                                over green, three frames (states carried from frame 0), the
                                packaged model in PyTorch (bit-exact with the compiled artifact
                                that `bimatting demo` runs: tests/test_runtime_agreement.py)
docs/default_model_heldout.jpg  `bimatting evaluate --against rvm --preview` on the held-out
                                clips of training/README.md (needs the footage folder)

python scripts/readme_figures.py                     # demo strip only
python scripts/readme_figures.py --data DATA_DIR     # and the held-out picture
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

import bimatting
from bimatting.matting.samples import sample_frames
from bimatting.recurrent import recurrent_step

ROOT = Path(__file__).resolve().parent.parent
SHOWN_FRAMES = (0, 11, 23)
GREEN = np.array([120, 255, 155], dtype=np.float32)
HELDOUT = (
    "sam2_bedroom_video/frames@136:200",
    "people/clips/facenet_arcade_pedestrians",
    "people/clips/hybrik_taiji_indoor",
    "people/clips/liveportrait_woman_lakeshore_windy_hair",
    "people/clips/retalking_woman_blue_studio",
)


@torch.no_grad()
def demo_strip():
    """uint8 RGB [rows * 288, 3 * 512, 3]: input | alpha | composite over green per shown frame."""
    model = bimatting.load_model("default").eval()
    frames = sample_frames()  # 24 x [288, 512, 3] float32 RGB in [0, 1]
    states, rows = [None] * 4, []
    for index, frame in enumerate(frames):
        src = torch.from_numpy(frame).permute(2, 0, 1)[None]
        outputs, states = recurrent_step(model, src, states, 1.0)
        if index in SHOWN_FRAMES:
            alpha = outputs[1][0, 0].numpy()[..., None]
            composite = frame * 255 * alpha + GREEN * (1 - alpha)
            grey = np.repeat(alpha * 255, 3, axis=2)
            rows.append(np.concatenate([frame * 255, grey, composite], axis=1).round().clip(0, 255).astype(np.uint8))
    return np.concatenate(rows, axis=0)


def heldout_picture(data, out):
    with tempfile.TemporaryDirectory() as folder:
        preview = Path(folder) / "heldout.png"
        clips = [str(Path(data) / clip) for clip in HELDOUT]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bimatting",
                "evaluate",
                "--against",
                "rvm",
                *clips,
                "--checkpoint",
                "default",
                "--frames",
                "32",
                "--preview",
                str(preview),
            ],
            check=True,
        )
        picture = cv2.imread(str(preview))
        picture = cv2.resize(picture, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)  # 1024 wide
        cv2.imwrite(str(out), picture, [cv2.IMWRITE_JPEG_QUALITY, 85])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="footage folder holding the held-out clips")
    args = parser.parse_args()
    torch.set_num_threads(1)
    strip = cv2.resize(demo_strip(), None, fx=2 / 3, fy=2 / 3, interpolation=cv2.INTER_AREA)  # 1024 wide
    cv2.imwrite(
        str(ROOT / "docs" / "demo_matte.jpg"), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85]
    )
    if args.data:
        heldout_picture(args.data, ROOT / "docs" / "default_model_heldout.jpg")


if __name__ == "__main__":
    main()
