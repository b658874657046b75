"""1x1 output heads: `project_mat` (fgr residual + alpha) and `project_seg` (person logits)."""

from torch import nn


class Projection(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):  # [N,Cin,H,W] -> [N,Cout,H,W]
        return self.conv(x)

    def emit_onnx(self, b, x):  # as forward
        return b.conv(self.conv, x)
