"""RVM's training data root -> the datasets of one training stage (the trainer's data hook).

    stage_sources(root, config, Sources) -> Sources({pass: Dataset}, notes=[...])

Root layout (RVM `train_config.py` DATA_PATHS, relative to one data root; optional sets may be
absent, a required one missing raises InputError naming its first missing folder):

    VideoMatte240K_JPEG_{SD,HD}/{train,valid}/{fgr,pha}/<clip>/<frame>.jpg  stages 1-3 (config.videomatte_variant)
    ImageMatte/{train,valid}/{fgr,pha}/<name>                               stage 4
    BackgroundVideos/train/<clip>/<frame>.jpg                               backgrounds (BiMatting: only these)
    Backgrounds/train/<name>.jpg                                            optional; with videos: 50/50 (RVM)
    YouTubeVIS/train/{JPEGImages/, instances.json}                          optional: 'seg_video'
    coco/{train2017/, panoptic_train2017/, annotations/panoptic_train2017.json}  optional: 'seg_image'
    SuperviselyPersonDataset/{img,seg}/                                     optional: 'seg_image'

Passes and samples (dicts of float tensors in [0, 1], S = the pass's size):
    'lr'         {'fgr' [T,3,S,S], 'pha' [T,1,S,S], 'bgr' [T,3,S,S]}  T = seq_lr, S = size_lr
    'hr'         the same at seq_hr / size_hr (when seq_hr > 0)
    'seg_video'  {'img' [T,3,S,S], 'seg' [T,1,S,S]}  YouTubeVIS, T = seq_lr, speed 1
    'seg_image'  {'img' [1,3,S,S], 'seg' [1,1,S,S]}  COCO + SPD stills (T = 1: RVM draws B * seq_lr of them)
"""

from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset

from bimatting.data.backgrounds import Backgrounds
from bimatting.data.coco import coco_from_root
from bimatting.data.dataset_files import require_folders
from bimatting.data.imagematte import ImageMatteDataset
from bimatting.data.motion import MotionAugmentation
from bimatting.data.sampler import TrainFrameSampler
from bimatting.data.spd import SuperviselyPersonDataset
from bimatting.data.videomatte import VideoMatteDataset
from bimatting.data.youtubevis import youtubevis_from_root
from bimatting.errors import InputError

BACKGROUNDS_LAYOUT = "<root>/BackgroundVideos/train/<clip>/<frame>.jpg (and/or <root>/Backgrounds/train/<name>.jpg)"


class Named(Dataset):
    """Wrap a dataset returning a tuple so it returns {name: tensor}."""

    def __init__(self, base, names):
        self.base, self.names = base, tuple(names)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        return dict(zip(self.names, self.base[index]))


def backgrounds(root, size):
    images, videos = Path(root) / "Backgrounds" / "train", Path(root) / "BackgroundVideos" / "train"
    if not images.is_dir() and not videos.is_dir():
        require_folders(root, "BackgroundVideos", "train", expected=BACKGROUNDS_LAYOUT)  # names the first missing
    return Backgrounds(
        image_dir=images if images.is_dir() else None, video_dir=videos if videos.is_dir() else None, size=size
    )


def matting_set(root, config, size, length):
    if config.data == "videomatte":
        folder = Path(root) / f"VideoMatte240K_JPEG_{config.videomatte_variant}"
        data = VideoMatteDataset(
            folder, backgrounds(root, size), size=size, seq_length=length, transform=MotionAugmentation.videomatte(size)
        )
    elif config.data == "imagematte":
        data = ImageMatteDataset(
            Path(root) / "ImageMatte",
            backgrounds(root, size),
            size=size,
            seq_length=length,
            transform=MotionAugmentation.imagematte(size),
        )
    else:
        raise InputError(f"unknown stage data '{config.data}'; expected videomatte or imagematte")
    return Named(data, ("fgr", "pha", "bgr"))


def stage_sources(root, config, sources_class):
    """sources_class: a dict subclass taking notes= (bimatting.train.sources.Sources)."""
    root = Path(root)
    lr = matting_set(root, config, config.size_lr, config.seq_lr)
    found = sources_class(lr=lr, notes=[f"data: {config.data} under {root}: {len(lr)} samples"])
    if config.seq_hr > 0:
        found["hr"] = matting_set(root, config, config.size_hr, config.seq_hr)
    if (root / "YouTubeVIS" / "train").is_dir():
        found["seg_video"] = Named(
            youtubevis_from_root(
                root / "YouTubeVIS" / "train",
                size=config.size_lr,
                seq_length=config.seq_lr,
                sampler=TrainFrameSampler(speeds=(1,)),
            ),
            ("img", "seg"),
        )
    stills = []
    if (root / "coco").is_dir():
        stills.append(coco_from_root(root / "coco", size=config.size_lr))
    if (root / "SuperviselyPersonDataset").is_dir():
        stills.append(SuperviselyPersonDataset(root / "SuperviselyPersonDataset", size=config.size_lr))
    if stills:
        found["seg_image"] = Named(ConcatDataset(stills), ("img", "seg"))
    for name in ("seg_video", "seg_image"):
        if name in found:
            found.notes.append(f"{name}: {len(found[name])} samples")
    return found
