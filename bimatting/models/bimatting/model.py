"""BiMatting (Qin et al., NeurIPS 2023): Robust Video Matting with 1-bit weights and activations.

    src -> [resize by s] -> BiMobileNet -> BiLRASPP(1024, 128) -> SAB decoder -> FP project_mat
        -> [BiDGF refiner, s != 1 only] -> fgr, pha   (+ coarse fgr_s, pha_s at 1/16 of src_sm)

Call convention (RVM's, plus the coarse side outputs):
    fgr, pha, fgr_s, pha_s, r1, r2, r3, r4 = model(src, r1, r2, r3, r4, downsample_ratio=s)
    fgr, pha, r1, r2, r3, r4 = model(src, ..., return_coarse=False)
    seg, r1, r2, r3, r4 = model(src, ..., segmentation_pass=True)
src is RGB in [0, 1], [B, 3, H, W] or [B, T, 3, H, W]; outputs keep the input's rank, states are
[B, C, h, w]. State dict keys equal the official checkpoint's minus the unused `channel_threshold`.

Deliberate departures from htqin/BiMatting @746876b, each a fix:
  * 4-D input works (official: 5-D only) and any batch size B (official: B = 1; the SAB GRU paired
    step t with mask[t] of the flattened B*T batch, and fgr_s broke or had a wrong shape for B > 1);
  * sign(0) = +1 (official torch.sign gives 0);
  * no `channel_threshold` parameters (never read by the official forward).
"""

import numpy as np
from torch import nn
from torch.nn import functional as F

from .bimobilenet import INPUT_GRID, STAGE_WIDTHS, TRIPLES, BiMobileNet, BinaryBlock, snap_to_grid, stage_widths
from .binarize import BiConv2d, BinaryActivation, LearnableBias
from .decoder import Projection, SABDecoder
from .fixed_order import emit_resize_by, resize_by
from .guided_filter import BiDeepGuidedFilterRefiner
from .lraspp import BiLRASPP

DEAD_PARAMETER = "channel_threshold"  # official BiConv2d parameter that forward never reads
# The official widths; build_model("bimatting", **config) takes others (saved as `config`).
DEFAULT_CONFIG = {
    "widths": list(STAGE_WIDTHS),
    "aspp_channels": 128,
    "decoder_channels": [80, 40, 32, 16],
    "encoder_triples": list(TRIPLES),
}


