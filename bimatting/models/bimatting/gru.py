"""Binary convolutional GRUs of the decoder.

ConvGRU(C) (decode4, plain):      [r, z] = sigmoid(B3([x, h]))       B3 = bias -> sign -> BiConv3x3 (+conv bias)
                                  c      = tanh(B3([x, r * h]))
                                  h'     = (1 - z) * h + z * c
ConvGRU_Up(C) (decode3/2/1, SAB): every gate = act(B3(.) + b) * M_up + act(B1(.) + b'), B1 = binary 1x1 branch,
                                  so r, z in [0, 2] and c in [-2, 2]; M_up is the soft incoherent mask.
Both loop over T; the state h is [B, C, H, W] (zeros when None) and the output is h' per step.
Source: htqin/BiMatting `model/bidecoder.py`; RVM `model/decoder.py` (ConvGRU).
"""

import torch
from torch import nn

from ..rvm.conv_gru import emit_update
from .binarize import BiConv2d, BinaryActivation, LearnableBias
from .fixed_order import Sigmoid, Tanh


def _gate(in_channels, out_channels, kernel_size, activation, shift_after):
    """bias -> sign -> BiConv(k, bias) [-> bias] -> activation (official Sequential indices)."""
    layers = [
        LearnableBias(in_channels),
        BinaryActivation(),
        BiConv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=True),
    ]
    if shift_after:
        layers.append(LearnableBias(out_channels))
    layers.append(activation)
    return nn.Sequential(*layers)


def _initial_state(x, h):
    # x [B, T, C, H, W] -> zeros [B, C, H, W] when no state is given
    return torch.zeros_like(x[:, 0]) if h is None else h


class ConvGRU(nn.Module):
    """x [B, T, C, H, W], h [B, C, H, W] | None -> (o [B, T, C, H, W], h [B, C, H, W])."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        self.ih = _gate(2 * channels, 2 * channels, 3, Sigmoid(), shift_after=False)
        self.hh = _gate(2 * channels, channels, 3, Tanh(), shift_after=False)

    def step(self, x, h):
        # x, h [B, C, H, W] -> h' [B, C, H, W]
        r, z = self.ih(torch.cat([x, h], dim=1)).split(self.channels, dim=1)
        c = self.hh(torch.cat([x, r * h], dim=1))
        return (1 - z) * h + z * c

    def forward(self, x, h=None):
        h = _initial_state(x, h)
        outputs = []
        for x_t in x.unbind(dim=1):
            h = self.step(x_t, h)
            outputs.append(h)
        return torch.stack(outputs, dim=1), h

    def emit_onnx(self, b, x, h, out):
        """step on one frame (the graph's caller loops over time): x [N,C,H,W], h the state input
        ([1,1,1,1] zeros or [N,C,H,W]) -> h' [N,C,H,W], the value named `out`."""
        h = b.expand_like(h, x)  # _initial_state's zeros
        r, z = b.split(b.sequential(self.ih, b.op("Concat", [x, h], axis=1)), [self.channels] * 2)
        c = b.sequential(self.hh, b.op("Concat", [x, b.op("Mul", [r, h])], axis=1))
        return emit_update(b, h, z, c, out)


class ConvGRU_Up(nn.Module):
    """x [B, T, C, H, W], h [B, C, H, W] | None, mask [B, T, 1, H, W] -> (o [B, T, C, H, W], h [B, C, H, W]).

    The mask is indexed per (b, t): the official code pairs step t with mask[t] of the flattened
    B*T batch, which is only right for B = 1.
    """

    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        self.ih = _gate(2 * channels, 2 * channels, 3, Sigmoid(), shift_after=True)
        self.ih_1x1 = _gate(2 * channels, 2 * channels, 1, Sigmoid(), shift_after=True)
        self.hh = _gate(2 * channels, channels, 3, Tanh(), shift_after=True)
        self.hh_1x1 = _gate(2 * channels, channels, 1, Tanh(), shift_after=True)

    def step(self, x, h, mask):
        # x, h [B, C, H, W], mask [B, 1, H, W] -> h' [B, C, H, W]
        xh = torch.cat([x, h], dim=1)
        r, z = (self.ih(xh) * mask + self.ih_1x1(xh)).split(self.channels, dim=1)
        xrh = torch.cat([x, r * h], dim=1)
        c = self.hh(xrh) * mask + self.hh_1x1(xrh)
        return (1 - z) * h + z * c

    def forward(self, x, h, mask):
        h = _initial_state(x, h)
        outputs = []
        for x_t, mask_t in zip(x.unbind(dim=1), mask.unbind(dim=1)):
            h = self.step(x_t, h, mask_t)
            outputs.append(h)
        return torch.stack(outputs, dim=1), h

    def emit_onnx(self, b, x, h, mask, out):
        """step on one frame: x [N,C,H,W], h the state input, mask [N,1,H,W] -> h' named `out`."""
        h = b.expand_like(h, x)
        xh = b.op("Concat", [x, h], axis=1)
        r, z = b.split(emit_sab(b, self.ih, self.ih_1x1, xh, mask), [self.channels] * 2)
        xrh = b.op("Concat", [x, b.op("Mul", [r, h])], axis=1)
        c = emit_sab(b, self.hh, self.hh_1x1, xrh, mask)
        return emit_update(b, h, z, c, out)


def emit_sab(b, masked_branch, dense_branch, x, mask):
    """masked_branch(x) * mask + dense_branch(x) as ONNX nodes, the masked branch's binary conv a
    BinaryConv2dMasked: it computes only where mask != 0, where the product keeps it."""
    masked = b.op("Mul", [b.sequential(masked_branch, x, mask=mask), mask])
    return b.op("Add", [masked, b.sequential(dense_branch, x)])
