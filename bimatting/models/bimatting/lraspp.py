"""Binary LR-ASPP (1024 -> 128): a binary 1x1 unit gated by a binary global-context branch.

    out = RPReLU-unit(x) * sigmoid(BiConv1x1(sign(GAP(x) + b)))      (the gate has no BN)
Indices of the two Sequentials equal the official state_dict keys (`aspp.aspp1.2.weight`, ...).
Source: htqin/BiMatting `model/lraspp.py`, after RVM's LR-ASPP (Howard et al., MobileNetV3).
"""

from torch import nn

from .binarize import BiConv2d, BinaryActivation, LearnableBias
from .fixed_order import GlobalAveragePool, Sigmoid
from .units import binary_conv_unit


class BiLRASPP(nn.Module):
    """[N, in, h, w] -> [N, out, h, w]."""

    def __init__(self, in_channels=1024, out_channels=128):
        super().__init__()
        self.aspp1 = binary_conv_unit(in_channels, out_channels, 1)
        self.aspp2 = nn.Sequential(
            GlobalAveragePool(),  # 0: [N, in, 1, 1]
            LearnableBias(in_channels),  # 1
            BinaryActivation(),  # 2
            BiConv2d(in_channels, out_channels, 1, bias=False),  # 3: [N, out, 1, 1]
            Sigmoid(),  # 4
        )

    def forward(self, x):
        return self.aspp1(x) * self.aspp2(x)  # [N, out, h, w] * [N, out, 1, 1]

    def emit_onnx(self, b, x):  # as forward; marks its output for per-block checks
        return b.mark(b.module_name(self), b.op("Mul", [b.sequential(self.aspp1, x), b.sequential(self.aspp2, x)]))
