"""BiMobileNet: BiMatting's binary encoder (ReActNet-A style with shrinkable blocks and dense skips).

Blocks: entry 0 = FP stem (stride 2), then three stages of dense triples (the first triple of each
stage holds its stride-2 block in the middle), then two tail blocks; output stride 16.
`triples` gives the triples per stage: the official (1, 2, 2) makes 17 binary blocks with stride
2 at blocks 2, 5, 11 and these widths (any others whose neighbours keep the ratios BinaryBlock
accepts will do; one per block):
    [16] + [32, 64, 32] + [64, 128, 64] * 2 + [128, 256, 128] * 2 + [256] + [1024]
Taps: f1 = stem (16 @1/2), f2 = stage 1's end (block 3, 32 @1/4), f3 = stage 2's end (block 9,
64 @1/8), f4 = the last block (17, 1024 @1/16).
Names (`feature.N.move11`, `binary_3x3`, `bn2_1`, ...) equal the official state_dict keys.
Source: htqin/BiMatting `model/mobilenet.py` (structure and numbers; code written anew).
"""

import numpy as np
import torch
from torch import nn

from .binarize import BiConv2d, BinaryActivation, LearnableBias, binary_conv_bn, bn_affine, emit_rprelu, rprelu
from .fixed_order import average_pool2, emit_average_pool2

TRIPLES = (1, 2, 2)  # dense triples in the 1/4, 1/8 and 1/16 stages
STAGE_TRIPLE_WIDTHS = ([32, 64, 32], [64, 128, 64], [128, 256, 128])
STAGE_WIDTHS = [16] + [32, 64, 32] + [64, 128, 64] * 2 + [128, 256, 128] * 2 + [256] + [1024]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def stage_widths(triples=TRIPLES):
    """The official widths pattern for `triples` (STAGE_WIDTHS for the official (1, 2, 2))."""
    widths = [16]
    for count, triple in zip(triples, STAGE_TRIPLE_WIDTHS):
        widths += triple * int(count)
    return widths + [256, 1024]


def layout(triples=TRIPLES):
    """(stride-2 block indices, {first: last} of each dense triple, {block index: tap name})."""
    if len(triples) != 3 or min(int(t) for t in triples) < 1:
        raise ValueError(f"BiMobileNet takes 3 stages of at least one triple each, got {list(triples)}")
    strides, dense, taps, index = [], {}, {0: "f1"}, 1
    for stage, count in enumerate(triples):
        strides.append(index + 1)  # the middle block of the stage's first triple
        for _ in range(int(count)):
            dense[index] = index + 2
            index += 3
        if stage < 2:
            taps[index - 1] = ("f2", "f3")[stage]
    taps[index + 1] = "f4"  # after the two tail blocks
    return tuple(strides), dense, taps


# The image on an integer grid in eval mode: n = round(x * INPUT_GRID). 8-bit pixels are k/255,
# and a bilinear downsample by 1/2^j (RVM's ratios 1/2, 1/4, ...) averages four of them, a multiple
# of 1/1020 up to float rounding, so n is the same integer in every runtime whatever its resize does.
INPUT_GRID = 1020.0
STEM_WEIGHT_LIMIT = 511  # |integer weight|: 27 taps * 511 * 1020 < 2^24, so every partial sum is exact


def snap_to_grid(x):
    """x -> round(x * INPUT_GRID) / INPUT_GRID (eval mode's image; k/255 pixels are kept as they are)."""
    return torch.round(x * INPUT_GRID) / INPUT_GRID


