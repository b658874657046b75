"""Pieces both matting graphs share: RVM's graph interface, the input resize, GRU state algebra,
upsample-and-crop, the guided-filter refiner and the output head.

Interface (RVM's official ONNX, so its drivers run our files unchanged):
    inputs   src [B,3,H,W] float32 RGB in [0, 1]; r1i..r4i recurrent states (zeros of shape
             [1,1,1,1] on the first frame: they are broadcast with Expand); downsample_ratio [1]
             float32 (absent with a static export, where the ratio is baked in)
    outputs  fgr [B,3,H,W], pha [B,1,H,W], r1o..r4o [B,C_k,h_k,w_k] (C_k read from the network's
             decoder, `state_channels`: 16, 20, 40, 64 for both official networks)
Dynamic axis names never clash: src/fgr/pha share `batch`, `height`, `width`; each state has its
own (`r1i_height`, `r2_width`, ...), since a state fed as [1,1,1,1] has none of the image's sizes.
"""
import math

import numpy as np
from onnx import TensorProto

from bimatting.export import layers

FLOAT = TensorProto.FLOAT


def state_channels(decoder):
    """(C1, C2, C3, C4) of r1..r4: the GRUs run on the second half of decode1/2/3/4's channels
    (the same attributes in RVM's and BiMatting's decoders)."""
    return (decoder.decode1.out_channels // 2, decoder.decode2.out_channels // 2,
            decoder.decode3.out_channels // 2, decoder.decode4.channels // 2)


class Interface:
    """Declares the graph inputs and outputs; `ratio` is a value name (dynamic) or a float (static)."""

    def __init__(self, builder, state_channels, static_size=None, ratio=None):
        self.builder = builder
        self.state_channels = tuple(state_channels)  # C of r1..r4
        self.static_size = static_size  # (width, height) or None
        if static_size is None:
            self.src = builder.input("src", FLOAT, ["batch", 3, "height", "width"])
            self.states = [builder.input(f"r{k}i", FLOAT, [f"r{k}i_batch", f"r{k}i_channels",
                                                           f"r{k}i_height", f"r{k}i_width"])
                           for k in range(1, 5)]
            self.ratio = builder.input("downsample_ratio", FLOAT, [1])
        else:
            width, height = static_size
            self.src = builder.input("src", FLOAT, [1, 3, height, width])
            self.states = [builder.input(f"r{k}i", FLOAT, [1, c, h, w])
                           for k, (c, (h, w)) in enumerate(zip(self.state_channels, state_sizes(static_size, ratio)), 1)]
            self.ratio = float(ratio)

    @property
    def dynamic(self):
        return self.static_size is None

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


def state_sizes(size, ratio):
    """[(h, w)] of r1..r4 for a (width, height) input and ratio: halvings of floor(H*s), rounded up."""
    width, height = size
    h, w = math.floor(height * ratio), math.floor(width * ratio)
    sizes = []
    for _ in range(4):
        h, w = -(-h // 2), -(-w // 2)
        sizes.append((h, w))
    return sizes


def downsample(builder, src, ratio):
    """src_sm = bilinear resize of src by the ratio (identity, no node, for a baked ratio of 1)."""
    if isinstance(ratio, str):
        scales = builder.op("Concat", [builder.const([1.0, 1.0], np.float32), ratio, ratio], axis=0)
        return builder.resize_scale(src, scales)
    if ratio == 1.0:
        return src
    return builder.resize_scale(src, builder.const([1.0, 1.0, ratio, ratio], np.float32))


def upsample2_crop(builder, x, like):
    """Bilinear x2 (align_corners=False), cropped to `like`'s H, W.  [N,C,h,w] -> [N,C,H,W]"""
    up = builder.resize_scale(x, builder.const([1.0, 1.0, 2.0, 2.0], np.float32))
    return builder.crop_to(up, like)


def expand_state(builder, state, like):
    """The state broadcast to the GRU input's shape (zeros [1,1,1,1] -> zeros [N,C,H,W])."""
    return builder.op("Expand", [state, builder.op("Shape", [like])])


def gru_update(builder, h, z, c, out):
    """h' = (1 - z) * h + z * c, written as the PyTorch code writes it."""
    keep = builder.op("Mul", [builder.op("Sub", [builder.const(1.0, np.float32), z]), h])
    return builder.op("Add", [keep, builder.op("Mul", [z, c])], out=out)


def guided_filter(builder, refiner, fine_src, base_src, base_y, base_hid, a_network):
    """Deep Guided Filter (RVM / BiDGF): -> refined [N,4,H,W] = up(A) * fine_x + up(b).

    base_y = [fgr residual, pha] [N,4,h,w]; `a_network(x)` emits refiner.conv on [N,24,h,w].
    """
    b = builder

    def with_gray(image):  # [N,3,H,W] -> [N,4,H,W]: RGB + channel mean
        return b.op("Concat", [image, b.reduce_mean(image, [1])], axis=1)

    def box(x):  # the trainable depthwise 3x3 mean filter, one shared initializer
        return layers.conv(b, refiner.box_filter, x)

    fine_x, base_x = with_gray(fine_src), with_gray(base_src)
    mean_x, mean_y = box(base_x), box(base_y)
    cov_xy = b.op("Sub", [box(b.op("Mul", [base_x, base_y])), b.op("Mul", [mean_x, mean_y])])
    var_x = b.op("Sub", [box(b.op("Mul", [base_x, base_x])), b.op("Mul", [mean_x, mean_x])])
    a = a_network(b.op("Concat", [cov_xy, var_x, base_hid], axis=1))     # [N,4,h,w]
    offset = b.op("Sub", [mean_y, b.op("Mul", [a, mean_x])])
    size = b.shape_slice(fine_src, 2, 4)
    a, offset = b.resize_to(a, size), b.resize_to(offset, size)          # [N,4,H,W]
    return b.op("Add", [b.op("Mul", [a, fine_x]), offset])


def refine_mode(interface, always):
    """How the refiner enters the graph.

    always   the model refines at every ratio (RVM's official export)
    never    baked ratio 1: the model skips the refiner, so does the graph
    select   runtime ratio: both paths run, Where(ratio == 1) picks the model's choice (no
             control flow, so every consumer sees one flat graph; the refiner is cheap)
    """
    if always:
        return "always"
    if interface.dynamic:
        return "select"
    return "never" if interface.ratio == 1.0 else "always"


def head(builder, interface, src, coarse, refined, mode):
    """coarse [N,4,H',W'] / refined [N,4,H,W] -> fgr = clip(residual + src), pha = clip(pha)."""
    b = builder
    if mode == "never":
        out = coarse
    elif mode == "always":
        out = refined
    else:
        unit = b.op("Equal", [interface.ratio, b.const([1.0], np.float32)])
        out = b.op("Where", [unit, b.resize_to(coarse, b.shape_slice(src, 2, 4)), refined])
    fgr_residual, pha = b.split(out, [3, 1])
    fgr = b.clip(b.op("Add", [fgr_residual, src]), 0.0, 1.0, out="fgr")
    return fgr, b.clip(pha, 0.0, 1.0, out="pha")


def emit_network(b, model, interface, encoder, aspp, decoder, refine_always):
    """RVM's forward, top to bottom, for either network; the architectures differ only in the
    emitters passed in. Declares the graph outputs.

    encoder(b, backbone, src_sm) -> f1..f4;  aspp(b, aspp_module, f4) -> f4;
    decoder(b, model, src_sm, (f1, f2, f3, f4), states) -> hid, states
    """
    b.name_modules(model)
    src = interface.src
    src_sm = downsample(b, src, interface.ratio)                          # [N,3,H',W']
    with b.scope("backbone"):
        f1, f2, f3, f4 = encoder(b, model.backbone, src_sm)
    with b.scope("aspp"):
        f4 = aspp(b, model.aspp, f4)                                      # [N,128,H'/16,W'/16]
    with b.scope("decoder"):
        hid, states = decoder(b, model, src_sm, (f1, f2, f3, f4), interface.states)
    with b.scope("project_mat"):
        coarse = layers.conv(b, model.project_mat.conv, hid)              # [N,4,H',W']
    mode = refine_mode(interface, always=refine_always)
    refined = None
    if mode != "never":
        with b.scope("refiner"):
            refined = guided_filter(b, model.refiner, src, src_sm, coarse, hid,
                                    lambda x: layers.sequential(b, model.refiner.conv, x))
    fgr, pha = head(b, interface, src, coarse, refined, mode)
    interface.declare_outputs(fgr, pha, states)
