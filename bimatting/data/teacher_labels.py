"""Foregrounds with known alpha from real footage: the RVM teacher's fgr and pha.

The teacher (RVM with its official weights, `bimatting.load_model("rvm")`) runs recurrently over
the footage at the output size (states carried frame to frame, downsample ratio as the official
inference's "auto"); its fgr/pha become the foreground layer and the true alpha of composites.
The composite built from them is then exactly consistent with its alpha, whatever the teacher's
errors on the original footage were.
"""

import numpy as np

import bimatting
from bimatting.downsample import auto_downsample_ratio
from bimatting.errors import InputError
from bimatting.matting.frames import iter_frames
from bimatting.recurrent import recurrent_step


def cover_resize(image, width, height):
    """Resize so the image covers width x height, then centre-crop to it. [h,w,C] -> [H,W,C]"""
    import cv2

    h, w = image.shape[:2]
    scale = max(width / w, height / h)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (size[1] - height) // 2, (size[0] - width) // 2
    return resized[top : top + height, left : left + width]


def read_footage(source, frames, width, height):
    """`frames` RGB frames [T,H,W,3] of a video or frame folder; shorter footage plays back and
    forth (ping-pong) so motion stays continuous."""
    clip = [cover_resize(f, width, height) for f in iter_frames(source, limit=frames)]
    if not clip:
        raise InputError(f"footage '{source}' has no frames; give a video file or a folder of images")
    cycle = clip + clip[-2:0:-1] if len(clip) > 1 else clip
    return np.stack([cycle[i % len(cycle)] for i in range(frames)]).astype(np.float32)


class Teacher:
    """Lazily loaded RVM teacher: matte(frames [T,H,W,3]) -> (fgr [T,H,W,3], pha [T,H,W])."""

    def __init__(self, source="rvm", device="cpu"):
        self.source, self.device, self._model = source, device, None

    @property
    def model(self):
        if self._model is None:
            self._model = bimatting.load_model(self.source).to(self.device).eval()
        return self._model

    def matte(self, frames, on_frame=None):
        import torch

        height, width = frames.shape[1:3]
        ratio = auto_downsample_ratio(height, width)
        states = None
        fgrs, phas = [], []
        with torch.inference_mode():
            for frame in frames:
                src = torch.from_numpy(np.ascontiguousarray(frame.transpose(2, 0, 1)))[None].to(
                    self.device
                )  # [1,3,H,W]
                outputs, states = recurrent_step(self.model, src, states, ratio)
                fgr, pha = outputs[0], outputs[1]
                fgrs.append(fgr[0].permute(1, 2, 0).cpu().numpy())  # [H,W,3]
                phas.append(pha[0, 0].cpu().numpy())  # [H,W]
                if on_frame is not None:
                    on_frame()
        return np.stack(fgrs).astype(np.float32), np.stack(phas).astype(np.float32)