class Stem(nn.Module):
    """Full-precision conv3x3 stride 2 + BN, no activation: [N,3,H,W] -> [N,16,H/2,W/2].

    Training: BN(conv((x - mean) / std)). Eval: an integer-exact conv of the gridded image,
        y = conv(n - M, W_q) + c,   n = round(x * INPUT_GRID),  M = round(mean * INPUT_GRID)
    with normalisation and BN folded into W_q = w_int * 2^-e (w_int integers of at most
    STEM_WEIGHT_LIMIT, e per output channel) and c. Every product and partial sum is then an
    exact float32, so all runtimes give the same bits whatever order they sum in; only `+ c`
    rounds. The weights lose at most 1/1022 of their largest value per channel. Subtracting the
    integer mean M first keeps training's zero padding (a padded tap is the mean colour).
    """

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)

    def forward(self, x, mean, std):
        # x: the image in [0, 1] (not normalised)
        if self.training:
            return self.bn1(self.conv1((x - mean) / std))
        weight, bias, centre = (torch.from_numpy(v).to(x.device) for v in self.integer_weights(mean, std))
        n = torch.round(x * INPUT_GRID) - centre.view(1, -1, 1, 1)
        # conv1 with the integer-grid weights, called as the module so that hooks still see it
        return torch.func.functional_call(self.conv1, {"weight": weight}, (n,)) + bias.view(1, -1, 1, 1)

    def integer_weights(self, mean, std):
        """(W_q float32 [O, C, 3, 3], exact multiples of a power of 2; c float32 [O]; M float32 [C]) of eval mode."""
        a, b = bn_affine(self.bn1)
        mean = mean.detach().cpu().numpy().reshape(-1).astype(np.float64)
        std = std.detach().cpu().numpy().reshape(-1).astype(np.float64)
        weight = self.conv1.weight.detach().cpu().numpy().astype(np.float64)
        real = weight * a[:, None, None, None] / (std[None, :, None, None] * INPUT_GRID)  # per unit of n
        largest = np.maximum(np.abs(real).max(axis=(1, 2, 3)), np.finfo(np.float64).tiny)
        step = 2.0 ** np.ceil(np.log2(largest / STEM_WEIGHT_LIMIT))[:, None, None, None]
        quantized = np.round(real / step) * step
        # x - mean = (n - M + (M - INPUT_GRID * mean)) / INPUT_GRID: the last term goes into c
        centre = np.round(mean * INPUT_GRID)
        offset = (centre - INPUT_GRID * mean)[None, :, None, None]
        bias = b + (quantized * offset).sum(axis=(1, 2, 3))
        return quantized.astype(np.float32), bias.astype(np.float32), centre.astype(np.float32)

    def emit_onnx(self, b, x, mean, std):  # as forward in eval mode
        def make():
            weight, bias, centre = self.integer_weights(mean, std)
            name = b.module_name(self.conv1)  # the float conv it computes, its weights on the integer grid
            return (
                b.initializer(weight, f"{name}.weight"),
                b.channel_vector(bias, f"{name}.folded_bias"),
                b.channel_vector(centre, f"{name}.input_centre"),
            )

        weight, bias, centre = b.cached(("stem", id(self)), make)
        n = b.op("Sub", [b.op("Round", [b.op("Mul", [x, b.const(INPUT_GRID, np.float32)])]), centre])
        conv = b.op(
            "Conv",
            [n, weight],
            group=1,
            kernel_shape=[3, 3],
            strides=list(self.conv1.stride),
            pads=[self.conv1.padding[0], self.conv1.padding[1]] * 2,
            dilations=[1, 1],
        )
        return b.op("Add", [conv, bias])


