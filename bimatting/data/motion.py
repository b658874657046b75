"""RVM's motion augmentation for matting sequences, torch ops only.

    fgrs [T,3,H,W], phas [T,1,H,W], bgrs [T,3,H',W'] (float in [0, 1]; the background may have
    another size) -> the same three at [T,3,S,S] / [T,1,S,S] / [T,3,S,S] with S = size.

Order and mechanics (RVM `dataset/augmentation.py`, MotionAugmentation), each step applied with
its probability (MODEL.md section 4 table; VIDEOMATTE / IMAGEMATTE presets below):
 1. motion affine on fgr+pha: parameters eased from one RandomAffine draw to another
    (+-10 deg, translate 0.1, scale 0.9-1.1, shear +-5) along a random easing curve;
 2. motion affine on the background alone (p/2) and on all three together, a camera move (p/2);
 3. static affine, always (when enabled): fgr+pha scale 0.5-1, background scale 1-1.5;
 4. RandomResizedCrop(scale 1, ratio 0.9-1.1) to S x S, fgr+pha and background drawn apart;
 5. hflip fgr+pha and, independently, the background;
 6. noise on fgr and background: grain 1-4 px, strength U(0, 0.2)/grain, mono half the time;
 7. colour jitter (fgr, background drawn apart): brightness/contrast/saturation/hue start and end
    offsets ~ N(0, 0.1), eased over time with an overall strength U(0, 0.2);
 8. grayscale on fgr and background; 9. sharpness factor U(0, 8) on all three;
10. blur sigma eased between two U(0, 10) values, on fgr+pha, background or all (p/3 each);
11. pause: one frame repeated over a random span.
One deliberate difference: RVM reuses the brightness offsets for saturation; here saturation
has its own.
"""

import random
from dataclasses import dataclass

import torch

from bimatting.data import colour
from bimatting.data.easing import lerp, random_easing
from bimatting.data.geometric_transforms import affine, hflip, random_affine_params, resized_crop, resized_crop_params


@dataclass(frozen=True)
class Probabilities:
    fgr_affine: float = 0.0
    bgr_affine: float = 0.0
    noise: float = 0.0
    colour_jitter: float = 0.0
    grayscale: float = 0.0
    sharpness: float = 0.0
    blur: float = 0.0
    hflip: float = 0.0
    pause: float = 0.0


VIDEOMATTE = Probabilities(0.3, 0.3, 0.1, 0.3, 0.02, 0.1, 0.02, 0.5, 0.03)
IMAGEMATTE = Probabilities(0.95, 0.3, 0.05, 0.3, 0.03, 0.05, 0.02, 0.5, 0.03)
NONE = Probabilities()


