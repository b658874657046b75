"""BiDGF: Deep Guided Filter refiner with binary hidden 1x1 convs (runs only when s != 1).

With x = [RGB, mean_c(RGB)] and y = [fgr residual, pha] (4 channels each) at the low resolution,
box(.) a trainable depthwise 3x3 conv initialised to 1/9:
    cov_xy = box(x*y) - box(x)*box(y),   var_x = box(x*x) - box(x)^2
    A = unit2(unit1([cov_xy, var_x, hid])) -> FP 1x1 (16->4, bias);   b = box(y) - A*box(x)
    out = up(A) * x_fine + up(b)       (bilinear, align_corners=False)
unit1/unit2 are binary 1x1 units (bias -> sign -> BiConv -> BN -> bias -> PReLU).
Source: Wu et al., "Fast End-to-End Trainable Guided Filter" (CVPR 2018); RVM / htqin/BiMatting
`model/deep_guided_filter.py`.
"""
import torch
from torch import nn
from torch.nn import functional as F

from .binarize import binary_conv_unit


class BiDeepGuidedFilterRefiner(nn.Module):
    """fine_src [N,3,H,W], base_src [N,3,h,w], base_fgr [N,3,h,w], base_pha [N,1,h,w], base_hid [N,16,h,w]
    -> fgr residual [N,3,H,W], pha [N,1,H,W] (unclamped)."""

    def __init__(self, hid_channels=16):
        super().__init__()
        self.box_filter = nn.Conv2d(4, 4, kernel_size=3, padding=1, bias=False, groups=4)
        nn.init.constant_(self.box_filter.weight, 1.0 / 9.0)
        # Official indices: 0-5 first binary unit, 6-11 second, 12 the FP output conv.
        self.conv = nn.Sequential(
            *binary_conv_unit(4 * 2 + hid_channels, hid_channels, 1),
            *binary_conv_unit(hid_channels, hid_channels, 1),
            nn.Conv2d(hid_channels, 4, kernel_size=1, bias=True),
        )

    def forward(self, fine_src, base_src, base_fgr, base_pha, base_hid):
        fine_x = torch.cat([fine_src, fine_src.mean(1, keepdim=True)], dim=1)    # [N, 4, H, W]
        base_x = torch.cat([base_src, base_src.mean(1, keepdim=True)], dim=1)    # [N, 4, h, w]
        base_y = torch.cat([base_fgr, base_pha], dim=1)                          # [N, 4, h, w]

        mean_x = self.box_filter(base_x)
        mean_y = self.box_filter(base_y)
        cov_xy = self.box_filter(base_x * base_y) - mean_x * mean_y
        var_x = self.box_filter(base_x * base_x) - mean_x * mean_x

        A = self.conv(torch.cat([cov_xy, var_x, base_hid], dim=1))               # [N, 4, h, w]
        b = mean_y - A * mean_x

        size = fine_src.shape[-2:]
        A = F.interpolate(A, size=size, mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
        fgr, pha = (A * fine_x + b).split([3, 1], dim=1)
        return fgr, pha
