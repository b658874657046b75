"""Reading frames from videos, image folders and single images (torch-free; the board side uses it too).

`iter_frames_uint8` is the one reader: RGB uint8 frames [H, W, 3], optionally shrunk (the
distillation keeps footage in memory that way). `iter_frames` / `read_frames` give the same frames
as RGB float32 arrays [H, W, 3] in [0, 1], the convention of RVM's `src`, optionally resized to an
exact size.
"""

from pathlib import Path

import numpy as np

from bimatting.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"}


def resolve_clip(path):
    """A folder holding no images but exactly one video stands for that video (a clip folder as
    footage collections ship them: clip/video.mp4); any other path is itself."""
    path = Path(path)
    if not path.is_dir():
        return path
    entries = list(path.iterdir())
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
        return path
    videos = [p for p in entries if p.suffix.lower() in VIDEO_SUFFIXES]
    return videos[0] if len(videos) == 1 else path


def list_images(folder):
    """Sorted image files of a folder; InputError if there are none."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(
            f"folder '{folder}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
            "give a folder of frames or a video file"
        )
    return files


def read_image_uint8(path):
    """One image file -> RGB uint8 [H, W, 3] (grayscale and RGBA are converted, 16-bit scaled to 8)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"cannot read image '{path}'; expected a PNG/JPEG/BMP file")
    if image.dtype == np.uint16:
        image = (image / 257).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path):
    """One image file -> RGB float32 [H, W, 3] in [0, 1] (grayscale and RGBA are converted)."""
    return read_image_uint8(path).astype(np.float32) / 255.0


def shrink_frame(image, short_side=None, long_side=None):
    """[H, W, C] uint8 shrunk (area filter) so its short side is at most `short_side` and its long
    side at most `long_side` (either may be None); never enlarged, never below 16 px a side."""
    import cv2

    h, w = image.shape[:2]
    scale = min(short_side / min(h, w) if short_side else 1.0, long_side / max(h, w) if long_side else 1.0)
    if scale >= 1.0 and not long_side:
        return image
    size = (max(16, round(w * scale)), max(16, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def iter_frames_uint8(source, start=0, limit=None, short_side=None, long_side=None):
    """Yield RGB uint8 frames [H, W, 3] of a frame folder, a video file (or a folder holding only
    that video) or one image file.

    start, limit: from frame number `start`, at most `limit` frames. short_side, long_side: an
    optional shrink of every frame (shrink_frame).
    """
    source = Path(source)
    if not source.exists():
        raise InputError(
            f"cannot read frames from '{source}': it does not exist; give a video file, a folder of images or an image"
        )
    source = resolve_clip(source)
    if source.is_dir():
        frames = (read_image_uint8(path) for path in list_images(source)[start:][:limit])
    elif source.suffix.lower() in IMAGE_SUFFIXES:
        frames = [read_image_uint8(source)][start:][:limit]  # a still: a clip of one frame
    else:
        frames = _video_frames(source, start, limit)
    for frame in frames:
        yield shrink_frame(frame, short_side, long_side)


def _video_frames(source, start, limit):
    """RGB uint8 frames [H, W, 3] of a video file from frame `start`, at most `limit`."""
    import cv2

    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise InputError(f"cannot open video '{source}'; expected a video file OpenCV can decode (mp4, avi, mkv)")
    count = 0
    try:
        if start:
            capture.set(cv2.CAP_PROP_POS_FRAMES, start)
        while limit is None or count < limit:
            ok, frame = capture.read()
            if not ok:
                break
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            count += 1
    finally:
        capture.release()
    if count == 0 and (limit is None or limit > 0):
        raise InputError(f"video '{source}' has no readable frames; the file may be empty or corrupt")


def iter_frames(source, size=None, start=0, limit=None):
    """Yield the RGB frames of iter_frames_uint8 as float32 [H, W, 3] in [0, 1].

    size: optional (width, height) to resize to, in float (area interpolation when shrinking).
    """
    import cv2

    for frame in iter_frames_uint8(source, start=start, limit=limit):
        frame = frame.astype(np.float32) / 255.0
        if size is None or (frame.shape[1], frame.shape[0]) == tuple(size):
            yield frame
            continue
        shrink = size[0] < frame.shape[1]
        yield cv2.resize(frame, tuple(size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def read_frames(source, size=None, start=0, limit=None):
    return list(iter_frames(source, size=size, start=start, limit=limit))


def to_nchw(frame):
    """[H, W, 3] float32 -> [1, 3, H, W] contiguous float32."""
    return np.ascontiguousarray(np.transpose(frame, (2, 0, 1))[None], dtype=np.float32)