class MotionAugmentation:
    """Callable (fgrs, phas, bgrs) -> (fgrs, phas, bgrs); see the module docstring."""

    def __init__(
        self,
        size,
        probabilities=VIDEOMATTE,
        static_affine=True,
        aspect_ratio_range=(0.9, 1.1),
        rng=None,
        generator=None,
    ):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.p = probabilities
        self.static_affine = static_affine
        self.ratio = aspect_ratio_range
        self.rng = rng if rng is not None else random  # DataLoader workers reseed `random` per worker
        self.generator = generator  # torch noise; None = torch's global generator

    @classmethod
    def videomatte(cls, size, **kw):
        return cls(size, VIDEOMATTE, **kw)

    @classmethod
    def imagematte(cls, size, **kw):
        return cls(size, IMAGEMATTE, **kw)

    @classmethod
    def valid(cls, size, **kw):
        """Validation: no augmentation, only the resize (RVM's *ValidAugmentation)."""
        return cls(size, NONE, static_affine=False, aspect_ratio_range=(1.0, 1.0), **kw)

    def _chance(self, p):
        return self.rng.random() < p

    def __call__(self, fgrs, phas, bgrs):
        rng, p = self.rng, self.p
        if self._chance(p.fgr_affine):
            fgrs, phas = self.motion_affine(fgrs, phas)
        if self._chance(p.bgr_affine / 2):
            (bgrs,) = self.motion_affine(bgrs)
        if self._chance(p.bgr_affine / 2):
            fgrs, phas, bgrs = self.motion_affine(fgrs, phas, bgrs)
        if self.static_affine:
            fgrs, phas = self.static(fgrs, phas, scale=(0.5, 1.0))
            (bgrs,) = self.static(bgrs, scale=(1.0, 1.5))
        box = resized_crop_params(*fgrs.shape[-2:], ratio=self.ratio, rng=rng)
        fgrs, phas = resized_crop(fgrs, box, self.size), resized_crop(phas, box, self.size)
        bgrs = resized_crop(bgrs, resized_crop_params(*bgrs.shape[-2:], ratio=self.ratio, rng=rng), self.size)
        if self._chance(p.hflip):
            fgrs, phas = hflip(fgrs), hflip(phas)
        if self._chance(p.hflip):
            bgrs = hflip(bgrs)
        if self._chance(p.noise):
            fgrs, bgrs = self.noise(fgrs, bgrs)
        if self._chance(p.colour_jitter):
            fgrs = self.colour_jitter(fgrs)
        if self._chance(p.colour_jitter):
            bgrs = self.colour_jitter(bgrs)
        if self._chance(p.grayscale):
            fgrs, bgrs = colour.grayscale(fgrs), colour.grayscale(bgrs)
        if self._chance(p.sharpness):
            factor = rng.random() * 8
            fgrs, phas, bgrs = (colour.adjust_sharpness(x, factor) for x in (fgrs, phas, bgrs))
        if self._chance(p.blur / 3):
            fgrs, phas = self.motion_blur(fgrs, phas)
        if self._chance(p.blur / 3):
            (bgrs,) = self.motion_blur(bgrs)
        if self._chance(p.blur / 3):
            fgrs, phas, bgrs = self.motion_blur(fgrs, phas, bgrs)
        if self._chance(p.pause):
            fgrs, phas, bgrs = self.pause(fgrs, phas, bgrs)
        return fgrs.contiguous(), phas.contiguous(), bgrs.contiguous()

    # -- steps: each takes and returns [T,C,H,W] tensors -----------------------------------------

    def _progress(self, frames):
        easing = random_easing(self.rng)
        return [easing(t / max(frames - 1, 1)) for t in range(frames)]

    def motion_affine(self, *sequences):
        """Parameters eased from draw A to draw B (translation from the first input's size)."""
        height, width = sequences[0].shape[-2:]
        start, end = (random_affine_params(height, width, rng=self.rng) for _ in range(2))
        params = [start.lerp(end, f) for f in self._progress(len(sequences[0]))]
        return tuple(affine(x, params) for x in sequences)

    def static(self, *sequences, scale):
        height, width = sequences[0].shape[-2:]
        params = random_affine_params(height, width, scale=scale, rng=self.rng)
        return tuple(affine(x, params) for x in sequences)

    def noise(self, *sequences):
        grain = self.rng.random() * 3 + 1
        monochrome = self.rng.random() < 0.5
        return tuple(
            colour.add_noise(x, grain, self.rng.random() * 0.2 / grain, monochrome, self.generator) for x in sequences
        )

    def colour_jitter(self, images):
        rng = self.rng
        (b0, b1), (c0, c1), (s0, s1), (h0, h1) = ((rng.gauss(0, 0.1), rng.gauss(0, 0.1)) for _ in range(4))
        strength = rng.random() * 0.2
        frames = []
        for image, fraction in zip(images, self._progress(len(images))):
            f = fraction * strength
            image = colour.adjust_brightness(image, max(1 + lerp(b0, b1, f), 0.1))
            image = colour.adjust_contrast(image, max(1 + lerp(c0, c1, f), 0.1))
            image = colour.adjust_saturation(image, max(1 + lerp(s0, s1, f), 0.1))
            image = colour.adjust_hue(image, min(0.5, max(-0.5, lerp(h0, h1, f) * 0.1)))
            frames.append(image)
        return torch.stack(frames)

    def motion_blur(self, *sequences):
        start, end = self.rng.random() * 10, self.rng.random() * 10
        out = [x.clone() for x in sequences]
        for t, fraction in enumerate(self._progress(len(sequences[0]))):
            sigma = max(lerp(start, end, fraction), 0.0)
            if sigma > 0:
                size = colour.blur_kernel_size(sigma)
                for x in out:
                    x[t] = colour.gaussian_blur(x[t], size, sigma)
        return tuple(out)

    def pause(self, *sequences):
        frames = len(sequences[0])
        if frames < 2:
            return sequences
        first = self.rng.randrange(frames - 1)
        length = self.rng.randrange(frames - first)
        out = [x.clone() for x in sequences]
        for x in out:
            x[first + 1 : first + length] = x[first]
        return tuple(out)
