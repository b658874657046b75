"""Bad and unusual footage through the real `bimatting matte` command line (a fresh process per
case): videos with zero frames, empty, garbage, truncated and bit-flipped streams, odd sizes
(1x1, 2x2, 17x13, 1x64, 4K), grayscale / RGBA / 16-bit images, mixed sizes, corrupt images
inside a folder, odd backgrounds.

Every case ends in either
  * a clear error: exit 2 (bad input) or 1 (failed job), one "Error:" line on stderr, no
    traceback, and no output or temporary file left behind; or
  * a correct output: exit 0, as many frames as were decoded, at the input's size, readable back.
The network is RVM's official ONNX on onnxruntime (fast to load; the backends agree, see
test_matte.py); one case runs the torch backend. Case count: 27.
"""

import shutil

import cv2
import numpy as np
import pytest

from bimatting.weights.rvm_onnx import official_onnx_path
from fuzz_inputs import assert_clean_error, gradient_frames, run_cli, write_video

RNG_SEED = 5


@pytest.fixture(scope="module")
def rvm_onnx():
    with official_onnx_path() as path:
        yield path


def _images(folder, images):
    folder.mkdir()
    for index, image in enumerate(images):
        target = folder / f"{index:04d}.png"
        if isinstance(image, bytes):
            target.write_bytes(image)
        else:
            assert cv2.imwrite(str(target), image)
    return folder


def _noise(shape, dtype=np.uint8, seed=0):
    top = 65535 if dtype == np.uint16 else 255
    return (np.random.default_rng(seed).random(shape) * top).astype(dtype)


def _png_bytes(image):
    return cv2.imencode(".png", image)[1].tobytes()


