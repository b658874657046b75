"""RVM's recurrent decoder (Lin et al., "Robust High-Resolution Video Matting with Temporal
Guidance", WACV 2022, section 3.1): bottleneck ConvGRU at 1/16, three upsampling blocks with
ConvGRUs at 1/8, 1/4, 1/2, and an output block at full (downsampled-input) resolution.

All tensors are [N, C, H, W] with N = B*T; `frames` (T) is only passed on to the ConvGRUs.
"""

import torch
from torch import nn
from torch.nn import functional as F

from bimatting.models.rvm.conv_gru import ConvGRU


def upsample_to(x, like):
    """Bilinear x2 (align_corners=False), then crop to `like`'s size (odd sizes round up below)."""
    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    return x[:, :, : like.shape[2], : like.shape[3]]


def conv_bn_relu(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class BottleneckBlock(nn.Module):
    """ConvGRU on the second half of the channels, the first half passes through."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        self.gru = ConvGRU(channels // 2)

    def forward(self, x, r, frames):  # [N,C,h,w] -> [N,C,h,w], r [B,C/2,h,w]
        a, b = x.split(self.channels // 2, dim=1)
        b, r = self.gru(b, r, frames)
        return torch.cat([a, b], dim=1), r

    def emit_onnx(self, b, x, r, out):  # as forward; the new state is named `out`
        a, rest = b.split(x, [self.channels // 2] * 2)
        r = self.gru.emit_onnx(b, rest, r, out)
        return b.op("Concat", [a, r], axis=1), r


class UpsamplingBlock(nn.Module):
    """up x2 -> concat [x, skip feature, image pyramid level] -> conv3x3-BN-ReLU -> half ConvGRU."""

    def __init__(self, in_channels, skip_channels, src_channels, out_channels):
        super().__init__()
        self.out_channels = out_channels
        self.conv = nn.Sequential(*conv_bn_relu(in_channels + skip_channels + src_channels, out_channels))
        self.gru = ConvGRU(out_channels // 2)

    def forward(self, x, f, s, r, frames):  # [N,Cin,h,w] -> [N,Cout,2h,2w]
        x = upsample_to(x, s)  # [N,Cin,H,W], H,W = size of f and s
        x = self.conv(torch.cat([x, f, s], dim=1))  # [N,Cout,H,W]
        a, b = x.split(self.out_channels // 2, dim=1)
        b, r = self.gru(b, r, frames)  # r [B,Cout/2,H,W]
        return torch.cat([a, b], dim=1), r

    def emit_onnx(self, b, x, f, s, r, out):  # as forward; the new state is named `out`
        x = b.op("Concat", [b.upsample2_crop(x, s), f, s], axis=1)
        x = b.sequential(self.conv, x)
        a, rest = b.split(x, [self.out_channels // 2] * 2)
        r = self.gru.emit_onnx(b, rest, r, out)
        return b.op("Concat", [a, r], axis=1), r


class OutputBlock(nn.Module):
    """up x2 -> concat [x, image] -> two conv3x3-BN-ReLU; gives the 16-channel hidden feature."""

    def __init__(self, in_channels, src_channels, out_channels):
        super().__init__()
        self.conv = nn.Sequential(
            *conv_bn_relu(in_channels + src_channels, out_channels),
            *conv_bn_relu(out_channels, out_channels),
        )

    def forward(self, x, s):  # [N,Cin,h,w] -> [N,Cout,H,W]
        x = upsample_to(x, s)
        return self.conv(torch.cat([x, s], dim=1))

    def emit_onnx(self, b, x, s):  # as forward
        return b.sequential(self.conv, b.op("Concat", [b.upsample2_crop(x, s), s], axis=1))


class RecurrentDecoder(nn.Module):
    """(s0 [N,3,H,W], f1..f4 at 1/2..1/16, r1..r4) -> hid [N,16,H,W], r1..r4.

    States: r1 [B,16,H/2,W/2], r2 [B,20,H/4,W/4], r3 [B,40,H/8,W/8], r4 [B,64,H/16,W/16].
    """

    def __init__(self, feature_channels=(16, 24, 40, 128), decoder_channels=(80, 40, 32, 16)):
        super().__init__()
        self.avgpool = nn.AvgPool2d(2, 2, count_include_pad=False, ceil_mode=True)
        self.decode4 = BottleneckBlock(feature_channels[3])
        self.decode3 = UpsamplingBlock(feature_channels[3], feature_channels[2], 3, decoder_channels[0])
        self.decode2 = UpsamplingBlock(decoder_channels[0], feature_channels[1], 3, decoder_channels[1])
        self.decode1 = UpsamplingBlock(decoder_channels[1], feature_channels[0], 3, decoder_channels[2])
        self.decode0 = OutputBlock(decoder_channels[2], 3, decoder_channels[3])

    def forward(self, s0, f1, f2, f3, f4, r1, r2, r3, r4, frames=1):
        s1 = self.avgpool(s0)  # [N,3,H/2,W/2] image pyramid
        s2 = self.avgpool(s1)  # [N,3,H/4,W/4]
        s3 = self.avgpool(s2)  # [N,3,H/8,W/8]
        x4, r4 = self.decode4(f4, r4, frames)  # [N,128,H/16,W/16]
        x3, r3 = self.decode3(x4, f3, s3, r3, frames)  # [N,80,H/8,W/8]
        x2, r2 = self.decode2(x3, f2, s2, r2, frames)  # [N,40,H/4,W/4]
        x1, r1 = self.decode1(x2, f1, s1, r1, frames)  # [N,32,H/2,W/2]
        x0 = self.decode0(x1, s0)  # [N,16,H,W]
        return x0, r1, r2, r3, r4

    @property
    def state_channels(self):
        """(C1, C2, C3, C4) of r1..r4: the GRUs run on the second half of decode1..4's channels."""
        return (
            self.decode1.out_channels // 2,
            self.decode2.out_channels // 2,
            self.decode3.out_channels // 2,
            self.decode4.channels // 2,
        )

    def emit_onnx(self, b, s0, f1, f2, f3, f4, states, outs):
        """As forward, for one frame per batch entry (ONNX has no time axis: the caller feeds the
        states back). states: r1..r4 values, outs: names of r1o..r4o -> hid, [r1o..r4o]."""
        r1, r2, r3, r4 = states
        s1 = b.avg_pool2(s0)  # image pyramid, as self.avgpool
        s2 = b.avg_pool2(s1)
        s3 = b.avg_pool2(s2)
        with b.scope("decode4"):
            x4, r4 = self.decode4.emit_onnx(b, f4, r4, outs[3])
        with b.scope("decode3"):
            x3, r3 = self.decode3.emit_onnx(b, x4, f3, s3, r3, outs[2])
        with b.scope("decode2"):
            x2, r2 = self.decode2.emit_onnx(b, x3, f2, s2, r2, outs[1])
        with b.scope("decode1"):
            x1, r1 = self.decode1.emit_onnx(b, x2, f1, s1, r1, outs[0])
        with b.scope("decode0"):
            x0 = self.decode0.emit_onnx(b, x1, s0)
        return x0, [r1, r2, r3, r4]
