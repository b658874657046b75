"""Recurrent inference of a matting network over every clip of an evaluation set (needs torch).

Reproduces the official test protocol (BiMatting `test.sh` -> RVM `inference.py`; here
`scripts/evaluate_model.sh` -> `bimatting test`):
- one frame per forward (`--seq-chunk 1`), recurrent states carried within a clip and reset to
  zeros at the start of every clip;
- downsample ratio "auto" = min(512 / max(h, w), 1) (bimatting.downsample);
- outputs written like torchvision's `to_pil_image`: x * 255 truncated to uint8, with 4-digit
  frame names from 0000 and the extension of the truth (PNG at 512x288, JPG at 1920x1080;
  PIL's default JPEG quality 75).
"""

from pathlib import Path

import numpy as np
from tqdm import tqdm

from bimatting.downsample import auto_downsample_ratio
from bimatting.errors import InputError
from bimatting.eval.tree import find_clips, frame_names
from bimatting.matting.frames import read_image
from bimatting.recurrent import recurrent_step

JPEG_QUALITY = 75  # PIL's default, what the official inference's JPEG writer used


def to_uint8(tensor):
    """[C,H,W] float in [0, 1] -> [H,W,C] uint8, truncating like to_pil_image (x*255 -> byte())."""
    import torch

    return (tensor.clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def write_frame(path, image):
    """[H,W,1] or [H,W,3] RGB uint8 -> file (extension picks the format)."""
    import cv2

    image = image[..., 0] if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), image, params):
        raise OSError(f"could not write '{path}'")


def output_suffix(data_root, clip):
    """The truth's pha extension for this clip (.png when the set has no truth)."""
    names = frame_names(clip.folder(data_root, "pha"))
    return Path(names[0]).suffix if names else ".png"


def predict_clip(model, frames, out_dir, suffix, *, device="cpu", on_frame=None):
    """Run `model` recurrently over `frames` (paths) and write out_dir/{pha,fgr}/NNNN<suffix>."""
    import torch

    (out_dir / "pha").mkdir(parents=True, exist_ok=True)
    (out_dir / "fgr").mkdir(parents=True, exist_ok=True)
    states = None  # zeros at the start of every clip
    with torch.inference_mode():
        for index, path in enumerate(frames):
            image = read_image(path)  # [H,W,3] RGB float32 in [0, 1]
            src = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(device)  # [1,3,H,W]
            ratio = auto_downsample_ratio(*image.shape[:2])
            outputs, states = recurrent_step(model, src, states, ratio)
            fgr, pha = outputs[0], outputs[1]  # BiMatting adds fgr_s, pha_s
            name = f"{index:04d}{suffix}"
            write_frame(out_dir / "pha" / name, to_uint8(pha[0]))
            write_frame(out_dir / "fgr" / name, to_uint8(fgr[0]))
            if on_frame is not None:
                on_frame()


def predict_set(model, data_root, out_root, device="cpu", progress=True):
    """Predictions for every <subset>/<clip>/com/ of `data_root`, written under `out_root`
    in the same layout. Returns the number of frames."""
    clips = find_clips(data_root, "com", "data set")
    work = [
        (clip, [clip.folder(data_root, "com") / n for n in frame_names(clip.folder(data_root, "com"))])
        for clip in clips
    ]
    for clip, frames in work:
        if not frames:
            raise InputError(f"'{clip.folder(data_root, 'com')}' holds no frames; expected com/0000.png, ...")
    total = sum(len(frames) for _, frames in work)
    model = model.to(device).eval()
    with tqdm(total=total, desc="predict", unit="frame", disable=not progress) as bar:
        for clip, frames in work:
            out_dir = Path(out_root) / clip.subset / clip.name
            predict_clip(
                model, frames, out_dir, output_suffix(data_root, clip), device=device, on_frame=lambda: bar.update(1)
            )
    return total
