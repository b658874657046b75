"""The graph's interface: RVM's official ONNX inputs and outputs, for every network.

    inputs   src [B,3,H,W] float32 RGB in [0, 1]; r1i..r4i recurrent states (zeros of shape
             [1,1,1,1] on the first frame: they are broadcast with Expand); downsample_ratio [1]
             float32 (absent with a static export, where the ratio is baked in)
    outputs  fgr [B,3,H,W], pha [B,1,H,W], r1o..r4o [B,C_k,h_k,w_k] (C_k from the network's
             `state_channels`: 16, 20, 40, 64 for both official networks)
Dynamic axis names never clash: src/fgr/pha share `batch`, `height`, `width`; each state has its
own (`r1i_height`, `r2_width`, ...), since a state fed as [1,1,1,1] has none of the image's sizes.

A network's `emit_onnx(b, io)` reads `io.src`, `io.ratio`, `io.states` (input names) and
`io.state_outputs` (the names its GRUs give their new states), asks `io.refine_mode` how its
ratio-dependent refiner enters the graph, and ends with `io.declare_outputs`.
"""

import math

import numpy as np
from onnx import TensorProto

FLOAT = TensorProto.FLOAT


class Interface:
    """Declares the graph inputs and outputs; `ratio` is a value name (dynamic) or a float (static)."""

    def __init__(self, builder, state_channels, static_size=None, ratio=None):
        self.builder = builder
        self.state_channels = tuple(state_channels)  # C of r1..r4
        self.static_size = static_size  # (width, height) or None
        self.state_outputs = [f"r{k}o" for k in range(1, len(self.state_channels) + 1)]
        if static_size is None:
            self.src = builder.input("src", FLOAT, ["batch", 3, "height", "width"])
            self.states = [
                builder.input(f"r{k}i", FLOAT, [f"r{k}i_batch", f"r{k}i_channels", f"r{k}i_height", f"r{k}i_width"])
                for k in range(1, len(self.state_channels) + 1)
            ]
            self.ratio = builder.input("downsample_ratio", FLOAT, [1])
        else:
            width, height = static_size
            self.src = builder.input("src", FLOAT, [1, 3, height, width])
            self.states = [
                builder.input(f"r{k}i", FLOAT, [1, c, h, w])
                for k, (c, (h, w)) in enumerate(zip(self.state_channels, state_sizes(static_size, ratio)), 1)
            ]
            self.ratio = float(ratio)

    @property
    def dynamic(self):
        return self.static_size is None

    def refine_mode(self, always):
        """How a refiner that the model skips at ratio 1 enters the graph.

        always   the model refines at every ratio (`always`, e.g. RVM's official export)
        never    baked ratio 1: the model skips the refiner, so does the graph
        select   runtime ratio: both paths run, `select_refined` picks the model's choice (no
                 control flow, so every consumer sees one flat graph; the refiner is cheap)
        """
        if always:
            return "always"
        if self.dynamic:
            return "select"
        return "never" if self.ratio == 1.0 else "always"

    def select_refined(self, coarse, refined, mode):
        """The forward's `if downsample_ratio != 1` on [N,4,.,.] values: coarse [N,4,H',W'] (H' = H
        at ratio 1), refined [N,4,H,W] or None -> [N,4,H,W]; Where(ratio == 1) in `select` mode."""
        b = self.builder
        if mode == "never":
            return coarse
        if mode == "always":
            return refined
        unit = b.op("Equal", [self.ratio, b.const([1.0], np.float32)])
        return b.op("Where", [unit, b.resize_to(coarse, b.shape_slice(self.src, 2, 4)), refined])

    def declare_outputs(self, fgr, pha, states):
        b = self.builder
        if self.dynamic:
            b.output(fgr, FLOAT, ["batch", 3, "height", "width"])
            b.output(pha, FLOAT, ["batch", 1, "height", "width"])
            for k, (state, channels) in enumerate(zip(states, self.state_channels), 1):
                b.output(state, FLOAT, ["batch", channels, f"r{k}_height", f"r{k}_width"])
            return
        width, height = self.static_size
        b.output(fgr, FLOAT, [1, 3, height, width])
        b.output(pha, FLOAT, [1, 1, height, width])
        for state, channels, (h, w) in zip(states, self.state_channels, state_sizes(self.static_size, self.ratio)):
            b.output(state, FLOAT, [1, channels, h, w])


def state_sizes(size, ratio, count=4):
    """[(h, w)] of r1..r4 for a (width, height) input and ratio: halvings of floor(H*s), rounded up."""
    width, height = size
    h, w = math.floor(height * ratio), math.floor(width * ratio)
    sizes = []
    for _ in range(count):
        h, w = -(-h // 2), -(-w // 2)
        sizes.append((h, w))
    return sizes