def _make(case, folder):
    """Write the input of `case` under `folder`; returns (input path, extra CLI args)."""
    if case == "zero-frame video":
        return write_video(folder / "in.avi", []), []
    if case == "empty file":
        (folder / "in.mp4").write_bytes(b"")
        return folder / "in.mp4", []
    if case == "garbage bytes":
        (folder / "in.mp4").write_bytes(bytes(np.random.default_rng(RNG_SEED).integers(0, 256, 4096, np.uint8)))
        return folder / "in.mp4", []
    if case in ("truncated mp4", "bit-flipped mp4"):
        data = write_video(folder / "whole.mp4", gradient_frames(20, 64, 48), fourcc="mp4v").read_bytes()
        (folder / "whole.mp4").unlink()
        if case == "truncated mp4":
            data = data[: len(data) // 2]  # the index (moov) at the end is gone
        else:
            flipped = bytearray(data)
            for index in range(200):
                flipped[len(data) // 3 + 7 * index] ^= 0x55
            data = bytes(flipped)
        (folder / "in.mp4").write_bytes(data)
        return folder / "in.mp4", []
    if case in ("truncated avi", "bit-flipped avi"):
        data = write_video(folder / "whole.avi", gradient_frames(12, 64, 48)).read_bytes()
        (folder / "whole.avi").unlink()
        if case == "truncated avi":
            data = data[: int(len(data) * 0.6)]
        else:
            flipped = bytearray(data)
            for index in range(40):
                flipped[len(data) // 2 + 13 * index] ^= 0xFF
            data = bytes(flipped)
        (folder / "in.avi").write_bytes(data)
        return folder / "in.avi", []
    sizes = {"1x1 video to PNGs": (1, 1), "2x2 video": (2, 2), "1x64 video to PNGs": (1, 64), "4K video": (3840, 2160)}
    if case in sizes:
        width, height = sizes[case]
        return write_video(folder / "in.avi", gradient_frames(1 if width > 1000 else 3, width, height)), []
    if case == "1x1 video to a video file":
        return write_video(folder / "in.avi", gradient_frames(2, 1, 1)), []
    folders = {
        "17x13 images to PNGs": [_noise((13, 17, 3), seed=s) for s in range(3)],
        "17x13 images to a video file": [_noise((13, 17, 3))] * 2,
        "grayscale images": [_noise((48, 64), seed=s) for s in range(2)],
        "RGBA images": [_noise((48, 64, 4), seed=s) for s in range(2)],
        "16-bit images": [_noise((48, 64, 3), np.uint16)] * 2,
        "16-bit grayscale images": [_noise((48, 64), np.uint16)] * 2,
        "mixed sizes and kinds": [_noise((48, 64, 3)), _noise((100, 30, 3)), _noise((48, 64)), _noise((20, 20, 4))],
        "1x1 images to PNGs (torch backend)": [_noise((1, 1, 3))] * 2,
        "corrupt image in the middle": [_noise((48, 64, 3)), _png_bytes(_noise((48, 64, 3)))[:60], _noise((48, 64, 3))],
        "corrupt first image": [_png_bytes(_noise((48, 64, 3)))[:60], _noise((48, 64, 3))],
        "zero-byte image": [b"", _noise((48, 64, 3))],
    }
    if case in folders:
        return _images(folder / "frames", folders[case]), []
    if case == "grayscale background image":
        cv2.imwrite(str(folder / "bg.png"), _noise((10, 10)))
        return write_video(folder / "in.avi", gradient_frames(2, 64, 48)), ["--background", folder / "bg.png"]
    if case == "RGBA background image":
        cv2.imwrite(str(folder / "bg.png"), _noise((30, 40, 4)))
        return write_video(folder / "in.avi", gradient_frames(2, 64, 48)), ["--background", folder / "bg.png"]
    if case == "single image as input":
        cv2.imwrite(str(folder / "in.png"), _noise((48, 64, 3)))
        return folder / "in.png", []
    if case == "--start past the end":
        return write_video(folder / "in.avi", gradient_frames(3, 64, 48)), ["--start", "60"]
    raise KeyError(case)


# case -> (output name, expected exit code (0 = a correct output), fragment of the error / warning)
CASES = {
    "zero-frame video": ("out.avi", 2, "has no readable frames"),
    "empty file": ("out.avi", 2, "empty file"),
    "garbage bytes": ("out.avi", 2, "cannot open video"),
    "truncated mp4": ("out.avi", 2, "cannot open video"),
    "bit-flipped mp4": ("out.avi", 0, "could be decoded"),
    "truncated avi": ("out.avi", 0, "could be decoded"),
    "bit-flipped avi": ("out.avi", 0, ""),
    "1x1 video to PNGs": ("out", 0, ""),
    "1x1 video to a video file": ("out.avi", 2, "need an even width and height"),
    "2x2 video": ("out.avi", 0, ""),
    "1x64 video to PNGs": ("out", 0, ""),
    "4K video": ("out.avi", 0, ""),
    "17x13 images to PNGs": ("out", 0, ""),
    "17x13 images to a video file": ("out.mp4", 2, "frames of 17x13 cannot be stored in a video"),
    "grayscale images": ("out.avi", 0, ""),
    "RGBA images": ("out.avi", 0, ""),
    "16-bit images": ("out.avi", 0, ""),
    "16-bit grayscale images": ("out.avi", 0, ""),
    "mixed sizes and kinds": ("out.avi", 0, ""),
    "1x1 images to PNGs (torch backend)": ("out", 0, ""),
    "corrupt image in the middle": ("out.avi", 2, "cannot read image"),
    "corrupt first image": ("out.avi", 2, "cannot read image"),
    "zero-byte image": ("out.avi", 2, "cannot read image"),
    "grayscale background image": ("out.avi", 0, ""),
    "RGBA background image": ("out.avi", 0, ""),
    "single image as input": ("out.avi", 2, "is a single image"),
    "--start past the end": ("out.avi", 2, "no readable frames at 60s"),
}


def _decoded(source):
    """(frames decodable from a video or image folder, (width, height) of the first)."""
    if source.is_dir():
        images = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(source.glob("*.png"))]
        return len(images), (images[0].shape[1], images[0].shape[0])
    capture = cv2.VideoCapture(str(source))
    count, size = 0, None
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        count, size = count + 1, size or (frame.shape[1], frame.shape[0])
    capture.release()
    return count, size


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CASES))
def test_matte_on_bad_or_odd_footage(case, rvm_onnx, tmp_path):
    output_name, code, fragment = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    source, extra = _make(case, work)
    before = sorted(p.name for p in work.iterdir())
    model = ["--checkpoint", "rvm"] if "torch" in case else ["--artifact", rvm_onnx]
    returncode, stdout, stderr = run_cli("matte", source, "-o", work / output_name, *model, "--quiet", *extra)
    if code:
        assert_clean_error(returncode, stderr, codes=(code,), fragment=fragment)
        assert sorted(p.name for p in work.iterdir()) == before, "an output or temporary file was left behind"
        return
    assert returncode == 0 and "Traceback" not in stderr and "Error" not in stderr, stderr
    assert fragment in stderr
    # a correct output: every decodable input frame, at the input's size, readable back
    frames_in, size_in = _decoded(source)  # a folder of mixed sizes is matted at its first image's size
    frames_out, size_out = _decoded(work / output_name)
    assert (frames_out, size_out) == (frames_in, size_in), stdout
    assert f"matted {frames_in} frames of {size_in[0]}x{size_in[1]}" in stdout
    assert not [p for p in work.iterdir() if p.name.startswith(".")], "temporary files left behind"
    shutil.rmtree(work)
