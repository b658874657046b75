"""Background sources for matting composites: still images (flat folder) and videos
(`<clip>/<frame>.jpg`), as RVM's loaders read them.

    Backgrounds(image_dir=None, video_dir=None, image_probability=0.5, size=512, sampler=None)
    .sample(T) -> [T,3,H,W] float in [0, 1]

An image is repeated T times; a video sequence starts at a random frame in
[0, max(1, count - T)) and reads frames start + offset (offsets from the frame sampler) modulo
the frame count. RVM mixes images and videos 50/50; BiMatting uses videos only
(image_probability=0, or no image_dir).
"""

import random

import torch

from bimatting.data.dataset_files import image_files, read_rgb, require_folders, subfolders
from bimatting.data.sampler import ValidFrameSampler, frame_indices
from bimatting.errors import InputError

IMAGES_LAYOUT = "<images>/<name>.jpg (a flat folder of images)"
VIDEOS_LAYOUT = "<videos>/<clip>/<frame>.jpg"


class Backgrounds:
    def __init__(self, image_dir=None, video_dir=None, image_probability=0.5, size=512, sampler=None, rng=None):
        if image_dir is None and video_dir is None:
            raise InputError("no backgrounds: give a background image folder, a background video folder or both")
        self.images = (
            image_files(require_folders(image_dir, expected=IMAGES_LAYOUT), IMAGES_LAYOUT)
            if image_dir is not None
            else []
        )
        self.videos = []
        if video_dir is not None:
            for clip in subfolders(require_folders(video_dir, expected=VIDEOS_LAYOUT), VIDEOS_LAYOUT):
                self.videos.append(image_files(clip, VIDEOS_LAYOUT))
        self.image_probability = image_probability if self.images and self.videos else float(bool(self.images))
        self.size = size
        self.sampler = sampler if sampler is not None else ValidFrameSampler()
        self.rng = rng if rng is not None else random

    def __len__(self):
        """Number of distinct sources (images + video clips)."""
        return len(self.images) + len(self.videos)

    def sample(self, length):
        if self.rng.random() < self.image_probability:
            return self.image(self.rng.randrange(len(self.images)), length)
        return self.video(self.rng.randrange(len(self.videos)), length)

    def image(self, index, length):
        frame = read_rgb(self.images[index], self.size)  # [3,H,W]
        return frame.unsqueeze(0).expand(length, -1, -1, -1).clone()  # [T,3,H,W]

    def video(self, index, length):
        frames = self.videos[index]
        start = self.rng.randrange(max(1, len(frames) - length))
        picks = frame_indices(start, self.sampler(length), len(frames))
        return torch.stack([read_rgb(frames[i], self.size) for i in picks])  # [T,3,H,W]
