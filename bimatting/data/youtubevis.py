"""YouTubeVIS 2021 reader for the video segmentation pass: `<root>/JPEGImages/<video>/<frame>.jpg`
and `<root>/instances.json` (or any annotation file given).

    YouTubeVISDataset(video_dir, annotation_file, size=512, seq_length=15, sampler=None, transform=None)
    dataset[i] -> imgs [T,3,S,S], segs [T,1,S,S]

Only videos with a person (category 26) are kept; a frame's mask is the union of its person
instances (RLE, see bimatting.data.rle). Item i is (video, frame); frames read are
frame + offset modulo the video length (offsets from the sampler: speed 1 in RVM's segmentation
pass). Images shrink to short side `size` (bilinear), masks with nearest.
"""

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from bimatting.data import rle
from bimatting.data.dataset_files import downsample_if_needed, image_to_float_tensor, read_rgb, require_folders
from bimatting.data.sampler import TrainFrameSampler, frame_indices
from bimatting.data.seg_augment import SegmentationAugmentation
from bimatting.errors import InputError

LAYOUT = "<root>/JPEGImages/<video>/<frame>.jpg + instances.json (YouTubeVIS 2021)"
PERSON = 26


def person_masks(annotations):
    """video_id -> [per-frame list of RLE dicts] of person instances."""
    masks = {}
    for annotation in annotations:
        if annotation["category_id"] != PERSON:
            continue
        frames = masks.setdefault(annotation["video_id"], [[] for _ in annotation["segmentations"]])
        for frame, segmentation in zip(frames, annotation["segmentations"]):
            if segmentation is not None:
                frame.append(segmentation)
    return masks


class YouTubeVISDataset(Dataset):
    def __init__(self, video_dir, annotation_file, size=512, seq_length=15, sampler=None, transform=None):
        self.video_dir = require_folders(video_dir, expected=LAYOUT)
        if not Path(annotation_file).is_file():
            raise InputError(f"missing file '{annotation_file}'; expected the layout {LAYOUT}")
        with open(annotation_file) as handle:
            data = json.load(handle)
        self.masks = person_masks(data["annotations"])
        self.videos = {v["id"]: v for v in data["videos"] if v["id"] in self.masks}
        self.index = [(vid, f) for vid, video in self.videos.items() for f in range(len(video["file_names"]))]
        self.size, self.seq_length = size, seq_length
        self.sampler = sampler if sampler is not None else TrainFrameSampler(speeds=(1,))
        self.transform = transform if transform is not None else SegmentationAugmentation.video(size)

    def __len__(self):
        return len(self.index)

    def __getitem__(self, item):
        video_id, start = self.index[item]
        video = self.videos[video_id]
        names = video["file_names"]
        imgs, segs = [], []
        for frame in frame_indices(start, self.sampler(self.seq_length), len(names)):
            imgs.append(read_rgb(self.video_dir / names[frame], self.size))  # [3,H,W]
            mask = np.zeros((video["height"], video["width"]), np.uint8)
            for segmentation in self.masks[video_id][frame]:
                mask |= rle.decode(segmentation)
            segs.append(image_to_float_tensor(downsample_if_needed(mask, self.size, nearest=True)))  # [1,H,W]
        return self.transform(torch.stack(imgs), torch.stack(segs))


def youtubevis_from_root(root, **kw):
    """YouTubeVISDataset of a root holding JPEGImages/ and instances.json."""
    root = Path(root)
    return YouTubeVISDataset(require_folders(root, "JPEGImages", expected=LAYOUT), root / "instances.json", **kw)
