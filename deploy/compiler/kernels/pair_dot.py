"""An exact float conv over `[relu(m), clip(m + 1, 0, 1)]` as int16 pair dot products.

decode0's exact float layers (fixed_point.IntegerChain) convolve the concatenation of
n = relu(m) and a = [m >= 0] = clip(m + 1, 0, 1), m the integer output of a binary conv, with
weights that are integers times 2^-e per output channel (integer_pairs.py checks all of it). Both
halves come from the same channel of m, so channel c contributes

    n_c * Wn[o, c, ky, kx] + a_c * Wa[o, c, ky, kx]

at each tap: a dot product of two int16 pairs. One int32 word holds a pair, low half first:

    x_word[n, c, y, x] = n | a << 16            (0 <= n <= 32767, a in {0, 1})
    w_word[o, c, ky, kx] = Wn_int & 0xffff | Wa_int << 16
    acc[n, o, y, x] = sum_{c, ky, kx} dot2(x_word[n, c, y + ky - pt, x + kx - pl], w_word[o, c, ky, kx])
    dot2(p, q) = lo(p) * lo(q) + hi(p) * hi(q),   lo(v) = (v << 16) >> 16, hi(v) = v >> 16 (signed)

Zero padding pads both n and a with 0: the word 0. The conv reads half the channels the float
conv reads, and one AVX-512 VNNI `vpdpwssd` does 16 output columns' dot2 (schedules/pair_dot.py
tensorizes the column loop into it); without it, the same compute is plain integer arithmetic.
"""

import numpy as np
from tvm import te, tirx

from bimatting.binops.geometry import output_size
from bimatting.deploy.compiler.kernels import int64_shape

INT16_MAX = 2**15 - 1  # n and every weight integer must fit a signed int16


def lo16(v):
    """The low half of an int32 word, sign-extended."""
    return (v << 16) >> 16


def hi16(v):
    """The high half of an int32 word, sign-extended (arithmetic shift)."""
    return v >> 16


def dot2(p, q):
    return lo16(p) * lo16(q) + hi16(p) * hi16(q)


def pair_word(m):
    """float32 m (an integer) -> int32 word `relu(m) | clip(m + 1, 0, 1) << 16`."""
    n = tirx.Cast("int32", tirx.min(tirx.max(m, tirx.const(0.0, "float32")), tirx.const(float(INT16_MAX), "float32")))
    a = tirx.Cast(
        "int32",
        tirx.min(tirx.max(m + tirx.const(1.0, "float32"), tirx.const(0.0, "float32")), tirx.const(1.0, "float32")),
    )
    return n | (a << 16)


def pair_conv(m, weight_words, pads):
    """m float32 [N, C, H, W], weight_words int32 [O, C, KH, KW], pads (top, left, bottom, right)
    -> int32 [N, O, OH, OW] (stride 1, module doc). The words of m and their zero padding are one
    stage, which the conv schedule computes per group of output rows."""
    batch, channels, height, width = (int(d) for d in m.shape)
    outs, _, kh, kw = (int(d) for d in weight_words.shape)
    top, left, bottom, right = pads
    out_h = output_size(height, kh, pad_before=top, pad_after=bottom)
    out_w = output_size(width, kw, pad_before=left, pad_after=right)

    def padded_word(n, c, y, x):
        inside = tirx.all(y >= top, y < top + height, x >= left, x < left + width)
        yy = tirx.max(tirx.min(y - top, height - 1), 0)
        xx = tirx.max(tirx.min(x - left, width - 1), 0)
        return tirx.if_then_else(inside, pair_word(m[n, c, yy, xx]), tirx.const(0, "int32"))

    words = te.compute(
        int64_shape((batch, channels, height + top + bottom, width + left + right)), padded_word, name="pair_words"
    )
    c = te.reduce_axis(int64_shape((0, channels)), "c")
    ky = te.reduce_axis(int64_shape((0, kh)), "ky")
    kx = te.reduce_axis(int64_shape((0, kw)), "kx")
    return te.compute(
        int64_shape((batch, outs, out_h, out_w)),
        lambda n, o, y, x: te.sum(dot2(words[n, c, y + ky, x + kx], weight_words[o, c, ky, kx]), axis=[c, ky, kx]),
        name="pair_conv",
    )


def weight_words(w_n, w_a):
    """int16-range integer weights [O, C, KH, KW] of n and of a -> int32 words (low half n)."""
    low = np.asarray(w_n, np.int64) & 0xFFFF
    return ((np.asarray(w_a, np.int64) << 16) | low).astype(np.uint32).view(np.int32)


def reference(m, w_n, w_a, pads):
    """numpy int64 of the same sum, from the unpacked integers (tests)."""
    n = np.maximum(m, 0).astype(np.int64)
    a = (m >= 0).astype(np.int64)
    top, left, bottom, right = pads
    n = np.pad(n, ((0, 0), (0, 0), (top, bottom), (left, right)))
    a = np.pad(a, ((0, 0), (0, 0), (top, bottom), (left, right)))
    outs, _, kh, kw = w_n.shape
    out_h, out_w = n.shape[2] - kh + 1, n.shape[3] - kw + 1
    acc = np.zeros((m.shape[0], outs, out_h, out_w), np.int64)
    for ky in range(kh):
        for kx in range(kw):
            window = (slice(None), slice(None), slice(ky, ky + out_h), slice(kx, kx + out_w))
            acc += np.einsum("oc,ncyx->noyx", np.asarray(w_n[:, :, ky, kx], np.int64), n[window])
            acc += np.einsum("oc,ncyx->noyx", np.asarray(w_a[:, :, ky, kx], np.int64), a[window])
    return acc
