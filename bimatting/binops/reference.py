"""Numpy execution of the `ai.bimatting` ops: the reference every function body and kernel is tested against.

The XNOR / popcount identity
----------------------------
For +-1 vectors x, w of length K with bits a = [x < 0], b = [w < 0] (layout.py):
    x . w = K - 2 * popcount(a XOR b)
Summed over a conv window where every tap is read from a +1-padded input (K_all = KH*KW*C):
    y_padded_plus1 = K_all - 2 * popcount(a XOR b)
and the true zero-padded result removes what the padded taps added (x = +1 there, so w):
    y_zero_pad = y_padded_plus1 + corr,   corr = -sum_{padded taps (c, i, j)} w[o, c, i, j]
Which taps are padded depends only on which kernel rows and which kernel columns fall outside the
image (geometry.valid_rows / valid_cols), so with wsum[o, i, j] = sum_c w[o, c, i, j]:
    corr[o, y, x] = -(sum_{i,j} wsum[o, i, j] - sum_{valid i of y, valid j of x} wsum[o, i, j])
`border_correction_table` is that formula; the kernels (deploy) evaluate it once per class of
rows / columns, `border_correction` once per output position. Derivation after LCE
`core/bconv2d/zero_padding_correction.h` (larq/compute-engine).
"""

import numpy as np

from bimatting.binops import layout
from bimatting.binops.geometry import ConvGeometry, normalize_pads, output_size
from bimatting.binops.schema import DOMAIN, node_defaults


def conv2d_int(x, w, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1)):
    """Direct integer NCHW conv with zero padding. Reference only: simple, not fast.

    x [N, C, H, W], w [O, C, KH, KW], pads (top, left, bottom, right) -> [N, O, OH, OW] int64.
    """
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (dh, dw) = strides, dilations
    top, left, bottom, right = normalize_pads(pads)
    xp = np.zeros((n, c, h + top + bottom, wd + left + right), dtype=np.int64)
    xp[:, :, top : top + h, left : left + wd] = x
    oh, ow = (
        output_size(h, kh, stride=sh, pad_before=top, pad_after=bottom, dilation=dh),
        output_size(wd, kw, stride=sw, pad_before=left, pad_after=right, dilation=dw),
    )
    out = np.zeros((n, o, oh, ow), dtype=np.int64)
    w64 = np.asarray(w).astype(np.int64)
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
            out += np.einsum("nchw,oc->nohw", tap, w64[:, :, i, j])
    return out


def binary_conv2d(x_packed, w_packed, channels_in, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1)):
    """Reference binary conv on packed operands: the exact integer sum of +-1 products.

    Zero padding of the +-1 input (padded taps add 0). Returns int32 [N, O, OH, OW].
    """
    x = layout.unpack(x_packed, channels_in, axis=1).astype(np.int64)
    w = layout.unpack(w_packed, channels_in, axis=1).astype(np.int64)
    return conv2d_int(x, w, strides, pads, dilations).astype(np.int32)


def border_correction_table(w_sign, valid_rows, valid_cols):
    """corr [R, C, O] int32 for rows whose valid kernel rows are `valid_rows` [R, KH] and columns
    whose valid kernel columns are `valid_cols` [C, KW] (the module docstring's formula)."""
    wsum = np.asarray(w_sign).astype(np.int64).sum(axis=1)  # [O, KH, KW]
    valid_sum = np.einsum("ri,cj,oij->rco", np.asarray(valid_rows, np.int64), np.asarray(valid_cols, np.int64), wsum)
    return (-(wsum.sum(axis=(1, 2))[None, None, :] - valid_sum)).astype(np.int32)


def border_correction(w_sign, height, width, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1)):
    """What a +1-padding kernel must add to get zero-padding results: [O, OH, OW] int32.

    `w_sign` is the +-1 weight [O, C, KH, KW]; zero away from the borders.
    """
    o, c, kh, kw = np.asarray(w_sign).shape
    g = ConvGeometry(int(height), int(width), c, o, (kh, kw), tuple(strides), normalize_pads(pads), tuple(dilations))
    return border_correction_table(w_sign, g.valid_rows(), g.valid_cols()).transpose(2, 0, 1)


_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], dtype=np.int64)


def xnor_popcount_conv2d(
    x_packed, w_packed, channels_in, height, width, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1)
):
    """The same result as `binary_conv2d`, computed the way a kernel does: XOR + popcount on bytes
    with +1 (0-bit) spatial padding, then K_all - 2*popcount plus the border correction.
    Kept beside the plain reference so the identity in the module docstring is itself tested."""
    xp = np.asarray(x_packed, dtype=np.uint8)
    wp = np.asarray(w_packed, dtype=np.uint8)
    n, cw, h, wd = xp.shape
    o, _, kh, kw = wp.shape
    (sh, sw), (dh, dw) = strides, dilations
    top, left, bottom, right = normalize_pads(pads)
    padded = np.zeros((n, cw, h + top + bottom, wd + left + right), dtype=np.uint8)  # 0 bits = +1
    padded[:, :, top : top + h, left : left + wd] = xp
    oh, ow = (
        output_size(h, kh, stride=sh, pad_before=top, pad_after=bottom, dilation=dh),
        output_size(wd, kw, stride=sw, pad_before=left, pad_after=right, dilation=dw),
    )
    pop = np.zeros((n, o, oh, ow), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            tap = padded[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
            xor = tap[:, None] ^ wp[None, :, :, i, j, None, None]  # [N, O, CW, OH, OW]
            pop += _POPCOUNT[xor].sum(axis=2)
    k_all = kh * kw * channels_in
    w_sign = layout.unpack(wp, channels_in, axis=1)
    corr = border_correction(
        w_sign, height, width, strides=strides, pads=(top, left, bottom, right), dilations=dilations
    )
    return (k_all - 2 * pop + corr[None]).astype(np.int32)


def pack_weights(weight_sign):
    """+-1 (or any sign-carrying) float weights [O, C, KH, KW] -> packed uint8 [O, ceil(C/8), KH, KW]."""
    return layout.pack(np.asarray(weight_sign, dtype=np.float32), axis=1)


def execute(op_type, inputs, attrs):
    """Run one op of the domain in numpy (attributes missing from `attrs` take the schema defaults).
    Returns the list of outputs."""
    attrs = {**node_defaults(op_type), **attrs}
    if op_type == "BinarizePack":
        return [layout.pack(inputs[0], axis=1)]
    if op_type == "Unpack":
        return [layout.unpack(inputs[0], attrs["channels"], axis=1)]
    if op_type in ("BinaryConv2d", "BinaryConv2dMasked"):
        x, w, scale, bias = inputs[:4]
        dot = binary_conv2d(
            x, w, attrs["channels_in"], strides=attrs["strides"], pads=attrs["pads"], dilations=attrs["dilations"]
        )
        y = (
            dot.astype(np.float32) * np.asarray(scale, np.float32)[None, :, None, None]
            + np.asarray(bias, np.float32)[None, :, None, None]
        )
        if op_type == "BinaryConv2dMasked":
            y = np.where(np.asarray(inputs[4]) != 0, y, np.float32(0))
        return [y.astype(np.float32)]
    raise ValueError(f"unknown op {DOMAIN}.{op_type}")
