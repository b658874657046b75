"""Reading frames from videos and image folders (torch-free; the board side uses it too).

Frames are RGB float32 arrays [H, W, 3] in [0, 1], the convention of RVM's `src`.
"""
from pathlib import Path

import numpy as np

from bimatting.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def list_images(folder):
    """Sorted image files of a folder; InputError if there are none."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"folder '{folder}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                         "give a folder of frames or a video file")
    return files


def read_image(path):
    """One image file -> RGB float32 [H, W, 3] in [0, 1] (grayscale and RGBA are converted)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"cannot read image '{path}'; expected a PNG/JPEG/BMP file")
    if image.dtype == np.uint16:
        image = (image / 257).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image.astype(np.float32) / 255.0


def iter_frames(source, size=None, start=0, limit=None):
    """Yield RGB float32 frames [H, W, 3] from a video file or an image folder.

    size: optional (width, height) to resize to (area interpolation when shrinking).
    """
    import cv2

    source = Path(source)
    if not source.exists():
        raise InputError(f"input '{source}' does not exist; give a video file or a folder of images")
    count = 0

    def resized(frame):
        if size is None or (frame.shape[1], frame.shape[0]) == tuple(size):
            return frame
        shrink = size[0] < frame.shape[1]
        return cv2.resize(frame, tuple(size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    if source.is_dir():
        for path in list_images(source)[start:]:
            if limit is not None and count >= limit:
                return
            yield resized(read_image(path))
            count += 1
        return
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise InputError(f"cannot open video '{source}'; expected a video file OpenCV can decode (mp4, avi, mkv)")
    try:
        if start:
            capture.set(cv2.CAP_PROP_POS_FRAMES, start)
        while limit is None or count < limit:
            ok, frame = capture.read()
            if not ok:
                break
            yield resized(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0)
            count += 1
    finally:
        capture.release()
    if count == 0 and (limit is None or limit > 0):
        raise InputError(f"video '{source}' has no readable frames; the file may be empty or corrupt")


def read_frames(source, size=None, start=0, limit=None):
    return list(iter_frames(source, size=size, start=start, limit=limit))


def to_nchw(frame):
    """[H, W, 3] float32 -> [1, 3, H, W] contiguous float32."""
    return np.ascontiguousarray(np.transpose(frame, (2, 0, 1))[None], dtype=np.float32)
