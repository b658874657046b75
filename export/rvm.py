"""RVM (full precision, MobileNetV3) -> standard ONNX ops, the layout of RVM's official export.

Same operators as the official `rvm_mobilenetv3_fp32.onnx` (Conv with BN folded in, HardSigmoid*x
for hardswish, Resize with the runtime scale Concat([1, 1], s, s), Shape/Slice crops, AveragePool
pyramid, Expand'ed states); the refiner follows `model.refine_at_unit_ratio` (the official graph
and `load_model("rvm")` refine at every ratio).
"""
import numpy as np

from bimatting.export import layers, shared_graph


def emit(builder, model, interface):
    """Emit the whole network; declares the graph outputs."""
    shared_graph.emit_network(builder, model, interface, encoder, lraspp,
                         lambda b, net, s0, features, states: decoder(b, net.decoder, s0, features, states),
                         refine_always=model.refine_at_unit_ratio)


def encoder(b, backbone, x):
    """MobileNetV3-Large: [N,3,H,W] -> f1 16 @1/2, f2 24 @1/4, f3 40 @1/8, f4 960 @1/16."""
    from bimatting.models.rvm.mobilenetv3 import TAPS

    mean = b.initializer(np.asarray(backbone.mean.cpu(), np.float32), "backbone.mean")
    std = b.initializer(np.asarray(backbone.std.cpu(), np.float32), "backbone.std")
    x = b.op("Div", [b.op("Sub", [x, mean]), std])
    taps = []
    for index, layer in enumerate(backbone.features):
        with b.scope(f"features.{index}"):
            x = inverted_residual(b, layer, x) if hasattr(layer, "block") else layers.sequential(b, layer, x)
        if index in TAPS:
            taps.append(x)
    return taps


def inverted_residual(b, block, x):
    """expand 1x1 -> depthwise -> (SE) -> project 1x1 (+ x).  [N,Cin,H,W] -> [N,Cout,H/s,W/s]"""
    out = x
    for part in block.block:
        out = squeeze_excitation(b, part, out) if hasattr(part, "fc1") else layers.sequential(b, part, out)
    return b.op("Add", [out, x]) if block.use_residual else out


def squeeze_excitation(b, se, x):
    """x * hardsigmoid(fc2(relu(fc1(GAP(x))))).  [N,C,H,W] -> [N,C,H,W]"""
    scale = b.op("GlobalAveragePool", [x])
    scale = b.op("Relu", [layers.conv(b, se.fc1, scale)])
    scale = b.op("HardSigmoid", [layers.conv(b, se.fc2, scale)], alpha=1.0 / 6.0, beta=0.5)
    return b.op("Mul", [x, scale])


def lraspp(b, aspp, x):
    """ReLU(BN(conv(x))) * sigmoid(conv(GAP(x))).  [N,960,h,w] -> [N,128,h,w]"""
    return b.op("Mul", [layers.sequential(b, aspp.aspp1, x), layers.sequential(b, aspp.aspp2, x)])


def conv_gru(b, gru, x, state, out):
    """ConvGRU step on one frame: x [N,C,H,W], state (broadcastable) -> h' [N,C,H,W] named `out`."""
    h = shared_graph.expand_state(b, state, x)
    r, z = b.split(layers.sequential(b, gru.ih, b.op("Concat", [x, h], axis=1)), [gru.channels] * 2)
    c = layers.sequential(b, gru.hh, b.op("Concat", [x, b.op("Mul", [r, h])], axis=1))
    return shared_graph.gru_update(b, h, z, c, out)


def decoder(b, dec, s0, features, states):
    """-> hid [N,16,H',W'], [r1o, r2o, r3o, r4o]."""
    f1, f2, f3, f4 = features
    r1, r2, r3, r4 = states
    s1 = b.avg_pool2(s0)                                                  # image pyramid
    s2 = b.avg_pool2(s1)
    s3 = b.avg_pool2(s2)
    with b.scope("decode4"):
        half = dec.decode4.channels // 2
        a, rest = b.split(f4, [half, half])
        r4 = conv_gru(b, dec.decode4.gru, rest, r4, "r4o")
        x4 = b.op("Concat", [a, r4], axis=1)                              # [N,128,h16,w16]
    x, new_states = x4, [r4]
    for name, f, s, r, out in (("decode3", f3, s3, r3, "r3o"), ("decode2", f2, s2, r2, "r2o"),
                               ("decode1", f1, s1, r1, "r1o")):
        block = getattr(dec, name)
        with b.scope(name):
            x = b.op("Concat", [shared_graph.upsample2_crop(b, x, s), f, s], axis=1)
            x = layers.sequential(b, block.conv, x)
            half = block.out_channels // 2
            a, rest = b.split(x, [half, half])
            r = conv_gru(b, block.gru, rest, r, out)
            x = b.op("Concat", [a, r], axis=1)
        new_states.insert(0, r)
    with b.scope("decode0"):
        x = b.op("Concat", [shared_graph.upsample2_crop(b, x, s0), s0], axis=1)
        hid = layers.sequential(b, dec.decode0.conv, x)                   # [N,16,H',W']
    return hid, new_states

