"""Convolutional GRU (Shi et al., "Convolutional LSTM Network", NeurIPS 2015, GRU form) holding
RVM's temporal state. It is the only module that looks along time: every other module sees the
frames of a clip flattened into the batch, [B*T, C, H, W]."""

import numpy as np
import torch
from torch import nn


class ConvGRU(nn.Module):
    """h' = (1 - z) * h + z * c with [r, z] = sigmoid(conv3x3([x, h])), c = tanh(conv3x3([x, r*h])).

    Input x: [B*T, C, H, W] (frames of one clip consecutive), state h: [B, C, H, W] or None
    (zeros). Returns (outputs [B*T, C, H, W], last state [B, C, H, W]).
    """

    def __init__(self, channels, kernel_size=3):
        super().__init__()
        padding = kernel_size // 2
        self.channels = channels
        self.ih = nn.Sequential(nn.Conv2d(channels * 2, channels * 2, kernel_size, padding=padding), nn.Sigmoid())
        self.hh = nn.Sequential(nn.Conv2d(channels * 2, channels, kernel_size, padding=padding), nn.Tanh())

    def step(self, x, h):  # [B,C,H,W], [B,C,H,W] -> [B,C,H,W]
        r, z = self.ih(torch.cat([x, h], dim=1)).split(self.channels, dim=1)
        c = self.hh(torch.cat([x, r * h], dim=1))
        return (1 - z) * h + z * c

    def forward(self, x, h, frames=1):  # [B*T,C,H,W] -> [B*T,C,H,W], [B,C,H,W]
        batch = x.shape[0] // frames
        clips = x.unflatten(0, (batch, frames))  # [B,T,C,H,W]
        if h is None:
            h = torch.zeros_like(clips[:, 0])
        outputs = []
        for xt in clips.unbind(1):
            h = self.step(xt, h)
            outputs.append(h)
        return torch.stack(outputs, dim=1).flatten(0, 1), h

    def emit_onnx(self, b, x, h, out):
        """One step on one frame (the graph runs frame by frame): x [N,C,H,W], h the state input
        ([1,1,1,1] zeros or [N,C,H,W]) -> h' [N,C,H,W], the value named `out`."""
        h = b.expand_like(h, x)  # forward's zeros_like when None
        r, z = b.split(b.sequential(self.ih, b.op("Concat", [x, h], axis=1)), [self.channels] * 2)
        c = b.sequential(self.hh, b.op("Concat", [x, b.op("Mul", [r, h])], axis=1))
        return emit_update(b, h, z, c, out)


def emit_update(b, h, z, c, out):
    """h' = (1 - z) * h + z * c, in the order the PyTorch code computes it."""
    keep = b.op("Mul", [b.op("Sub", [b.const(1.0, np.float32), z]), h])
    return b.op("Add", [keep, b.op("Mul", [z, c])], out=out)
