"""Photometric transforms on RGB tensors [..., 3, H, W] in [0, 1] with torch ops only.

The formulas are torchvision's (which RVM's augmentation calls): brightness scales, contrast
blends with the mean grey level, saturation blends with the grey image, hue rotates H in HSV,
sharpness blends with a 3x3 smoothed copy (border pixels untouched), Gaussian blur is separable
with reflect padding. Grey = 0.2989 R + 0.587 G + 0.114 B (ITU-R 601).
"""

import torch
from torch.nn import functional as F

GREY_WEIGHTS = (0.2989, 0.587, 0.114)


def grayscale(images):
    """[...,3,H,W] -> [...,3,H,W] with the grey level in every channel."""
    r, g, b = images.unbind(-3)
    grey = GREY_WEIGHTS[0] * r + GREY_WEIGHTS[1] * g + GREY_WEIGHTS[2] * b
    return grey.unsqueeze(-3).expand_as(images).contiguous()


def _blend(images, other, factor):
    return (factor * images + (1 - factor) * other).clamp(0, 1)


def adjust_brightness(images, factor):
    return (images * factor).clamp(0, 1)


def adjust_contrast(images, factor):
    mean = grayscale(images)[..., :1, :, :].mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, factor)


def adjust_saturation(images, factor):
    return _blend(images, grayscale(images), factor)


def rgb_to_hsv(images):
    r, g, b = images.unbind(-3)
    high, _ = images.max(-3)
    low, _ = images.min(-3)
    delta = high - low
    saturation = torch.where(high > 0, delta / high.clamp_min(1e-12), torch.zeros_like(high))
    safe = delta.clamp_min(1e-12)
    hue = (
        torch.where(high == r, ((g - b) / safe) % 6, torch.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    )
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    return torch.stack([hue % 1.0, saturation, high], dim=-3)


def hsv_to_rgb(images):
    h, s, v = images.unbind(-3)
    sector = h * 6

    def channel(n):  # standard closed form: v - v s max(0, min(k, 4 - k, 1)), k = (n + 6h) mod 6
        k = (n + sector) % 6
        return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)

    return torch.stack([channel(5), channel(3), channel(1)], dim=-3)


def adjust_hue(images, factor):
    """Rotate hue by `factor` turns, factor in [-0.5, 0.5]."""
    hsv = rgb_to_hsv(images)
    hsv = torch.stack([(hsv[..., 0, :, :] + factor) % 1.0, hsv[..., 1, :, :], hsv[..., 2, :, :]], dim=-3)
    return hsv_to_rgb(hsv).clamp(0, 1)


def adjust_sharpness(images, factor):
    """factor 0 = smoothed, 1 = unchanged, > 1 = sharper (unsharp blend). The smoothing kernel is
    [[1,1,1],[1,5,1],[1,1,1]]/13 = (9 box3x3 + 4 identity)/13; border pixels are not smoothed."""
    shape = images.shape
    flat = images.reshape(-1, 1, *shape[-2:])  # [N*C,1,H,W]
    smooth = flat.clone()
    box = F.avg_pool2d(flat, 3, stride=1)  # [N*C,1,H-2,W-2]
    smooth[..., 1:-1, 1:-1] = (9 * box + 4 * flat[..., 1:-1, 1:-1]) / 13
    return _blend(flat, smooth, factor).reshape(shape)


def gaussian_kernel1d(size, sigma):
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    weights = torch.exp(-0.5 * (x / sigma) ** 2)
    return weights / weights.sum()


def gaussian_blur(images, kernel_size, sigma):
    """Separable Gaussian blur (odd kernel_size), reflect-padded. [...,C,H,W] -> same."""
    shape = images.shape
    half = kernel_size // 2
    flat = images.reshape(-1, 1, *shape[-2:])  # [N*C,1,H,W]
    weights = gaussian_kernel1d(kernel_size, sigma).to(images)
    mode = "reflect" if min(shape[-2:]) > half else "replicate"  # reflect needs pad < size
    flat = F.conv2d(F.pad(flat, (half, half, 0, 0), mode=mode), weights.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, half, half), mode=mode), weights.view(1, 1, -1, 1))
    return flat.reshape(shape)


def add_noise(images, grain, strength, monochrome, generator=None):
    """Add Gaussian noise with grains of `grain` px (noise drawn at H/grain x W/grain, upsampled)."""
    frames, channels, height, width = images.shape
    noise = torch.randn(
        (frames, 1 if monochrome else channels, max(1, round(height / grain)), max(1, round(width / grain))),
        generator=generator,
    )
    if noise.shape[-2:] != images.shape[-2:]:
        noise = F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)
    return (images + noise.to(images) * strength).clamp(0, 1)


def blur_kernel_size(sigma):
    """RVM's choice: int(2 sigma), made odd."""
    size = int(sigma * 2)
    return size + 1 if size % 2 == 0 else size
