"""Geometric transforms on image tensors [..., C, H, W] with torch ops only (no torchvision).

Semantics follow torchvision's functional transforms as RVM uses them:
- affine(angle deg counter-clockwise, translate (tx, ty) px, scale, shear (sx, sy) deg) about the
  image centre, bilinear, zero fill outside;
- RandomAffine.get_params (angle ~ U(degrees), translation ~ round(U(-t*W, t*W)), scale ~ U(range),
  shear_x ~ U(shear), shear_y = 0);
- RandomResizedCrop.get_params (10 tries of an area/aspect draw, else a centre crop with the
  aspect ratio clamped to the range) followed by a bilinear resize.
"""

import math
import random
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class AffineParams:
    angle: float = 0.0  # degrees, counter-clockwise
    translate: tuple = (0.0, 0.0)  # pixels (x, y)
    scale: float = 1.0
    shear: tuple = (0.0, 0.0)  # degrees (x, y)

    def lerp(self, other, fraction):
        mix = lambda a, b: a * (1 - fraction) + b * fraction  # noqa: E731
        return AffineParams(
            mix(self.angle, other.angle),
            tuple(mix(a, b) for a, b in zip(self.translate, other.translate)),
            mix(self.scale, other.scale),
            tuple(mix(a, b) for a, b in zip(self.shear, other.shear)),
        )


def random_affine_params(height, width, *, degrees=10, translate=0.1, scale=(0.9, 1.1), shear=5, rng=random):
    """A draw of RandomAffine((-degrees, degrees), (translate, translate), scale, (-shear, shear))."""
    max_dx, max_dy = translate * width, translate * height
    return AffineParams(
        angle=rng.uniform(-degrees, degrees),
        translate=(round(rng.uniform(-max_dx, max_dx)), round(rng.uniform(-max_dy, max_dy))),
        scale=rng.uniform(*scale),
        shear=(rng.uniform(-shear, shear), 0.0),
    )


def _inverse_matrix(params):
    """2x2 matrix and offset mapping an output point (relative to the centre) to its source point."""
    a = math.radians(params.angle)
    sx, sy = (math.radians(s) for s in params.shear)
    # Forward: p_out = R(a) @ Shear @ (scale * p_in) + t, with y pointing down (so R's signs make
    # positive angles turn counter-clockwise on screen).
    rotation = torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]], dtype=torch.float64)
    shear = torch.tensor([[1.0, math.tan(sx)], [0.0, 1.0]], dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.0], [math.tan(sy), 1.0]], dtype=torch.float64
    )
    forward = rotation @ shear * params.scale
    return torch.linalg.inv(forward), torch.tensor(params.translate, dtype=torch.float64)


def affine_theta(params_list, height, width):
    """[N,2,3] matrices for F.affine_grid: normalised output point -> normalised source point.

    In pixels relative to the centre, source = A^-1 (p - t); with D = diag(W/2, H/2) mapping
    normalised to pixel offsets, theta = [D^-1 A^-1 D | -D^-1 A^-1 t].
    """
    scale = torch.tensor([width / 2, height / 2], dtype=torch.float64)
    thetas = []
    for params in params_list:
        inverse, shift = _inverse_matrix(params)
        linear = inverse * scale[None, :] / scale[:, None]  # D^-1 A^-1 D
        offset = -(inverse @ shift) / scale
        thetas.append(torch.cat([linear, offset[:, None]], dim=1))
    return torch.stack(thetas).float()


def affine(images, params, mode="bilinear"):
    """Warp [T,C,H,W] frames by one AffineParams or a list with one per frame (mode: bilinear|nearest)."""
    frames, _, height, width = images.shape
    params_list = list(params) if isinstance(params, (list, tuple)) else [params] * frames
    theta = affine_theta(params_list, height, width).to(images.device)  # [T,2,3]
    grid = F.affine_grid(theta, [frames, 1, height, width], align_corners=False)  # [T,H,W,2]
    return F.grid_sample(images, grid.to(images.device), mode=mode, padding_mode="zeros", align_corners=False)


def resized_crop_params(height, width, scale=(1.0, 1.0), ratio=(0.9, 1.1), rng=random):
    """(top, left, h, w) of a RandomResizedCrop draw."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    aspect = width / height  # fallback: centre crop
    if aspect < min(ratio):
        w, h = width, round(width / min(ratio))
    elif aspect > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def resize(images, size, mode="bilinear"):
    """Resize [N,C,H,W] to size (h, w): bilinear (antialiased when shrinking) or nearest."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if mode == "nearest":
        return F.interpolate(images, size=tuple(size), mode="nearest")
    shrink = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrink)


def resized_crop(images, box, size, mode="bilinear"):
    top, left, h, w = box
    return resize(images[..., top : top + h, left : left + w], size, mode)


def hflip(images):
    return images.flip(-1)
