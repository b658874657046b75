"""ONNX pre-pass (after graph_rewrite.py): exact float convs over a binary conv's integers become
int16 pair convs (kernels/pair_dot.py), for targets with AVX-512 VNNI.

decode0's exact float layers (fixed_point.IntegerChain) export as

    m = BimattingBinaryConv(...)   with output transform  m = sigma * D + g
    y = Conv(Concat([Relu(m), Clip(m + 1, 0, 1)]), W)

Where this pass can prove, from the constants alone, that

    1. m is an integer: D is (K-sum of +-1 products), sigma in {-1, +1}, g an integer, |m| < 2^24;
    2. each output channel's weights are integers times one power of two: W[o] = W_int[o] * 2^e_o,
       with |W_int| <= 32767 (int16);
    3. every partial sum of the conv is below 2^24 steps of 2^e_o:
       sum |Wn_int| * max(n) + sum |Wa_int| < 2^24, with max(n) = max(0, K + g_c) <= 32767,

the float conv's products and partial sums are all exact in float32, in any order (the argument
of fixed_point.py), so y = float32(acc) * 2^e_o exactly, acc the int32 sum of int16 products:
the same bits as onnxruntime's float conv. The five nodes after m become one
`BimattingPairConv(m)`; a conv whose constants do not pass keeps its float nodes. In the default
network that is decode0's 3x3 conv; its 1x1 conv's integers need 17 bits (fixed_point.py picks
the finest step under 2^24, and a 1x1 conv's fan-in is 9x smaller) and stay float.

Measured on a 2-core AMD EPYC (znver4), one thread: the dense 3x3 conv alone (16 word channels
-> 16, 288x512) runs at ~0.9 `vpdpwssd` per cycle, 6.5 ms, where the float conv of the same
layer took 16.8 ms; the network, frame-interleaved against the float conv, -6.9 ms per frame at
512x288 and -6.7 ms at 1920x1080 (s = 0.25), the same bits on held-out footage.
"""

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bimatting.binops.geometry import ConvGeometry
from bimatting.deploy.compiler.graph_rewrite import PRIVATE_DOMAIN, _Graph
from bimatting.deploy.compiler.kernels.pair_dot import INT16_MAX, weight_words

PAIR_OP = "BimattingPairConv"
EXACT_LIMIT = 2**24  # float32 holds every integer below this exactly (fixed_point.py's, which imports torch)


def _attr(node, name, default=None):
    found = [a for a in node.attribute if a.name == name]
    return helper.get_attribute_value(found[0]) if found else default


def _standard(node, op_type):
    return node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx")


def _scalar(g, name):
    """The value of a one-element constant, else None."""
    value = g.consts.get(name)
    return None if value is None or np.asarray(value).size != 1 else float(np.asarray(value).reshape(-1)[0])


def integer_range(node):
    """(low, high) float64 [C] bounding a BimattingBinaryConv's output, which is an integer in
    every position, or None where its output transform does not keep it one (statement 1)."""
    kinds = [k.decode() if isinstance(k, bytes) else str(k) for k in _attr(node, "epilogue_kinds", [])]
    if kinds != ["mul", "add"]:  # no residual, no further steps
        return None
    sigma, g = numpy_helper.to_array(_attr(node, "epilogue_values")).astype(np.float64)
    if not (np.all(np.abs(sigma) == 1.0) and np.all(g == np.round(g))):
        return None
    ints = list(_attr(node, "geometry"))
    fan_in = ConvGeometry.from_ints(ints, 1, 1, int(_attr(node, "channels_in")), sigma.size).taps
    low, high = g - fan_in, g + fan_in
    if max(np.abs(low).max(), np.abs(high).max()) >= EXACT_LIMIT:
        return None
    if int(_attr(node, "masked", 0)):  # masked-out positions are 0
        low, high = np.minimum(low, 0.0), np.maximum(high, 0.0)
    return low, high


def integer_weights(weight):
    """(W_int int64, e int [O]) with weight[o] == W_int[o] * 2^e[o] exactly and W_int as small as
    that allows (statement 2), or None where some |W_int| needs more than int16."""
    weight = np.asarray(weight, np.float64)
    ints, exponents = np.zeros(weight.shape, np.int64), np.zeros(weight.shape[0], np.int64)
    for o in range(weight.shape[0]):
        w = weight[o]
        nonzero = w[w != 0]
        if nonzero.size == 0:
            continue
        # float32 w = f * 2^E with f * 2^24 an integer (24-bit significand)
        e = int(np.min(np.frexp(nonzero)[1])) - 24
        scaled = w / 2.0**e
        while np.all(np.mod(scaled, 2.0) == 0.0):
            scaled, e = scaled / 2.0, e + 1
        if np.abs(scaled).max() > INT16_MAX or not np.all(scaled == np.round(scaled)):
            return None
        ints[o], exponents[o] = scaled.astype(np.int64), e
    return ints, exponents


