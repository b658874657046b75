"""SAB decoder (Sparse-Assisted Binarization): RVM's recurrent decoder, binarized and mask-gated.

decode4 (1/16): binary ConvGRU(64) on the second half of the ASPP output (state r4), then a binary
    3x3 128->16 unit whose output (hid_s) goes through the shared project_mat: the coarse fgr_s/pha_s.
Incoherent mask M (1/16, per frame): m = [pha_s > 0], M = [|m - up(down(m))| >= 0.01].
decode3/2/1 (1/8, 1/4, 1/2): x = B3(in) * M_up + B1(in), then ConvGRU_Up on the second half.
decode0 (1/1): the same two branches, each binary conv -> BN -> ReLU -> FP conv -> BN -> ReLU.
M_up is M bilinearly doubled to each scale (mask_at). Training runs both branches densely;
the sparsity only shows in the OPs count (and in deploy kernels that skip where M_up == 0).

Everything works on frames flattened to N = B*T; only the GRUs see [B, T, ...] (shape `bt`).
Source: htqin/BiMatting `model/bidecoder.py` (BiRecurrentDecoder); RVM `model/decoder.py`.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .binarize import BiConv2d, BinaryActivation, LearnableBias
from .fixed_order import average_pool2, emit_average_pool2, emit_upsample2, upsample2
from .fixed_point import emit_wide_conv1x1, wide_conv1x1
from .gru import ConvGRU, ConvGRU_Up, emit_sab
from .units import BinarySequential, binary_conv_unit

PHA_S = "decoder.incoherent_mask.pha_s"  # the graph's name of the coarse alpha the mask thresholds


def upsample_to(x, size):
    """Bilinear resize (align_corners=False): [N, C, h, w] -> [N, C, *size]."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def mask_at(mask, doublings, size):
    """The SAB mask [N, 1, h16, w16] at a decoder scale: `doublings` bilinear x2 steps, cropped to
    `size` (the crop, like the features', where a size is not 2^k times the coarse one). The
    values are multiples of 2^-2k, exact in every runtime. [N, 1, h16, w16] -> [N, 1, *size]"""
    for _ in range(doublings):
        mask = upsample2(mask)
    return mask[..., : size[0], : size[1]]


def emit_mask_at(b, mask, doublings, like):
    """mask_at as ONNX nodes, cropped to `like`'s H, W."""
    for _ in range(doublings):
        mask = emit_upsample2(b, mask)
    return b.crop_to(mask, like)


