"""Packaged sample footage: a short clip of a person, made from an image that scikit-image ships.

The demo, `bench` and `export --verify` need real-looking frames on a machine that has no
footage of its own. scikit-image ships the "astronaut" portrait (Eileen Collins, public domain,
NASA); this module turns it into a clip by moving a virtual camera over it (a smooth pan, zoom and
slight roll, eased in and out) so consecutive frames differ the way video frames do. Torch-free.
"""

from pathlib import Path

import numpy as np

from bimatting.atomic import atomic_path
from bimatting.errors import InputError

DEFAULT_SIZE = (512, 288)  # (width, height), RVM's low-resolution evaluation size
DEFAULT_FRAMES = 24


def _portrait():
    try:
        from skimage import data  # noqa: PLC0415 - scikit-image loads only to draw the clip
    except ImportError as error:  # pragma: no cover - scikit-image is a dependency
        raise InputError("sample footage needs scikit-image; install it with 'pip install scikit-image'") from error
    return data.astronaut()  # [512, 512, 3] uint8 RGB


def _ease(t):
    """Smoothstep easing in [0, 1]: the camera starts and stops gently."""
    return t * t * (3.0 - 2.0 * t)


def sample_frames(frames=DEFAULT_FRAMES, size=DEFAULT_SIZE):
    """A list of `frames` RGB float32 frames [H, W, 3] in [0, 1] of the given (width, height)."""
    import cv2

    if frames < 1:
        raise InputError(f"sample clip needs at least 1 frame, got {frames}")
    width, height = size
    portrait = _portrait()
    ph, pw = portrait.shape[:2]
    clip = []
    for index in range(frames):
        t = _ease(index / max(frames - 1, 1))
        # Fit the portrait's width to the frame (head and shoulders in view), then pan down-right,
        # zoom in 10% and roll 3 degrees.
        zoom = width / pw * (1.0 + 0.10 * t)
        angle = -3.0 * t
        centre = (pw * (0.5 + 0.05 * t), ph * (0.30 + 0.05 * t))
        matrix = cv2.getRotationMatrix2D(centre, angle, zoom)
        matrix[0, 2] += width / 2 - centre[0]
        matrix[1, 2] += height / 2 - centre[1]
        frame = cv2.warpAffine(
            portrait, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
        clip.append(frame.astype(np.float32) / 255.0)
    return clip


def write_sample_video(path, frames=DEFAULT_FRAMES, size=DEFAULT_SIZE, fps=24):
    """Write the sample clip as a video file (codec from the extension) and return its path."""
    import cv2

    path = Path(path)
    fourcc = {".avi": "MJPG", ".mkv": "MJPG"}.get(path.suffix.lower(), "mp4v")
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, tuple(size))
        if not writer.isOpened():
            raise InputError(f"cannot write video '{path}'; use an .mp4 or .avi extension")
        try:
            for frame in sample_frames(frames, size):
                writer.write(cv2.cvtColor((frame * 255.0 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
    return path
