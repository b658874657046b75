"""A frozen teacher network for distillation (RVM with its official weights by default).

teacher(src, downsample_ratio) -> {'fgr', 'pha'} [B, T, C, H, W], computed without gradients,
from zero recurrent state over the T frames of the batch (the same frames the student sees).
"""

import torch

from bimatting.errors import InputError
from bimatting.train.features import FeatureTaps
from bimatting.weights.checkpoints import load_model


class Teacher:
    def __init__(self, source="rvm", device="cpu"):
        self.source = str(source)
        self.model = load_model(source).to(device).eval()
        outputs = getattr(self.model, "forward", None)
        if outputs is None:
            raise InputError(f"teacher '{source}' is not a network")
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, src, downsample_ratio=1.0):
        # src [B, T, 3, H, W] -> fgr [B, T, 3, H, W], pha [B, T, 1, H, W] (float32, detached)
        outputs = self.model(src, downsample_ratio=downsample_ratio)
        return {"fgr": outputs[0].float(), "pha": outputs[1].float()}

    @torch.no_grad()
    def features(self, src, downsample_ratio=1.0, direct=True, attention=False):
        """The teacher's intermediate features on src (bimatting.train.features taps)."""
        with FeatureTaps(self.model, direct, attention) as taps:
            self.model(src, downsample_ratio=downsample_ratio)
        return taps.features