class BiMatting(nn.Module):
    """widths: BiMobileNet's block widths (18 for the official arrangement; default: the official
    pattern for `encoder_triples`); aspp_channels: the ASPP output (also decode4's width);
    decoder_channels: decode3, decode2, decode1, decode0 (the last is the hidden width of the heads
    and the refiner); encoder_triples: BiMobileNet's dense triples in its 1/4, 1/8 and 1/16 stages
    (official (1, 2, 2); e.g. (1, 1, 1) is a shallower encoder with 11 binary blocks).
    Recurrent states have half of decode1, decode2, decode3 and the ASPP width."""

    def __init__(self, widths=None, aspp_channels=128, decoder_channels=(80, 40, 32, 16), encoder_triples=TRIPLES):
        super().__init__()
        widths = stage_widths(encoder_triples) if widths is None else widths
        self._config = {
            "widths": [int(w) for w in widths],
            "aspp_channels": int(aspp_channels),
            "decoder_channels": [int(c) for c in decoder_channels],
            "encoder_triples": [int(t) for t in encoder_triples],
        }
        self.backbone = BiMobileNet(widths, encoder_triples)
        taps = self.backbone.tap_channels
        hidden = int(decoder_channels[3])
        self.aspp = BiLRASPP(taps["f4"], aspp_channels)
        self.decoder = SABDecoder([taps["f1"], taps["f2"], taps["f3"], aspp_channels], decoder_channels)
        self.project_mat = Projection(hidden, 4)
        self.project_seg = Projection(hidden, 1)
        self.refiner = BiDeepGuidedFilterRefiner(hidden)
        # Off: RVM's plain clamp, as the official training. On: see _clamp (used for distillation
        # from random initialisation, where a plain clamp let alpha die).
        self.straight_through_clamp = False

    @property
    def config(self):
        """Constructor arguments that differ from the official network (saved in checkpoints)."""
        return {key: value for key, value in self._config.items() if value != DEFAULT_CONFIG[key]}

    def forward(
        self, src, r1=None, r2=None, r3=None, r4=None, downsample_ratio=1.0, segmentation_pass=False, return_coarse=True
    ):
        video = src.ndim == 5
        if not video and src.ndim != 4:
            raise ValueError(f"src must be [B, 3, H, W] or [B, T, 3, H, W], got shape {tuple(src.shape)}")
        bt = tuple(src.shape[:2]) if video else (src.shape[0], 1)
        frames = src.flatten(0, 1) if video else src  # [N=B*T, 3, H, W]
        small = frames if downsample_ratio == 1 else resize_by(frames, downsample_ratio)  # [N, 3, H', W']
        if not self.training:
            small = snap_to_grid(small)  # the same image in every runtime (see bimobilenet.INPUT_GRID)

        f1, f2, f3, f4 = self.backbone(small)  # 16 @1/2, 32 @1/4, 64 @1/8, 1024 @1/16 of H'
        f4 = self.aspp(f4)  # [N, 128, H'/16, W'/16]
        hid, coarse, r1, r2, r3, r4 = self.decoder(
            small, f1, f2, f3, f4, r1, r2, r3, r4, self.project_mat, bt
        )  # hid [N, 16, H', W']

        def restore(x):  # [N, C, h, w] -> the input's layout
            return x.unflatten(0, bt) if video else x

        if segmentation_pass:
            return restore(self.project_seg(hid)), r1, r2, r3, r4  # seg logits [.., 1, H', W']

        fgr_residual, pha = self.project_mat(hid).split([3, 1], dim=1)  # [N, 3|1, H', W']
        if downsample_ratio != 1:
            fgr_residual, pha = self.refiner(frames, small, fgr_residual, pha, hid)  # [N, 3|1, H, W]
        fgr = self._clamp(fgr_residual + frames)
        pha = self._clamp(pha)
        if not return_coarse:
            return restore(fgr), restore(pha), r1, r2, r3, r4

        fgr_residual_s, pha_s = coarse.split([3, 1], dim=1)  # [N, 3|1, H'/16, W'/16]
        # As official: the full-resolution src, bilinearly shrunk to the coarse size (no antialias).
        src_s = F.interpolate(frames, size=fgr_residual_s.shape[-2:], mode="bilinear", align_corners=False)
        fgr_s = self._clamp(fgr_residual_s + src_s)
        pha_s = self._clamp(pha_s)
        return restore(fgr), restore(pha), restore(fgr_s), restore(pha_s), r1, r2, r3, r4

    @property
    def state_channels(self):
        """(C1, C2, C3, C4): channels of the recurrent states r1..r4."""
        return self.decoder.state_channels

    def emit_onnx(self, b, io):
        """forward (return_coarse=False) as ONNX nodes, one frame per batch entry (`b`: export's
        layers.Builder, `io`: its graph interface: src, ratio, states in; fgr, pha, states out).
        Children emit themselves; see docs/onnx-ops.md for the binary ops."""
        b.name_modules(self)
        small = io.src if io.ratio == 1.0 else emit_resize_by(b, io.src, io.ratio)  # [N, 3, H', W']
        grid = b.const(INPUT_GRID, np.float32)
        small = b.op("Div", [b.op("Round", [b.op("Mul", [small, grid])]), grid])  # snap_to_grid
        with b.scope("backbone"):
            f1, f2, f3, f4 = self.backbone.emit_onnx(b, small)
        with b.scope("aspp"):
            f4 = self.aspp.emit_onnx(b, f4)  # [N, 128, H'/16, W'/16]
        with b.scope("decoder"):
            hid, states = self.decoder.emit_onnx(
                b, small, f1, f2, f3, f4, io.states, io.state_outputs, self.project_mat
            )  # hid [N, 16, H', W']
        with b.scope("project_mat"):
            coarse = self.project_mat.emit_onnx(b, hid)  # [N, 4, H', W']
        mode = io.refine_mode(always=False)  # the refiner runs only when s != 1
        refined = None
        if mode != "never":
            with b.scope("refiner"):
                refined = self.refiner.emit_onnx(b, io.src, small, coarse, hid)  # [N, 4, H, W]
        fgr_residual, pha = b.split(io.select_refined(coarse, refined, mode), [3, 1])
        fgr = b.clip(b.op("Add", [fgr_residual, io.src]), 0.0, 1.0, out="fgr")  # _clamp in eval mode
        io.declare_outputs(fgr, b.clip(pha, 0.0, 1.0, out="pha"), states)

    def _clamp(self, x):
        """clamp(x, 0, 1). With straight_through_clamp in training: forward unchanged, d/dx = 1.

        Trained from random weights, the heads can drift out of [0, 1] everywhere; a plain clamp
        then has zero gradient and alpha stays at 0 (observed after a few hundred steps). Passing
        the gradient straight through, a pixel clamped onto its target still gets no push (the
        loss sees the clamped value) while one clamped away from it is pulled back.
        """
        clamped = x.clamp(0.0, 1.0)
        if self.straight_through_clamp and self.training:
            return x + (clamped - x).detach()
        return clamped

    def binary_convs(self):
        """(name, BiConv2d) for every binary convolution, in definition order."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, BiConv2d)]

    def sign_sites(self):
        """(name, threshold, convs) for every sign: the LearnableBias that shifts its input (the
        learnable threshold) and the binary convs that read its output, in definition order.
        Names are the threshold's module name (e.g. 'aspp.aspp2.1', 'backbone.feature.3.move21')."""
        sites = []
        for name, module in self.named_modules():
            if isinstance(module, BinaryBlock):
                pointwise = tuple(m for n, m in module.named_children() if n.startswith("binary_pw"))
                sites.append((f"{name}.move11", module.move11, (module.binary_3x3,)))
                sites.append((f"{name}.move21", module.move21, pointwise))
            elif isinstance(module, nn.Sequential):
                layers = list(module)
                for i in range(1, len(layers) - 1):
                    if (
                        isinstance(layers[i], BinaryActivation)
                        and isinstance(layers[i - 1], LearnableBias)
                        and isinstance(layers[i + 1], BiConv2d)
                    ):
                        sites.append((f"{name}.{i - 1}", layers[i - 1], (layers[i + 1],)))
        return sites

    def masked_convs(self):
        """(name, conv) for every conv the SAB mask gates (see SABDecoder.masked_convs)."""
        masked = {id(m) for m in self.decoder.masked_convs()}
        return [(name, m) for name, m in self.named_modules() if id(m) in masked]

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """As nn.Module.load_state_dict, ignoring the official dead `<biconv>.channel_threshold` keys
        (only where <biconv> is a BiConv2d of this model; any other extra key still fails a strict load)."""
        binary = {name for name, _ in self.binary_convs()}
        kept = {
            key: value
            for key, value in state_dict.items()
            if not (key.endswith("." + DEAD_PARAMETER) and key[: -len(DEAD_PARAMETER) - 1] in binary)
        }
        return super().load_state_dict(kept, strict=strict, assign=assign)
