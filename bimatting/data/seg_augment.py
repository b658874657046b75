"""Augmentations for the segmentation pass (torch ops only), as RVM's segmentation loaders.

SegmentationAugmentation.image(size)   COCO / SPD: affine (+-20 deg, translate 0.1, shear +-10,
                                       masks nearest), RandomResizedCrop(0.5-1, 0.7-1.3), hflip,
                                       ColorJitter(0.1, 0.1, 0.1, 0.1)
SegmentationAugmentation.video(size)   YouTubeVIS: RandomResizedCrop(0.8-1, 0.9-1.1), ColorJitter
                                       (0.3, 0.3, 0.3, 0.15), grayscale 5%, hflip
SegmentationAugmentation.valid(size)   resize only
aug(imgs [T,3,H,W], segs [T,1,H,W]) -> [T,3,S,S], [T,1,S,S] (an image set passes T = 1)
"""

import random

from bimatting.data import colour
from bimatting.data.geometric_transforms import affine, hflip, random_affine_params, resized_crop, resized_crop_params


def color_jitter(images, brightness, contrast, saturation, hue, *, rng=random):
    """torchvision ColorJitter: factors U(1-x, 1+x) (hue U(-x, x)), applied in random order."""
    steps = [
        lambda x, f=rng.uniform(1 - brightness, 1 + brightness): colour.adjust_brightness(x, f),
        lambda x, f=rng.uniform(1 - contrast, 1 + contrast): colour.adjust_contrast(x, f),
        lambda x, f=rng.uniform(1 - saturation, 1 + saturation): colour.adjust_saturation(x, f),
        lambda x, f=rng.uniform(-hue, hue): colour.adjust_hue(x, f),
    ]
    rng.shuffle(steps)
    for step in steps:
        images = step(images)
    return images


class SegmentationAugmentation:
    def __init__(
        self,
        size,
        affine=False,
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        jitter=None,
        grayscale=0.0,
        flip=0.0,
        segs_mode="bilinear",
        rng=None,
    ):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.affine, self.crop_scale, self.crop_ratio = affine, crop_scale, crop_ratio
        self.jitter, self.grayscale, self.flip = jitter, grayscale, flip
        self.segs_mode = segs_mode
        self.rng = rng if rng is not None else random

    @classmethod
    def image(cls, size, **kw):
        return cls(
            size,
            affine=True,
            crop_scale=(0.5, 1.0),
            crop_ratio=(0.7, 1.3),
            jitter=(0.1, 0.1, 0.1, 0.1),
            flip=0.5,
            segs_mode="nearest",
            **kw,
        )

    @classmethod
    def video(cls, size, **kw):
        return cls(
            size,
            crop_scale=(0.8, 1.0),
            crop_ratio=(0.9, 1.1),
            jitter=(0.3, 0.3, 0.3, 0.15),
            grayscale=0.05,
            flip=0.5,
            **kw,
        )

    @classmethod
    def valid(cls, size, **kw):
        return cls(size, **kw)

    def __call__(self, imgs, segs):
        rng = self.rng
        if self.affine:
            params = random_affine_params(
                *imgs.shape[-2:], degrees=20, translate=0.1, scale=(1.0, 1.0), shear=10, rng=rng
            )
            imgs, segs = affine(imgs, params), affine(segs, params, mode=self.segs_mode)
        box = resized_crop_params(*imgs.shape[-2:], scale=self.crop_scale, ratio=self.crop_ratio, rng=rng)
        imgs = resized_crop(imgs, box, self.size)
        segs = resized_crop(segs, box, self.size, mode=self.segs_mode)
        if self.jitter is not None:
            imgs = color_jitter(imgs, *self.jitter, rng=rng)
        if rng.random() < self.grayscale:
            imgs = colour.grayscale(imgs)
        if rng.random() < self.flip:
            imgs, segs = hflip(imgs), hflip(segs)
        return imgs.contiguous(), segs.contiguous()
