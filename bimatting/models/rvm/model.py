"""Robust Video Matting, MobileNetV3-Large variant (Lin et al., WACV 2022), full precision.

encoder -> LR-ASPP -> recurrent decoder -> projection heads -> Deep Guided Filter refiner.
This is the reference (and teacher) network of the project; the binarized BiMatting network
keeps its call convention and state layout.
"""

from torch import nn
from torch.nn import functional as F

from bimatting.models.rvm.decoder import RecurrentDecoder
from bimatting.models.rvm.guided_filter import DeepGuidedFilterRefiner
from bimatting.models.rvm.lraspp import LRASPP
from bimatting.models.rvm.mobilenetv3 import LAST_CHANNELS, MobileNetV3LargeEncoder
from bimatting.models.rvm.projection import Projection


class RVM(nn.Module):
    """fgr, pha, r1, r2, r3, r4 = model(src, r1, r2, r3, r4, downsample_ratio=s)

    src: RGB in [0, 1], [B,3,H,W] or [B,T,3,H,W] (any B, T). r1..r4: recurrent states from the
    previous call, or None (zeros). The network runs on src resized by s (H' = floor(H*s));
    when it is refined, outputs come back at H x W. Outputs keep src's rank: fgr [B,(T),3,H,W],
    pha [B,(T),1,H,W]; states are 4-D: r1 [B,16,H'/2,W'/2], r2 [B,20,H'/4,W'/4],
    r3 [B,40,H'/8,W'/8], r4 [B,64,H'/16,W'/16] (sizes rounded up at each halving).
    With segmentation_pass=True: seg, r1..r4 = model(...), seg = person logits [B,(T),1,H',W'].

    refine_at_unit_ratio: run the guided-filter refiner even when s == 1. RVM's PyTorch code skips
    it at s == 1 (the output is then the raw head), but its official ONNX export always applies
    it, so a network loaded from that ONNX needs True to reproduce it; official .pth weights
    load with False.
    """

    def __init__(self, refine_at_unit_ratio=False):
        super().__init__()
        self.refine_at_unit_ratio = bool(refine_at_unit_ratio)
        self.backbone = MobileNetV3LargeEncoder()
        self.aspp = LRASPP(LAST_CHANNELS, 128)
        self.decoder = RecurrentDecoder((16, 24, 40, 128), (80, 40, 32, 16))
        self.project_mat = Projection(16, 4)
        self.project_seg = Projection(16, 1)
        self.refiner = DeepGuidedFilterRefiner(16)

    @property
    def config(self):
        """Constructor arguments; saved in checkpoints so the same network is rebuilt."""
        return {"refine_at_unit_ratio": self.refine_at_unit_ratio}

    def forward(self, src, r1=None, r2=None, r3=None, r4=None, downsample_ratio=1.0, segmentation_pass=False):
        if src.ndim not in (4, 5) or src.shape[-3] != 3:
            raise ValueError(f"src must be [B,3,H,W] or [B,T,3,H,W], got shape {list(src.shape)}")
        if not downsample_ratio > 0:
            raise ValueError(f"downsample_ratio must be > 0, got {downsample_ratio}")
        frames = src.shape[1] if src.ndim == 5 else 1
        src_flat = src.flatten(0, 1) if src.ndim == 5 else src  # [N,3,H,W], N = B*T
        refine = downsample_ratio != 1 or self.refine_at_unit_ratio
        src_sm = self._downsample(src_flat, downsample_ratio)  # [N,3,H',W']

        f1, f2, f3, f4 = self.backbone(src_sm)  # 16/24/40/960 ch
        f4 = self.aspp(f4)  # [N,128,H'/16,W'/16]
        hid, r1, r2, r3, r4 = self.decoder(src_sm, f1, f2, f3, f4, r1, r2, r3, r4, frames)  # [N,16,H',W']

        if segmentation_pass:
            seg = self.project_seg(hid)  # [N,1,H',W']
            return [self._restore_time(seg, src), r1, r2, r3, r4]

        fgr_residual, pha = self.project_mat(hid).split([3, 1], dim=1)  # [N,3,H',W'], [N,1,H',W']
        if refine:
            fgr_residual, pha = self.refiner(src_flat, src_sm, fgr_residual, pha, hid)  # -> H x W
        fgr = (fgr_residual + src_flat).clamp(0.0, 1.0)
        pha = pha.clamp(0.0, 1.0)
        return [self._restore_time(fgr, src), self._restore_time(pha, src), r1, r2, r3, r4]

    @property
    def state_channels(self):
        """(C1, C2, C3, C4): channels of the recurrent states r1..r4."""
        return self.decoder.state_channels

    def emit_onnx(self, b, io):
        """forward as ONNX nodes, one frame per batch entry (`b`: export's layers.Builder, `io`: its
        graph interface: src, ratio, states in; fgr, pha, states out). Children emit themselves."""
        b.name_modules(self)
        src_sm = b.resize_by(io.src, io.ratio)  # [N,3,H',W']
        with b.scope("backbone"):
            f1, f2, f3, f4 = self.backbone.emit_onnx(b, src_sm)
        with b.scope("aspp"):
            f4 = self.aspp.emit_onnx(b, f4)  # [N,128,H'/16,W'/16]
        with b.scope("decoder"):
            hid, states = self.decoder.emit_onnx(b, src_sm, f1, f2, f3, f4, io.states, io.state_outputs)
        with b.scope("project_mat"):
            coarse = self.project_mat.emit_onnx(b, hid)  # [N,4,H',W']
        mode = io.refine_mode(always=self.refine_at_unit_ratio)
        refined = None
        if mode != "never":
            with b.scope("refiner"):
                refined = self.refiner.emit_onnx(b, io.src, src_sm, coarse, hid)  # [N,4,H,W]
        fgr_residual, pha = b.split(io.select_refined(coarse, refined, mode), [3, 1])
        fgr = b.clip(b.op("Add", [fgr_residual, io.src]), 0.0, 1.0, out="fgr")
        io.declare_outputs(fgr, b.clip(pha, 0.0, 1.0, out="pha"), states)

    @staticmethod
    def _downsample(x, ratio):
        if ratio == 1:
            return x
        # recompute_scale_factor=False: sample with the given ratio, as RVM and its ONNX Resize do.
        return F.interpolate(x, scale_factor=ratio, mode="bilinear", align_corners=False, recompute_scale_factor=False)

    @staticmethod
    def _restore_time(x, src):  # [B*T,C,h,w] -> [B,T,C,h,w] for 5-D src
        return x.unflatten(0, src.shape[:2]) if src.ndim == 5 else x