class BinaryBlock(nn.Module):
    """ReActNet block: binary 3x3 (in->in, stride s) then binary 1x1 expansion/shrink (in->out).

    Step 1: o1 = RPReLU(BN(BiConv3x3(sign(x + b11))) + shortcut(x)), shortcut = x or AvgPool2(x)
    Step 2 by width:  out = in   o2 = BN(BiConv1x1(u)) + o1
                      out = k*in k parallel in->in 1x1 convs, each BN(.) + o1, concatenated (k = 2, 4)
                      out = in/2 o2 = BN(BiConv1x1_{in->in/2}(u)) + (o1[:in/2] + o1[in/2:]) / 2
              with u = sign(o1 + b21); output RPReLU(o2).
    [N, in, H, W] -> [N, out, H/s, W/s]
    """

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.move11 = LearnableBias(in_channels)
        self.binary_3x3 = BiConv2d(in_channels, in_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.move12 = LearnableBias(in_channels)
        self.prelu1 = nn.PReLU(in_channels)
        self.move13 = LearnableBias(in_channels)
        self.move21 = LearnableBias(in_channels)
        if out_channels == in_channels:
            self.binary_pw = BiConv2d(in_channels, out_channels, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(out_channels)
        elif out_channels in (2 * in_channels, 4 * in_channels):
            for k in range(1, out_channels // in_channels + 1):  # binary_pw_down1..k, bn2_1..k
                self.add_module(f"binary_pw_down{k}", BiConv2d(in_channels, in_channels, 1, bias=False))
            for k in range(1, out_channels // in_channels + 1):
                self.add_module(f"bn2_{k}", nn.BatchNorm2d(in_channels))
        elif 2 * out_channels == in_channels:  # shrinkable
            self.binary_pw_down1 = BiConv2d(in_channels, out_channels, 1, bias=False)
            self.bn2_1 = nn.BatchNorm2d(out_channels)
        else:
            raise ValueError(f"BinaryBlock widths {in_channels}->{out_channels}: expected out = in, 2*in, 4*in or in/2")
        self.move22 = LearnableBias(out_channels)
        self.prelu2 = nn.PReLU(out_channels)
        self.move23 = LearnableBias(out_channels)
        self.sign = BinaryActivation()

    def forward(self, x):
        # [N, in, H, W] -> [N, in, H/s, W/s]: binary 3x3 with identity (or pooled) shortcut
        shortcut = average_pool2(x) if self.stride == 2 else x
        o1 = binary_conv_bn(self.binary_3x3, self.bn1, self.sign(self.move11(x))) + shortcut
        o1 = rprelu(o1, self.move12, self.prelu1, self.move13)

        # [N, in, H', W'] -> [N, out, H', W']: binary 1x1, residual o1 (repeated or halved)
        u = self.sign(self.move21(o1))
        if self.out_channels == self.in_channels:
            o2 = binary_conv_bn(self.binary_pw, self.bn2, u) + o1
        elif self.out_channels > self.in_channels:
            parts = self.out_channels // self.in_channels
            o2 = torch.cat(
                [
                    binary_conv_bn(getattr(self, f"binary_pw_down{k}"), getattr(self, f"bn2_{k}"), u) + o1
                    for k in range(1, parts + 1)
                ],
                dim=1,
            )
        else:
            first, second = o1.split(self.out_channels, dim=1)
            o2 = binary_conv_bn(self.binary_pw_down1, self.bn2_1, u) + (first + second) / 2
        return rprelu(o2, self.move22, self.prelu2, self.move23)

    def emit_onnx(self, b, x):
        """As forward; each sign + bit-packing is one node, read by every conv of its step."""
        shortcut = emit_average_pool2(b, x) if self.stride == 2 else x
        packed = b.binarize_pack(x, shift=self.move11)
        o1 = b.op("Add", [b.binary_conv(self.binary_3x3, packed, bn=self.bn1), shortcut])
        o1 = emit_rprelu(b, o1, self.move12, self.prelu1, self.move13)

        u = b.binarize_pack(o1, shift=self.move21)
        if self.out_channels == self.in_channels:
            o2 = b.op("Add", [b.binary_conv(self.binary_pw, u, bn=self.bn2), o1])
        elif self.out_channels > self.in_channels:
            o2 = b.op(
                "Concat",
                [
                    b.op(
                        "Add", [b.binary_conv(getattr(self, f"binary_pw_down{k}"), u, bn=getattr(self, f"bn2_{k}")), o1]
                    )
                    for k in range(1, self.out_channels // self.in_channels + 1)
                ],
                axis=1,
            )
        else:
            first, second = b.split(o1, [self.out_channels] * 2)
            halved = b.op("Div", [b.op("Add", [first, second]), b.const(2.0, np.float32)])
            o2 = b.op("Add", [b.binary_conv(self.binary_pw_down1, u, bn=self.bn2_1), halved])
        return emit_rprelu(b, o2, self.move22, self.prelu2, self.move23)


class BiMobileNet(nn.Module):
    """[N, 3, H, W] RGB in [0, 1] -> f1 [N,16,H/2,W/2], f2 [N,32,H/4,.], f3 [N,64,H/8,.], f4 [N,1024,H/16,.]
    (channels of the default widths; `tap_channels` gives them for any)

    Sizes round up at each halving (conv padding 1, pooling with ceil_mode).
    """

    def __init__(self, widths=None, triples=TRIPLES):
        super().__init__()
        self.triples = tuple(int(t) for t in triples)
        strides, self.dense, self.taps = layout(self.triples)
        widths = stage_widths(self.triples) if widths is None else widths
        blocks = 3 + 3 * sum(self.triples)
        if len(widths) != blocks:
            raise ValueError(
                f"BiMobileNet with triples {list(self.triples)} takes {blocks} widths "
                f"(stem + {blocks - 1} blocks), got {len(widths)}"
            )
        self.widths = tuple(int(w) for w in widths)
        self.feature = nn.ModuleList([Stem(3, self.widths[0])])
        for i in range(1, len(self.widths)):
            stride = 2 if i in strides else 1
            self.feature.append(BinaryBlock(self.widths[i - 1], self.widths[i], stride))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def tap_channels(self):
        """{"f1": C1, ..., "f4": C4}: the channels of the four features."""
        return {name: self.widths[index] for index, name in self.taps.items()}

    def forward(self, x):
        saved, saved_until = None, None
        taps = {}
        for i, block in enumerate(self.feature):
            # the stem normalises (ImageNet mean and std, as the official encoder)
            x = block(x, self.mean, self.std) if i == 0 else block(x)
            if i in self.dense:
                saved, saved_until = x, self.dense[i]
            elif i == saved_until:
                # Literal official rule: the dense skip is added only when the triple changed the
                # spatial size (so the repeated triples of a stage get none); compared on height only, as there.
                if saved.shape[-2] != x.shape[-2]:
                    x = x + average_pool2(saved)
                saved, saved_until = None, None
            if i in self.taps:
                taps[self.taps[i]] = x
        return taps["f1"], taps["f2"], taps["f3"], taps["f4"]

    def emit_onnx(self, b, x):
        """As forward (`b`: export's layers.Builder); marks each block's own output for per-block checks."""
        saved, saved_until = None, None
        taps = {}
        for i, block in enumerate(self.feature):
            with b.scope(f"feature.{i}"):
                x = block.emit_onnx(b, x, self.mean, self.std) if i == 0 else block.emit_onnx(b, x)
                x = b.mark(b.module_name(block), x)  # before a dense skip
                if i in self.dense:
                    saved, saved_until = x, self.dense[i]
                elif i == saved_until:
                    # forward's size test, decided from the structure: a stride-2 block halves
                    # every input of at least 2 px (the network needs 16)
                    if any(self.feature[k].stride == 2 for k in range(saved_until - 2, saved_until + 1)):
                        x = b.op("Add", [x, emit_average_pool2(b, saved)])
                    saved, saved_until = None, None
            if i in self.taps:
                taps[self.taps[i]] = x
        return taps["f1"], taps["f2"], taps["f3"], taps["f4"]
