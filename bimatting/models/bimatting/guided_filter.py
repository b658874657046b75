"""BiDGF: Deep Guided Filter refiner with binary hidden 1x1 convs (runs only when s != 1).

With x = [RGB, mean_c(RGB)] and y = [fgr residual, pha] (4 channels each) at the low resolution,
box(.) a trainable depthwise 3x3 conv initialised to 1/9:
    cov_xy = box(x*y) - box(x)*box(y),   var_x = box(x*x) - box(x)^2
    A = unit2(unit1([cov_xy, var_x, hid])) -> FP 1x1 (16->4, bias);   b = box(y) - A*box(x)
    out = up(A) * x_fine + up(b)       (bilinear, align_corners=False)
unit1/unit2 are binary 1x1 units (bias -> sign -> BiConv -> BN -> bias -> PReLU). Eval mode sums
the box filter's nine terms and the gray channel's three in one fixed order (fixed_order.py): unit1's
sign reads cov and var, and a runtime's own order moves their last bits.
Source: Wu et al., "Fast End-to-End Trainable Guided Filter" (CVPR 2018); RVM / htqin/BiMatting
`model/deep_guided_filter.py`.
"""

from torch import nn

from ..rvm.guided_filter import deep_guided_filter, emit_deep_guided_filter
from .fixed_order import channel_mean3, depthwise3x3, emit_channel_mean3, emit_depthwise3x3
from .units import BinarySequential, binary_conv_unit


class BiDeepGuidedFilterRefiner(nn.Module):
    """fine_src [N,3,H,W], base_src [N,3,h,w], base_fgr [N,3,h,w], base_pha [N,1,h,w], base_hid [N,16,h,w]
    -> fgr residual [N,3,H,W], pha [N,1,H,W] (unclamped)."""

    def __init__(self, hid_channels=16):
        super().__init__()
        self.box_filter = nn.Conv2d(4, 4, kernel_size=3, padding=1, bias=False, groups=4)
        nn.init.constant_(self.box_filter.weight, 1.0 / 9.0)
        # Official indices: 0-5 first binary unit, 6-11 second, 12 the FP output conv.
        self.conv = BinarySequential(
            *binary_conv_unit(4 * 2 + hid_channels, hid_channels, 1),
            *binary_conv_unit(hid_channels, hid_channels, 1),
            nn.Conv2d(hid_channels, 4, kernel_size=1, bias=True),
        )

    def forward(self, fine_src, base_src, base_fgr, base_pha, base_hid):
        if self.training:
            return deep_guided_filter(self.box_filter, self.conv, fine_src, base_src, base_fgr, base_pha, base_hid)

        def box(x):  # the same filter, its nine terms summed in one order (the refiner's signs read it)
            return depthwise3x3(x, self.box_filter.weight)

        return deep_guided_filter(box, self.conv, fine_src, base_src, base_fgr, base_pha, base_hid, gray=channel_mean3)

    def emit_onnx(self, b, fine_src, base_src, base_y, base_hid):
        """As forward in eval mode, with base_y = [fgr residual, pha] [N,4,h,w] unsplit -> [N,4,H,W] unsplit."""
        weight = self.box_filter.weight.detach().cpu().numpy()
        name = b.module_name(self.box_filter)
        return emit_deep_guided_filter(
            b,
            self.box_filter,
            self.conv,
            fine_src,
            base_src,
            base_y,
            base_hid,
            box=lambda x: emit_depthwise3x3(b, x, weight, name),
            gray=lambda x: emit_channel_mean3(b, x),
        )
