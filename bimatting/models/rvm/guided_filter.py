"""Deep Guided Filter refiner (Wu et al., "Fast End-to-End Trainable Guided Filter", CVPR 2018),
as used by RVM to upsample the coarse prediction from the downsampled input to full resolution.

The guided filter fits, per low-resolution window, a linear model y ~ A * x + b from the guide x
(RGB + gray) to the prediction y (fgr residual + alpha); RVM predicts A with a small 1x1 network
from the local covariance, the guide variance and the decoder's hidden feature, then applies the
bilinearly upsampled (A, b) to the full-resolution guide.
"""

import torch
from torch import nn
from torch.nn import functional as F


class DeepGuidedFilterRefiner(nn.Module):
    def __init__(self, hid_channels=16):
        super().__init__()
        # Depthwise 3x3 mean filter over the 4 guide/target channels; trainable, starts as a box.
        self.box_filter = nn.Conv2d(4, 4, kernel_size=3, padding=1, bias=False, groups=4)
        nn.init.constant_(self.box_filter.weight, 1 / 9)
        self.conv = nn.Sequential(
            nn.Conv2d(4 * 2 + hid_channels, hid_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(hid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(hid_channels, hid_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(hid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(hid_channels, 4, kernel_size=1, bias=True),
        )

    def forward(self, fine_src, base_src, base_fgr_residual, base_pha, base_hid):
        """fine_src [N,3,H,W], base_* at [N,·,h,w] -> (fgr_residual [N,3,H,W], pha [N,1,H,W])."""
        return deep_guided_filter(self.box_filter, self.conv, fine_src, base_src, base_fgr_residual, base_pha, base_hid)

    def emit_onnx(self, b, fine_src, base_src, base_y, base_hid):
        """As forward, with base_y = [fgr residual, pha] [N,4,h,w] unsplit -> [N,4,H,W] unsplit."""
        return emit_deep_guided_filter(b, self.box_filter, self.conv, fine_src, base_src, base_y, base_hid)


def channel_mean(x):
    """[N, C, H, W] -> [N, 1, H, W]."""
    return x.mean(1, keepdim=True)


def deep_guided_filter(
    box_filter, predict_a, fine_src, base_src, base_fgr_residual, base_pha, base_hid, gray=channel_mean
):
    """The guided-filter arithmetic shared by RVM's refiner and BiMatting's binary one (BiDGF):
    `predict_a`, the 1x1 network from [cov_xy, var_x, hid] to A, differs between them; BiMatting's
    eval mode also passes its fixed-order `box_filter` (a callable) and `gray`.

        cov_xy = box(x*y) - box(x)*box(y),   var_x = box(x*x) - box(x)^2
        A = predict_a([cov_xy, var_x, hid]),  b = box(y) - A*box(x)
        out = up(A) * x_fine + up(b)          (bilinear, align_corners=False)
    """
    fine_x = torch.cat([fine_src, gray(fine_src)], dim=1)  # [N,4,H,W]
    base_x = torch.cat([base_src, gray(base_src)], dim=1)  # [N,4,h,w]
    base_y = torch.cat([base_fgr_residual, base_pha], dim=1)  # [N,4,h,w]

    mean_x = box_filter(base_x)
    mean_y = box_filter(base_y)
    cov_xy = box_filter(base_x * base_y) - mean_x * mean_y
    var_x = box_filter(base_x * base_x) - mean_x * mean_x

    A = predict_a(torch.cat([cov_xy, var_x, base_hid], dim=1))  # [N,4,h,w]
    b = mean_y - A * mean_x
    size = fine_src.shape[2:]
    A = F.interpolate(A, size, mode="bilinear", align_corners=False)  # [N,4,H,W]
    b = F.interpolate(b, size, mode="bilinear", align_corners=False)
    out = A * fine_x + b
    fgr_residual, pha = out.split([3, 1], dim=1)
    return fgr_residual, pha


def emit_deep_guided_filter(b, box_filter, predict_a, fine_src, base_src, base_y, base_hid, box=None, gray=None):
    """deep_guided_filter as ONNX nodes (`b`: export's layers.Builder). The forward's split of y
    into (fgr residual, pha) and concat back is an identity, so y stays one [N,4,.,.] value here.
    `box` and `gray` (value -> value) replace the box filter's Conv and the channel ReduceMean."""

    def with_gray(image):  # [N,3,.,.] -> [N,4,.,.]
        return b.op("Concat", [image, gray(image) if gray else b.reduce_mean(image, [1])], axis=1)

    if box is None:

        def box(x):  # one shared initializer
            return b.conv(box_filter, x)

    fine_x, base_x = with_gray(fine_src), with_gray(base_src)
    mean_x, mean_y = box(base_x), box(base_y)
    cov_xy = b.op("Sub", [box(b.op("Mul", [base_x, base_y])), b.op("Mul", [mean_x, mean_y])])
    var_x = b.op("Sub", [box(b.op("Mul", [base_x, base_x])), b.op("Mul", [mean_x, mean_x])])
    a = b.sequential(predict_a, b.op("Concat", [cov_xy, var_x, base_hid], axis=1))  # [N,4,h,w]
    offset = b.op("Sub", [mean_y, b.op("Mul", [a, mean_x])])
    size = b.shape_slice(fine_src, 2, 4)
    a, offset = b.resize_to(a, size), b.resize_to(offset, size)  # [N,4,H,W]
    return b.op("Add", [b.op("Mul", [a, fine_x]), offset])
