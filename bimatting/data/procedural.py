"""Procedural matting content with known alpha (numpy only): soft-edged shapes and textures.

A foreground clip is a union of moving soft-edged ellipses (a "head", a "body", limbs) plus thin
semi-transparent strands (hair-like), so alpha has solid cores, soft borders, fine structure and
partial transparency. Backgrounds are colour gradients with multi-octave value noise and stripes,
so a matting network sees texture on both sides of the boundary. Arrays are float32 in [0, 1]:
colour [H, W, 3], alpha [H, W].
"""

import numpy as np

from bimatting.data.easing import EASINGS, lerp


def value_noise(rng, height, width, cells, channels=1):
    """Smooth noise: a random grid of `cells` x `cells` values, bicubically upsampled. [H,W,C]"""
    import cv2

    grid = rng.random((cells, cells, channels)).astype(np.float32)
    noise = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return noise.reshape(height, width, channels)


def texture(rng, height, width):
    """Gradient between two random colours + 3 octaves of noise + faint stripes. [H,W,3]"""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)[..., None]
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    colour_a, colour_b = rng.random(3), rng.random(3)
    image = lerp(colour_a, colour_b, ramp)  # [H,W,3]
    for cells, weight in ((4, 0.25), (12, 0.12), (40, 0.06)):
        image = image + weight * (value_noise(rng, height, width, cells, 3) - 0.5)
    period = rng.uniform(6, 30)
    stripes = np.sin(2 * np.pi * (xx * np.cos(-angle) + yy * np.sin(-angle)) / period)[..., None]
    image = image + rng.uniform(0, 0.08) * stripes
    return np.clip(image, 0, 1).astype(np.float32)


def _soft_ellipse(xx, yy, centre, axes, angle, softness):
    """Alpha of a rotated ellipse whose edge ramps over `softness` px (approximate distance)."""
    dx, dy = xx - centre[0], yy - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * dx + s * dy) / axes[0], (-s * dx + c * dy) / axes[1]
    distance = (np.sqrt(u * u + v * v) - 1) * min(axes)  # < 0 inside
    return np.clip(0.5 - distance / softness, 0, 1)


def _strands(xx, yy, rng, anchor, count, length, opacity):
    """Thin wavy vertical strands hanging from `anchor`, 1-2 px wide, partially transparent."""
    alpha = np.zeros_like(xx)
    for _ in range(count):
        x0 = anchor[0] + rng.uniform(-1, 1) * length * 0.6
        wave = rng.uniform(2, 6) * np.sin(yy / rng.uniform(6, 16) + rng.uniform(0, 6))
        width = rng.uniform(0.6, 1.4)
        along = (yy > anchor[1] - length) & (yy < anchor[1] + length * rng.uniform(0.2, 1.0))
        alpha = np.maximum(alpha, along * np.clip(1 - np.abs(xx - x0 - wave) / width, 0, 1) * opacity)
    return alpha


def shape_layout(rng, height, width):
    """Random figure: [(centre (x, y), axes (a, b), angle, softness)] in pixels, plus strands."""
    scale = min(height, width)
    cx, cy = width * rng.uniform(0.3, 0.7), height * rng.uniform(0.6, 0.75)
    body = ((cx, cy), (scale * rng.uniform(0.14, 0.22), scale * rng.uniform(0.24, 0.32)), rng.uniform(-0.3, 0.3))
    head = (
        (cx + rng.uniform(-0.05, 0.05) * scale, cy - body[1][1] - scale * 0.08),
        (scale * rng.uniform(0.08, 0.12),) * 2,
        0.0,
    )
    limbs = [
        (
            (cx + side * body[1][0] * 1.1, cy + rng.uniform(-0.1, 0.2) * scale),
            (scale * 0.04, scale * rng.uniform(0.15, 0.3)),
            side * rng.uniform(0.1, 0.6),
        )
        for side in (-1, 1)
    ]
    shapes = [(c, a, ang, rng.uniform(1.0, 4.0)) for c, a, ang in (body, head, *limbs)]
    return shapes, head


def _shifted(image, shift):
    """image translated by shift (x, y) px, borders reflected (no seams). [H,W,C] -> [H,W,C]"""
    import cv2

    matrix = np.array([[1, 0, shift[0]], [0, 1, shift[1]]], np.float64)
    size = (image.shape[1], image.shape[0])
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def soft_shapes_clip(rng, frames, height, width):
    """(fgr [T,H,W,3], pha [T,H,W]) of a procedural figure drifting along an easing curve."""
    shapes, head = shape_layout(rng, height, width)
    strand_seed = int(rng.integers(1 << 31))
    opacity = rng.uniform(0.4, 0.9)
    drift = rng.uniform(-0.15, 0.15, 2) * (width, height)  # total drift, px
    easing = list(EASINGS.values())[rng.integers(len(EASINGS))]
    colour = texture(rng, height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    fgr = np.empty((frames, height, width, 3), np.float32)
    pha = np.empty((frames, height, width), np.float32)
    for t in range(frames):
        progress = easing(t / max(frames - 1, 1))
        wobble = 2.0 * np.sin(t / 3.0)  # small per-frame jitter
        shift = drift * progress + wobble
        alpha = np.zeros((height, width), np.float32)
        for centre, axes, angle, softness in shapes:
            moved = (centre[0] + shift[0], centre[1] + shift[1])
            alpha = np.maximum(alpha, _soft_ellipse(xx, yy, moved, axes, angle, softness))
        anchor = (head[0][0] + shift[0], head[0][1] + shift[1])
        hair = _strands(xx, yy, np.random.default_rng(strand_seed), anchor, 12, head[1][0] * 1.6, opacity)
        pha[t] = np.maximum(alpha, hair)
        fgr[t] = _shifted(colour, shift)  # texture moves along
    return fgr, pha
