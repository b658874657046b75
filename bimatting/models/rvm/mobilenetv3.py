"""MobileNetV3-Large encoder of RVM, written without torchvision.

Architecture facts (block table, SE widths, BN eps 1e-3 / momentum 0.01, dilated last stage)
follow "Searching for MobileNetV3" (Howard et al., ICCV 2019, table 1) as implemented by
torchvision's `mobilenet_v3_large(dilated=True)`, which RVM (Lin et al., WACV 2022) uses as its
backbone. Module names reproduce torchvision's state_dict layout
(`features.N.block.M.{0,1}`, SE as `block.2.fc1/fc2`) so official RVM checkpoints load as-is.
"""

import torch
from torch import nn
from torch.nn import functional as F

# torchvision's MobileNetV3 BatchNorm settings (differ from PyTorch's defaults 1e-5 / 0.1).
BACKBONE_BN_EPS = 1e-3
BACKBONE_BN_MOMENTUM = 0.01

# ImageNet statistics the backbone was pretrained with; RVM normalises inside forward.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# One row per inverted-residual block (features.1 .. features.15):
# (kernel, expanded channels, out channels, squeeze-excite, activation, stride, dilation).
# The last three blocks are dilated (stride 1, dilation 2) so the output stride is 16, not 32.
LARGE_BLOCKS = (
    (3, 16, 16, False, "relu", 1, 1),
    (3, 64, 24, False, "relu", 2, 1),
    (3, 72, 24, False, "relu", 1, 1),
    (5, 72, 40, True, "relu", 2, 1),
    (5, 120, 40, True, "relu", 1, 1),
    (5, 120, 40, True, "relu", 1, 1),
    (3, 240, 80, False, "hardswish", 2, 1),
    (3, 200, 80, False, "hardswish", 1, 1),
    (3, 184, 80, False, "hardswish", 1, 1),
    (3, 184, 80, False, "hardswish", 1, 1),
    (3, 480, 112, True, "hardswish", 1, 1),
    (3, 672, 112, True, "hardswish", 1, 1),
    (5, 672, 160, True, "hardswish", 1, 2),  # stride 2 in the classifier net, dilated here
    (5, 960, 160, True, "hardswish", 1, 2),
    (5, 960, 160, True, "hardswish", 1, 2),
)
STEM_CHANNELS = 16
LAST_CHANNELS = 960

# Encoder taps: features[i] outputs returned as f1..f4 (16 @1/2, 24 @1/4, 40 @1/8, 960 @1/16).
TAPS = (1, 3, 6, 16)


def make_divisible(value, divisor=8):
    """Round to the nearest multiple of `divisor`, never more than 10% below `value` (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def activation(name):
    return {"relu": nn.ReLU(inplace=True), "hardswish": nn.Hardswish(inplace=True)}[name]


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional activation; children named 0, 1, 2."""

    def __init__(self, cin, cout, kernel, stride=1, dilation=1, groups=1, act=None):
        padding = (kernel - 1) // 2 * dilation
        layers = [
            nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=BACKBONE_BN_EPS, momentum=BACKBONE_BN_MOMENTUM),
        ]
        if act is not None:
            layers.append(activation(act))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gate: x * hardsigmoid(fc2(relu(fc1(GAP(x)))))."""

    def __init__(self, channels, squeeze_channels):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x):  # [N,C,H,W] -> [N,C,H,W]
        scale = F.adaptive_avg_pool2d(x, 1)  # [N,C,1,1]
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(scale))))
        return x * scale

    def emit_onnx(self, b, x):  # as forward
        scale = b.op("GlobalAveragePool", [x])
        scale = b.op("Relu", [b.conv(self.fc1, scale)])
        scale = b.op("HardSigmoid", [b.conv(self.fc2, scale)], alpha=1.0 / 6.0, beta=0.5)
        return b.op("Mul", [x, scale])


class InvertedResidual(nn.Module):
    """expand 1x1 -> depthwise kxk -> (SE) -> project 1x1, residual when shape is kept."""

    def __init__(self, cin, kernel, expanded, cout, use_se, act, stride, dilation):
        super().__init__()
        self.use_residual = stride == 1 and cin == cout
        layers = []
        if expanded != cin:
            layers.append(ConvBNAct(cin, expanded, 1, act=act))
        layers.append(ConvBNAct(expanded, expanded, kernel, stride, dilation, groups=expanded, act=act))
        if use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4)))
        layers.append(ConvBNAct(expanded, cout, 1))
        self.block = nn.Sequential(*layers)

    def forward(self, x):  # [N,Cin,H,W] -> [N,Cout,H/s,W/s]
        out = self.block(x)
        return out + x if self.use_residual else out

    def emit_onnx(self, b, x):  # as forward
        out = b.sequential(self.block, x)
        return b.op("Add", [out, x]) if self.use_residual else out


class MobileNetV3LargeEncoder(nn.Module):
    """[N,3,H,W] RGB in [0,1] -> f1 [N,16,H/2,W/2], f2 [N,24,H/4,W/4], f3 [N,40,H/8,W/8],
    f4 [N,960,H/16,W/16] (sizes rounded up at each stride-2 step)."""

    def __init__(self):
        super().__init__()
        layers = [ConvBNAct(3, STEM_CHANNELS, 3, stride=2, act="hardswish")]
        cin = STEM_CHANNELS
        for kernel, expanded, cout, use_se, act, stride, dilation in LARGE_BLOCKS:
            layers.append(InvertedResidual(cin, kernel, expanded, cout, use_se, act, stride, dilation))
            cin = cout
        layers.append(ConvBNAct(cin, LAST_CHANNELS, 1, act="hardswish"))
        self.features = nn.Sequential(*layers)
        # Not part of the state_dict (official checkpoints have no such entries).
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._init_weights()

    def _init_weights(self):
        # torchvision's MobileNetV3 initialisation (used when no ImageNet weights are loaded).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x):  # [N,3,H,W] -> (f1, f2, f3, f4)
        x = (x - self.mean) / self.std
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAPS:
                taps.append(x)
        return taps

    def emit_onnx(self, b, x):  # as forward; `b`: export's layers.Builder
        name = b.module_name(self)
        mean, std = b.tensor(self.mean, f"{name}.mean"), b.tensor(self.std, f"{name}.std")
        x = b.op("Div", [b.op("Sub", [x, mean]), std])
        taps = []
        for index, layer in enumerate(self.features):
            with b.scope(f"features.{index}"):
                x = b.apply(layer, x)
            if index in TAPS:
                taps.append(x)
        return taps
