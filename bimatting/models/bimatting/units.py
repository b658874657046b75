"""The standard binary unit and the container that runs it as deployed.

    BinarySequential   nn.Sequential that, in eval mode, runs each BiConv -> BN pair folded and
                       each binary conv -> BN -> ReLU -> float conv -> BN as fixed_point.IntegerChain
    binary_conv_unit   the unit of the ASPP, decoder and refiner: bias -> sign -> BiConv -> BN -> bias -> PReLU

Apart from binarize.py because it builds on both the primitives and fixed_point (which builds on
the primitives too).
"""

from torch import nn

from .binarize import BiConv2d, BinaryActivation, LearnableBias, binary_conv_bn
from .fixed_point import chain_at


class BinarySequential(nn.Sequential):
    """nn.Sequential whose forward runs each BiConv2d -> BatchNorm2d pair with `binary_conv_bn`
    (the exporter's walker folds the same pairs) and, in eval mode, each binary conv -> BN -> ReLU
    -> float conv -> BN as fixed_point.IntegerChain; indices and state_dict keys are nn.Sequential's."""

    def forward(self, x):
        layers = list(self)
        index = 0
        while index < len(layers):
            layer = layers[index]
            after = layers[index + 1] if index + 1 < len(layers) else None
            chain = chain_at(layers, index) if not self.training else None
            if chain is not None:
                x = chain.forward(x)
                index += chain.length
            elif isinstance(layer, BiConv2d) and isinstance(after, nn.BatchNorm2d):
                x = binary_conv_bn(layer, after, x)
                index += 2
            else:
                x = layer(x)
                index += 1
        return x


def binary_conv_unit(in_channels, out_channels, kernel_size, stride=1):
    """The standard binary unit of the ASPP, decoder and refiner (official Sequential indices):

        0 LearnableBias(in) -> 1 sign -> 2 BiConv(k, 'same' zero padding, no bias)
        -> 3 BN -> 4 LearnableBias(out) -> 5 PReLU(out)
    [N, in, H, W] -> [N, out, H/stride, W/stride]
    """
    return BinarySequential(
        LearnableBias(in_channels),
        BinaryActivation(),
        BiConv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        LearnableBias(out_channels),
        nn.PReLU(out_channels),
    )
