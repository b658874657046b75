"""Clip-level augmentation shared by the training sources (numpy/OpenCV, in the sample's seeded RNG).

Frame arrays are uint8 [H, W, C] until `frames_to_float_tensor` (float32 [T, C, H, W] in [0, 1]).
"""

import math
import random

import numpy as np
import torch


def square_crop_box(height, width, size, zoom=(1.0, 1.25)):
    """(scale, top, left): resize by `scale` so the short side is size*U(zoom), then a random
    size x size crop at (top, left)."""
    scale = size * random.uniform(*zoom) / min(height, width)
    new_h, new_w = max(size, math.ceil(height * scale)), max(size, math.ceil(width * scale))
    return scale, random.randint(0, new_h - size), random.randint(0, new_w - size)


def crop_resize(frame, size, box, flip):
    """Apply a square_crop_box (and an optional horizontal flip): [H,W,C] -> [size,size,C]."""
    import cv2  # noqa: PLC0415 - OpenCV loads on first use

    scale, top, left = box
    height, width = frame.shape[:2]
    new_w, new_h = max(size, math.ceil(width * scale)), max(size, math.ceil(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(frame, (new_w, new_h), interpolation=interpolation)
    if resized.ndim == 2:
        resized = resized[..., None]
    out = resized[top : top + size, left : left + size]
    return out[:, ::-1] if flip else out


def drift_clip(image, length, size, max_shift=0.08, max_zoom=0.08):
    """A still as a pseudo-clip: `length` size x size views along a smooth random pan/zoom.

    [H,W,C] uint8 -> list of [size,size,C]; the motion is linear in t between two random views.
    """
    import cv2  # noqa: PLC0415 - OpenCV loads on first use

    height, width = image.shape[:2]
    base = size / min(height, width)
    views = []
    for _ in range(2):
        zoom = base * random.uniform(1.0 + max_zoom, 1.0 + 3 * max_zoom)
        views.append((zoom, random.uniform(-max_shift, max_shift), random.uniform(-max_shift, max_shift)))
    frames = []
    for t in range(length):
        f = t / max(length - 1, 1)
        zoom, dx, dy = (a + (b - a) * f for a, b in zip(*views))
        # map the image centre (+ shift) to the output centre, scaled by zoom
        cx, cy = width / 2 + dx * width, height / 2 + dy * height
        matrix = np.array([[zoom, 0, size / 2 - zoom * cx], [0, zoom, size / 2 - zoom * cy]], np.float64)
        frame = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        frames.append(frame if frame.ndim == 3 else frame[..., None])
    return frames


def frames_to_uint8_tensor(frames):
    """list of T uint8 arrays [H,W,C] -> uint8 tensor [T,C,H,W] (how footage is kept in memory)."""
    return torch.from_numpy(np.ascontiguousarray(np.stack(frames).transpose(0, 3, 1, 2)))


def frames_to_float_tensor(frames):
    """list of T uint8 arrays [H,W,C] -> float32 tensor [T,C,H,W] in [0, 1] (what a network reads)."""
    return frames_to_uint8_tensor(frames).float().div_(255.0)