class IncoherentMask(nn.Module):
    """pha_s [N, 1, h, w] -> M [N, 1, h, w] in {0, 1}: where [pha_s > 0] is not smooth at half scale.

    A boundary band about 2-3 coarse pixels wide. Per frame by construction (no batch mixing).
    The official code fails below h or w = 2 (a zero-size downsample); we clamp the half size to 1.
    """

    threshold = 0.01

    def forward(self, pha_s):
        h, w = pha_s.shape[-2:]
        hard = (pha_s > 0).to(pha_s.dtype)
        smooth = upsample_to(upsample_to(hard, (max(h // 2, 1), max(w // 2, 1))), (h, w))
        return ((hard - smooth).abs() >= self.threshold).to(pha_s.dtype)

    def emit_onnx(self, b, pha_s):  # as forward; the half size comes from the runtime shape
        hard = b.op("Cast", [b.op("Greater", [pha_s, b.const(0.0, np.float32)])], to=b.FLOAT)
        size = b.shape_slice(pha_s, 2, 4)
        half = b.op("Max", [b.op("Div", [size, b.const([2, 2])]), b.const([1, 1])])
        smooth = b.resize_to(b.resize_to(hard, half), size)
        far = b.op("GreaterOrEqual", [b.op("Abs", [b.op("Sub", [hard, smooth])]), b.const(self.threshold, np.float32)])
        return b.op("Cast", [far], to=b.FLOAT)


class ImagePyramid(nn.Module):
    """s0 [N, 3, H, W] -> s1, s2, s3 at 1/2, 1/4, 1/8 (2x2 average, ceil_mode, no padded counts)."""

    def forward(self, s0):
        s1 = average_pool2(s0)
        s2 = average_pool2(s1)
        return s1, s2, average_pool2(s2)

    def emit_onnx(self, b, s0):  # as forward
        s1 = emit_average_pool2(b, s0)
        s2 = emit_average_pool2(b, s1)
        return s1, s2, emit_average_pool2(b, s2)


class BottleneckBlock(nn.Module):
    """decode4: x [N, C, h, w], r [B, C/2, h, w] -> (x [N, C, h, w], r, hid_s [N, 16, h, w])."""

    def __init__(self, channels, coarse_channels=16):
        super().__init__()
        self.channels = channels
        self.gru = ConvGRU(channels // 2)
        self.conv = binary_conv_unit(channels, coarse_channels, 3)

    def forward(self, x, r, bt):
        a, b = x.split(self.channels // 2, dim=1)
        b, r = self.gru(b.unflatten(0, bt), r)  # [B, T, C/2, h, w]
        x = torch.cat([a, b.flatten(0, 1)], dim=1)  # [N, C, h, w]
        return x, r, self.conv(x)

    def emit_onnx(self, b, x, r, out):  # as forward, one frame per batch entry; new state named `out`
        a, rest = b.split(x, [self.channels // 2] * 2)
        r = self.gru.emit_onnx(b, rest, r, out)
        x = b.op("Concat", [a, r], axis=1)
        return x, r, b.mark(b.module_name(self.conv), b.sequential(self.conv, x))


class UpsamplingBlock(nn.Module):
    """decode3/2/1: x [N, in, h, w], skip f [N, skip, H, W], image s [N, 3, H, W], r [B, out/2, H, W],
    mask [N, 1, h16, w16] -> (x [N, out, H, W], r [B, out/2, H, W]), with H = ceil(2h) cropped to s."""

    def __init__(self, in_channels, skip_channels, src_channels, out_channels, mask_doublings):
        super().__init__()
        self.out_channels, self.mask_doublings = out_channels, mask_doublings
        concat = in_channels + skip_channels + src_channels
        self.conv = binary_conv_unit(concat, out_channels, 3)  # masked branch
        self.conv_1x1 = binary_conv_unit(concat, out_channels, 1)  # dense branch
        self.gru = ConvGRU_Up(out_channels // 2)

    def forward(self, x, f, s, r, mask, bt):
        size = s.shape[-2:]
        x = upsample2(x)
        x = torch.cat([x[..., : size[0], : size[1]], f, s], dim=1)  # [N, in+skip+3, H, W]
        mask_up = mask_at(mask, self.mask_doublings, size)  # [N, 1, H, W], soft
        x = self.conv(x) * mask_up + self.conv_1x1(x)  # [N, out, H, W]
        a, b = x.split(self.out_channels // 2, dim=1)
        b, r = self.gru(b.unflatten(0, bt), r, mask_up.unflatten(0, bt))
        return torch.cat([a, b.flatten(0, 1)], dim=1), r

    def emit_onnx(self, b, x, f, s, r, mask, out):  # as forward; new state named `out`
        x = b.op("Concat", [b.crop_to(emit_upsample2(b, x), s), f, s], axis=1)
        mask_up = emit_mask_at(b, mask, self.mask_doublings, s)
        x = emit_sab(b, self.conv, self.conv_1x1, x, mask_up)
        a, rest = b.split(x, [self.out_channels // 2] * 2)
        r = self.gru.emit_onnx(b, rest, r, mask_up, out)
        return b.mark(b.module_name(self), b.op("Concat", [a, r], axis=1)), r


def _output_branch(in_channels, out_channels, kernel_size):
    """0 bias -> 1 sign -> 2 BiConv -> 3 BN -> 4 ReLU -> 5 FP conv -> 6 BN -> 7 ReLU (official indices)."""
    padding = kernel_size // 2
    return BinarySequential(
        LearnableBias(in_channels),
        BinaryActivation(),
        BiConv2d(in_channels, out_channels, kernel_size, 1, padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size, 1, padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class OutputBlock(nn.Module):
    """decode0: x [N, in, h, w], s [N, 3, H, W], mask [N, 1, h16, w16] -> hid [N, out, H, W]."""

    def __init__(self, in_channels, src_channels, out_channels, mask_doublings=4):
        super().__init__()
        self.mask_doublings = mask_doublings
        self.conv = _output_branch(in_channels + src_channels, out_channels, 3)  # masked branch
        self.conv_1x1 = _output_branch(in_channels + src_channels, out_channels, 1)  # dense branch

    def forward(self, x, s, mask):
        size = s.shape[-2:]
        x = upsample2(x)
        x = torch.cat([x[..., : size[0], : size[1]], s], dim=1)  # [N, in+3, H, W]
        # The official 4-D path skipped the mask here; both paths use it in this implementation.
        return self.conv(x) * mask_at(mask, self.mask_doublings, size) + self.conv_1x1(x)

    def emit_onnx(self, b, x, s, mask):  # as forward; the FP 3x3 after the masked binary one widens its mask
        x = b.op("Concat", [b.crop_to(emit_upsample2(b, x), s), s], axis=1)
        hid = emit_sab(b, self.conv, self.conv_1x1, x, emit_mask_at(b, mask, self.mask_doublings, s))
        return b.mark(b.module_name(self), hid)


class Projection(nn.Module):
    """Full-precision 1x1 head: [N, in, H, W] -> [N, out, H, W]. Eval mode sums in float64 and
    rounds once (fixed_point.wide_conv1x1): pha_s > 0 and the refiner's signs read its output."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        return self.conv(x) if self.training else wide_conv1x1(self.conv, x)

    def emit_onnx(self, b, x):  # as forward in eval mode
        return emit_wide_conv1x1(b, self.conv, x)


class SABDecoder(nn.Module):
    """Features of N = B*T frames -> hidden [N, 16, H, W], coarse head output [N, 4, h, w], states.

    feature_channels [16, 32, 64, 128] (f1, f2, f3, ASPP), decoder_channels [80, 40, 32, 16].
    """

    def __init__(self, feature_channels=(16, 32, 64, 128), decoder_channels=(80, 40, 32, 16)):
        super().__init__()
        f1_ch, f2_ch, f3_ch, f4_ch = feature_channels
        d3_ch, d2_ch, d1_ch, d0_ch = decoder_channels
        self.pyramid = ImagePyramid()
        self.incoherent_mask = IncoherentMask()
        self.decode4 = BottleneckBlock(f4_ch, coarse_channels=d0_ch)
        self.decode3 = UpsamplingBlock(f4_ch, f3_ch, 3, d3_ch, 1)  # 128+64+3 = 195 -> 80, mask 1/16 -> 1/8
        self.decode2 = UpsamplingBlock(d3_ch, f2_ch, 3, d2_ch, 2)  # 80+32+3 = 115 -> 40
        self.decode1 = UpsamplingBlock(d2_ch, f1_ch, 3, d1_ch, 3)  # 40+16+3 = 59 -> 32
        self.decode0 = OutputBlock(d1_ch, 3, d0_ch, 4)  # 32+3 = 35 -> 16

    def forward(self, s0, f1, f2, f3, f4, r1, r2, r3, r4, coarse_head, bt):
        """s0 [N, 3, H, W] (the downsampled source), f1..f4 from encoder + ASPP, r_k [B, C_k, ., .] or
        None, coarse_head: the shared project_mat, bt = (B, T).
        Returns hid [N, 16, H, W], coarse [N, 4, H/16, W/16] (fgr residual, pha logits), r1..r4."""
        s1, s2, s3 = self.pyramid(s0)
        x4, r4, hid_s = self.decode4(f4, r4, bt)  # [N, 128, H/16, W/16]
        coarse = coarse_head(hid_s)  # [N, 4, H/16, W/16]
        mask = self.incoherent_mask(coarse[:, 3:].clamp(0.0, 1.0))  # [N, 1, H/16, W/16]
        x3, r3 = self.decode3(x4, f3, s3, r3, mask, bt)  # [N, 80, H/8, W/8]
        x2, r2 = self.decode2(x3, f2, s2, r2, mask, bt)  # [N, 40, H/4, W/4]
        x1, r1 = self.decode1(x2, f1, s1, r1, mask, bt)  # [N, 32, H/2, W/2]
        hid = self.decode0(x1, s0, mask)  # [N, 16, H, W]
        return hid, coarse, r1, r2, r3, r4

    @property
    def state_channels(self):
        """(C1, C2, C3, C4) of r1..r4: the GRUs run on the second half of decode1..4's channels."""
        return (
            self.decode1.out_channels // 2,
            self.decode2.out_channels // 2,
            self.decode3.out_channels // 2,
            self.decode4.channels // 2,
        )

    def emit_onnx(self, b, s0, f1, f2, f3, f4, states, outs, coarse_head):
        """As forward, one frame per batch entry (ONNX has no time axis: the caller feeds the states
        back). states: r1..r4 values, outs: names for r1o..r4o -> hid [N, 16, H, W], [r1o..r4o].
        The coarse head output itself is not returned: the graph's outputs are RVM's."""
        r1, r2, r3, r4 = states
        s1, s2, s3 = self.pyramid.emit_onnx(b, s0)
        with b.scope("decode4"):
            x4, r4, hid_s = self.decode4.emit_onnx(b, f4, r4, outs[3])  # [N, 128, H/16, W/16]
        with b.scope("incoherent_mask"):
            coarse = coarse_head.emit_onnx(b, hid_s)  # [N, 4, H/16, W/16]
            pha_s = b.clip(b.slice(coarse, [3], [4], [1]), 0.0, 1.0, out=PHA_S)
            mask = b.mark(b.module_name(self.incoherent_mask), self.incoherent_mask.emit_onnx(b, pha_s))
        with b.scope("decode3"):
            x3, r3 = self.decode3.emit_onnx(b, x4, f3, s3, r3, mask, outs[2])  # [N, 80, H/8, W/8]
        with b.scope("decode2"):
            x2, r2 = self.decode2.emit_onnx(b, x3, f2, s2, r2, mask, outs[1])  # [N, 40, H/4, W/4]
        with b.scope("decode1"):
            x1, r1 = self.decode1.emit_onnx(b, x2, f1, s1, r1, mask, outs[0])  # [N, 32, H/2, W/2]
        with b.scope("decode0"):
            hid = self.decode0.emit_onnx(b, x1, s0, mask)  # [N, 16, H, W]
        return hid, [r1, r2, r3, r4]

    def masked_convs(self):
        """The convs whose outputs the SAB mask gates: a sparse kernel computes them only where
        M_up != 0 (the 3x3 branches, the ConvGRU_Up 3x3 gates, and decode0's FP 3x3)."""
        convs = []
        for block in (self.decode3, self.decode2, self.decode1):
            convs += [block.conv[2], block.gru.ih[2], block.gru.hh[2]]
        return convs + [self.decode0.conv[2], self.decode0.conv[5]]