def _chain(g, conv):
    """(m's producer, n index, nodes to remove) where `conv` reads Concat([Relu(m), Clip(m + 1, 0, 1)])
    (either order) and nothing else reads those nodes; else None."""
    concat = g.producer.get(conv.input[0])
    if not _standard(concat, "Concat") or _attr(concat, "axis") != 1 or len(concat.input) != 2:
        return None
    if g.sole_consumer(concat.output[0]) is not conv:
        return None
    parts = [g.producer.get(name) for name in concat.input]
    relu = next((p for p in parts if _standard(p, "Relu")), None)
    clip = next((p for p in parts if _standard(p, "Clip")), None)
    if relu is None or clip is None or any(g.sole_consumer(p.output[0]) is not concat for p in (relu, clip)):
        return None
    m = relu.input[0]
    add = g.producer.get(clip.input[0])
    if not _standard(add, "Add") or g.sole_consumer(add.output[0]) is not clip or len(clip.input) != 3:
        return None
    others = [name for name in add.input if name != m]
    if (
        m not in add.input
        or len(others) != 1
        or _scalar(g, others[0]) != 1.0
        or [_scalar(g, name) for name in clip.input[1:]] != [0.0, 1.0]
    ):
        return None
    producer = g.producer.get(m)
    if producer is None or producer.op_type != "BimattingBinaryConv" or producer.domain != PRIVATE_DOMAIN:
        return None
    return producer, parts.index(relu), [relu, add, clip, concat, conv]


def _pair_node(g, conv):
    """The BimattingPairConv replacing `conv` and the nodes it replaces, or None (module doc)."""
    if not _standard(conv, "Conv") or len(conv.input) != 2 or conv.input[1] not in g.consts:
        return None
    if (
        _attr(conv, "group", 1) != 1
        or any(v != 1 for v in _attr(conv, "strides", [1, 1]))
        or any(v != 1 for v in _attr(conv, "dilations", [1, 1]))
        or _attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
    ):
        return None
    chain = _chain(g, conv)
    if chain is None:
        return None
    producer, n_index, removed = chain
    bounds = integer_range(producer)
    weights = integer_weights(g.consts[conv.input[1]])
    if bounds is None or weights is None:
        return None
    ints, exponents = weights
    channels = ints.shape[1] // 2
    if ints.shape[1] != 2 * channels or bounds[0].size != channels:
        return None
    w_n, w_a = (ints[:, :channels], ints[:, channels:]) if n_index == 0 else (ints[:, channels:], ints[:, :channels])
    largest_n = np.maximum(bounds[1], 0.0)
    if largest_n.max() > INT16_MAX:
        return None
    load = (np.abs(w_n) * largest_n[None, :, None, None]).sum(axis=(1, 2, 3)) + np.abs(w_a).sum(axis=(1, 2, 3))
    if load.max() >= EXACT_LIMIT:  # statement 3
        return None
    top, left, bottom, right = _attr(conv, "pads", [0, 0, 0, 0])
    node = helper.make_node(
        PAIR_OP,
        [producer.output[0]],
        [conv.output[0]],
        name=f"{conv.name}_pairs",
        domain=PRIVATE_DOMAIN,
        pads=[int(top), int(left), int(bottom), int(right)],
        weights=numpy_helper.from_array(weight_words(w_n, w_a), "weights"),
        step=numpy_helper.from_array(np.ldexp(1.0, exponents).astype(np.float32), "step"),
    )
    return node, removed


def rewrite(model):
    """(a copy of `model` with the provable chains as BimattingPairConv nodes, how many)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = _Graph(out.graph)
    replaced, removed = {}, set()
    for node in out.graph.node:
        found = _pair_node(g, node)
        if found is not None:
            replaced[id(node)] = found[0]
            removed.update(id(n) for n in found[1])
    nodes = [replaced.get(id(n), n) for n in out.graph.node if id(n) not in removed or id(n) in replaced]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, len(replaced)
