"""VideoMatte240K reader: `<root>/{train,valid}/{fgr,pha}/<clip>/<frame>.jpg`.

    VideoMatteDataset(root, backgrounds, split="train", size=512, seq_length=15,
                      sampler=TrainFrameSampler(), transform=MotionAugmentation.videomatte(512))
    dataset[i] -> fgrs [T,3,S,S], phas [T,1,S,S], bgrs [T,3,S,S] float in [0, 1]

Item i is (clip, start) with start = 0, T, 2T, ... over each clip, so len = sum ceil(frames/T)
(RVM's indexing); frames read are start + offset modulo the clip length, offsets from the
sampler. Frames are first shrunk to short side `size` when larger.
"""

import torch
from torch.utils.data import Dataset

from bimatting.data.dataset_files import image_files, read_mask, read_rgb, require_folders, subfolders
from bimatting.data.motion import MotionAugmentation
from bimatting.data.sampler import TrainFrameSampler, frame_indices
from bimatting.errors import InputError

LAYOUT = "<root>/{train,valid}/{fgr,pha}/<clip>/<frame>.jpg (VideoMatte240K)"


def paired_frames(fgr_root, pha_root, layout):
    """[(fgr_files, pha_files)] per clip of fgr_root, checking pha_root has the same clips/names."""
    clips = []
    for clip in subfolders(fgr_root, layout):
        fgr_files = image_files(clip, layout)
        pha_clip = require_folders(pha_root, clip.name, expected=layout)
        pha_files = {p.stem: p for p in image_files(pha_clip, layout)}
        missing = [f for f in fgr_files if f.stem not in pha_files]
        if missing:
            raise InputError(f"alpha for '{missing[0]}' is missing in '{pha_clip}'; expected the layout {layout}")
        clips.append((fgr_files, [pha_files[f.stem] for f in fgr_files]))
    return clips


class VideoMatteDataset(Dataset):
    def __init__(self, root, backgrounds, split="train", size=512, seq_length=15, sampler=None, transform=None):
        fgr_root = require_folders(root, split, "fgr", expected=LAYOUT)
        pha_root = require_folders(root, split, "pha", expected=LAYOUT)
        self.clips = paired_frames(fgr_root, pha_root, LAYOUT)
        self.backgrounds = backgrounds
        self.size, self.seq_length = size, seq_length
        self.sampler = sampler if sampler is not None else TrainFrameSampler()
        self.transform = transform if transform is not None else MotionAugmentation.videomatte(size)
        self.index = [(c, start) for c, (fgrs, _) in enumerate(self.clips) for start in range(0, len(fgrs), seq_length)]

    def __len__(self):
        return len(self.index)

    def __getitem__(self, item):
        clip, start = self.index[item]
        fgr_files, pha_files = self.clips[clip]
        picks = frame_indices(start, self.sampler(self.seq_length), len(fgr_files))
        fgrs = torch.stack([read_rgb(fgr_files[i], self.size) for i in picks])  # [T,3,H,W]
        phas = torch.stack([read_mask(pha_files[i], self.size) for i in picks])  # [T,1,H,W]
        bgrs = self.backgrounds.sample(self.seq_length)  # [T,3,H',W']
        return self.transform(fgrs, phas, bgrs)
