"""Lite R-ASPP segmentation head (Howard et al., "Searching for MobileNetV3", section 6.3), as
used by RVM between encoder and decoder: a 1x1 conv branch gated by a global-context branch."""

from torch import nn


class LRASPP(nn.Module):
    """out = ReLU(BN(conv1x1(x))) * sigmoid(conv1x1(GAP(x))). Both convs bias-free, gate has no BN."""

    def __init__(self, in_channels=960, out_channels=128):
        super().__init__()
        self.aspp1 = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.aspp2 = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):  # [N,960,h,w] -> [N,128,h,w]
        return self.aspp1(x) * self.aspp2(x)  # gate [N,128,1,1] broadcasts

    def emit_onnx(self, b, x):  # as forward
        return b.op("Mul", [b.sequential(self.aspp1, x), b.sequential(self.aspp2, x)])
