"""Training and evaluation data (needs torch for the readers; synth and procedural are numpy).

Readers of RVM's layouts (torch Datasets; tensors float in [0, 1]; S = size):

    from bimatting.data import (Backgrounds, VideoMatteDataset, ImageMatteDataset,
        CocoPanopticDataset, coco_from_root, SuperviselyPersonDataset, YouTubeVISDataset,
        youtubevis_from_root, MotionAugmentation, SegmentationAugmentation,
        TrainFrameSampler, ValidFrameSampler)

    bgrs = Backgrounds(image_dir=None, video_dir=None, image_probability=0.5, size=512)
        # images: flat folder; videos: <clip>/<frame>.jpg. BiMatting: video_dir only.
    VideoMatteDataset(root, bgrs, split="train", size=512, seq_length=15, sampler=None, transform=None)
        # <root>/{train,valid}/{fgr,pha}/<clip>/<frame>.jpg; item -> fgrs [T,3,S,S], phas [T,1,S,S],
        # bgrs [T,3,S,S]; len = sum ceil(frames/T). Default sampler TrainFrameSampler(), default
        # transform MotionAugmentation.videomatte(size); validation: ValidFrameSampler() and
        # MotionAugmentation.valid(size).
    ImageMatteDataset(root, bgrs, split="train", size=512, seq_length=20, transform=None)
        # <root>/{train,valid}/{fgr,pha}/<name>; one image repeated T times; MotionAugmentation.imagematte
    coco_from_root(root, split="train2017", size=512)   -> img [1,3,S,S], seg [1,1,S,S]
    SuperviselyPersonDataset(root, size=512)            -> img [1,3,S,S], seg [1,1,S,S]  (img/, seg/)
    youtubevis_from_root(root, size=512, seq_length=15) -> imgs [T,3,S,S], segs [T,1,S,S]
        # segmentation sets default to SegmentationAugmentation.image(size) / .video(size)

    MotionAugmentation(size, probabilities, static_affine=True, aspect_ratio_range=(0.9, 1.1))
        (fgrs, phas, bgrs) -> (fgrs, phas, bgrs) at S x S; presets .videomatte/.imagematte/.valid
    TrainFrameSampler(speeds=(0.5, 1, 2, 3, 4, 5))(T) -> frame offsets (shift, 50% reversed)

The trainer's hook: bimatting.data.training.stage_sources(root, config, Sources) builds the
passes of one stage ('lr', 'hr', 'seg_video', 'seg_image'; samples are dicts) from a data root in
RVM's DATA_PATHS layout (see that module). `bimatting data check KIND ROOT` checks one layout.

The composite (src = fgr * pha + bgr * (1 - pha)) and the training-time random crop are the
trainer's job (RVM builds them on the GPU). Randomness uses Python's `random` and torch's global
generator, which DataLoader reseeds per worker; every class also takes rng= for determinism.
A root in the wrong layout raises InputError naming the first missing folder.

Evaluation sets (numpy + OpenCV):
    bimatting.data.synth.synthesize(out, *, clips, frames, size, footage, backgrounds, seed, ...)
        composites with known alpha in RVM's layout <out>/videomatte_{motion,static}/<clip>/...
"""

import importlib

_EXPORTS = {
    "Backgrounds": "bimatting.data.backgrounds",
    "VideoMatteDataset": "bimatting.data.videomatte",
    "ImageMatteDataset": "bimatting.data.imagematte",
    "CocoPanopticDataset": "bimatting.data.coco",
    "coco_from_root": "bimatting.data.coco",
    "SuperviselyPersonDataset": "bimatting.data.spd",
    "YouTubeVISDataset": "bimatting.data.youtubevis",
    "youtubevis_from_root": "bimatting.data.youtubevis",
    "MotionAugmentation": "bimatting.data.motion",
    "SegmentationAugmentation": "bimatting.data.seg_augment",
    "TrainFrameSampler": "bimatting.data.sampler",
    "ValidFrameSampler": "bimatting.data.sampler",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    # Lazy: `bimatting data synth` and the evaluation tools must not pay for importing torch.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bimatting.data' has no attribute {name!r}")
