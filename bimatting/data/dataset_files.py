"""Folder checks and image reading shared by the dataset readers.

Readers check their layout when built: the first missing folder is named in an InputError, so a
data root in the wrong layout fails at once with a line saying what was expected.
Images load as float tensors in [0, 1]: colour [3, H, W] RGB, masks [1, H, W].
"""

from pathlib import Path

import numpy as np
import torch

from bimatting.errors import InputError
from bimatting.matting.frames import IMAGE_SUFFIXES


def require_folders(root, *relative, expected):
    """Path of root/relative[0]/relative[1]/...; InputError naming the first folder that is missing."""
    folders = [Path(root)]
    for part in relative:
        folders.append(folders[-1] / part)
    for folder in folders:
        if not folder.is_dir():
            raise InputError(f"missing folder '{folder}'; expected the layout {expected}")
    return folders[-1]


def image_files(folder, expected):
    """Sorted image files of a folder; InputError if it holds none."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"folder '{folder}' holds no images; expected the layout {expected}")
    return files


def subfolders(folder, expected):
    """Sorted subfolders of a folder; InputError if it has none."""
    folders = sorted(p for p in Path(folder).iterdir() if p.is_dir())
    if not folders:
        raise InputError(f"folder '{folder}' has no subfolders; expected the layout {expected}")
    return folders


def downsample_if_needed(image, size, nearest=False):
    """Shrink [H,W(,C)] so its short side is `size` when it is longer (RVM's loaders do this first)."""
    import cv2  # noqa: PLC0415 - OpenCV loads on first use

    if size is None:
        return image
    height, width = image.shape[:2]
    if min(height, width) <= size:
        return image
    scale = size / min(height, width)
    target = (max(1, int(width * scale)), max(1, int(height * scale)))
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(image, target, interpolation=interpolation)


def _read(path, flags):
    import cv2  # noqa: PLC0415 - OpenCV loads on first use

    image = cv2.imread(str(path), flags)
    if image is None:
        raise InputError(f"cannot read image '{path}'; expected a readable JPEG/PNG file")
    return image


def read_rgb(path, size=None):
    """[3,H,W] float32 RGB in [0, 1], short side capped at `size`."""
    import cv2  # noqa: PLC0415 - OpenCV loads on first use

    image = _read(path, cv2.IMREAD_COLOR)
    image = downsample_if_needed(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), size)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255


def read_mask(path, size=None, nearest=False):
    """[1,H,W] float32 in [0, 1] from a grayscale (or colour, converted) image."""
    import cv2  # noqa: PLC0415 - OpenCV loads on first use

    image = downsample_if_needed(_read(path, cv2.IMREAD_GRAYSCALE), size, nearest)
    return torch.from_numpy(np.ascontiguousarray(image))[None].float() / 255


def image_to_float_tensor(array):
    """One image or mask: [H,W] uint8 -> [1,H,W] or [H,W,3] uint8 -> [3,H,W], float32 in [0, 1]."""
    array = np.ascontiguousarray(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    return torch.from_numpy(array).float() / 255
