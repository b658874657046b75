"""The binary-tensor conventions of the whole toolchain, defined once, in plain numpy.

PyTorch model, ONNX ops (export/), TVM kernels (deploy/) and the tests all follow this file.
It is torch-free on purpose: deploy/ and the board side import it.

Conventions (see docs/onnx-ops.md for the worked example)
---------------------------------------------------------
* sign(x) = +1 if x >= 0 else -1. Zero maps to +1 (as Larq / LCE and QONNX BipolarQuant do;
  torch.sign and ONNX Sign map 0 to 0, a third value no 1-bit kernel can hold).
* Bit encoding: bit 1 means -1, bit 0 means +1 (LCE's convention; it is the float sign bit).
* Packing axis: channels. Container word: uint8, 8 channels per byte. Channel c lives in byte
  c // 8 at bit c % 8 (little-endian bit order: channel 8k is the least significant bit).
* Channel padding: the last byte is filled with 0 bits (+1) in activations *and* weights; since
  XOR of two 0 bits is 0 the padding never changes a popcount, and K (below) counts real channels.
* Layouts: packed activations [N, ceil(C/8), H, W]; packed weights [O, ceil(C/8), KH, KW].
* Spatial padding: zero padding of the +-1 tensor (the PyTorch model's semantics): padded taps
  contribute 0 to the dot product. A kernel that pads with +1 bits (cheap) adds the
  position-dependent `border_correction` below.

The XNOR / popcount identity
----------------------------
For +-1 vectors x, w of length K with bits a = [x < 0], b = [w < 0]:
    x . w = K - 2 * popcount(a XOR b)
Summed over a conv window where every tap is read from a +1-padded input (K_all = KH*KW*C):
    y_padded_plus1 = K_all - 2 * popcount(a XOR b)
and the true zero-padded result removes what the padded taps added (x = +1 there, so w):
    y_zero_pad = y_padded_plus1 - sum_{padded taps (c, i, j)} w[o, c, i, j]
"""
import numpy as np

WORD_BITS = 8
PACK_DTYPE = np.uint8


def sign(x):
    """+1 where x >= 0, -1 elsewhere, as float32 (sign(0) = +1)."""
    return np.where(np.asarray(x) >= 0, 1.0, -1.0).astype(np.float32)


def packed_channels(channels):
    """Number of uint8 words that hold `channels` bits."""
    return (int(channels) + WORD_BITS - 1) // WORD_BITS


def pack(x, axis=1):
    """Binarize and bit-pack `x` along `axis` into uint8 (bit 1 = negative, little-endian bits).

    [N, C, H, W] float -> [N, ceil(C/8), H, W] uint8 (axis=1). Channel padding bits are 0.
    """
    bits = np.asarray(x) < 0
    return np.packbits(bits, axis=axis, bitorder="little")


def unpack(packed, channels, axis=1):
    """Inverse of `pack`: uint8 words -> +-1 float32 with `channels` entries along `axis`."""
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=axis, count=channels, bitorder="little")
    return (1.0 - 2.0 * bits).astype(np.float32)


def _conv2d_int(x, w, strides, pads, dilations):
    """Direct integer NCHW conv of int arrays with zero padding. Reference only: simple, not fast.

    x [N, C, H, W], w [O, C, KH, KW], pads (top, left, bottom, right) -> [N, O, OH, OW] int64.
    """
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (dh, dw) = strides, dilations
    top, left, bottom, right = pads
    xp = np.zeros((n, c, h + top + bottom, wd + left + right), dtype=np.int64)
    xp[:, :, top:top + h, left:left + wd] = x
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + left + right - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, o, oh, ow), dtype=np.int64)
    w64 = w.astype(np.int64)
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            out += np.einsum("nchw,oc->nohw", tap, w64[:, :, i, j])
    return out


def _norm_pads(pads):
    pads = tuple(int(p) for p in pads)
    return pads * 2 if len(pads) == 2 else pads  # (ph, pw) -> (top, left, bottom, right)


def binary_conv2d(x_packed, w_packed, channels_in, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1)):
    """Reference binary conv on packed operands: the exact integer sum of +-1 products.

    Zero padding of the +-1 input (padded taps add 0). Returns int32 [N, O, OH, OW].
    """
    x = unpack(x_packed, channels_in, axis=1).astype(np.int64)
    w = unpack(w_packed, channels_in, axis=1).astype(np.int64)
    return _conv2d_int(x, w, strides, _norm_pads(pads), dilations).astype(np.int32)


def border_correction(w_sign, height, width, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1)):
    """What a +1-padding kernel must add to get zero-padding results: [O, OH, OW] int32.

    correction[o, y, x] = - sum over taps of window (y, x) that fall in the padding of w[o, c, i, j].
    It is the conv of (ones inside - 1) = -[padded] with w: exact, and constant away from borders.
    """
    w = np.asarray(w_sign).astype(np.int64)
    o, c, kh, kw = w.shape
    top, left, bottom, right = _norm_pads(pads)
    outside = np.ones((1, c, height + top + bottom, width + left + right), dtype=np.int64)
    outside[:, :, top:top + height, left:left + width] = 0
    corr = _conv2d_int(outside, w, strides, (0, 0, 0, 0), dilations)
    return (-corr[0]).astype(np.int32)


def xnor_popcount_conv2d(x_packed, w_packed, channels_in, height, width, strides=(1, 1),
                         pads=(0, 0, 0, 0), dilations=(1, 1)):
    """The same result as `binary_conv2d`, computed the way a kernel does: XOR + popcount on bytes
    with +1 (0-bit) spatial padding, then K_all - 2*popcount plus the border correction.
    Kept beside the plain reference so the identity in the module docstring is itself tested."""
    xp = np.asarray(x_packed, dtype=np.uint8)
    wp = np.asarray(w_packed, dtype=np.uint8)
    n, cw, h, wd = xp.shape
    o, _, kh, kw = wp.shape
    (sh, sw), (dh, dw) = strides, dilations
    top, left, bottom, right = _norm_pads(pads)
    padded = np.zeros((n, cw, h + top + bottom, wd + left + right), dtype=np.uint8)  # 0 bits = +1
    padded[:, :, top:top + h, left:left + wd] = xp
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + left + right - dw * (kw - 1) - 1) // sw + 1
    popcount_table = np.array([bin(v).count("1") for v in range(256)], dtype=np.int64)
    pop = np.zeros((n, o, oh, ow), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            tap = padded[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            xor = tap[:, None] ^ wp[None, :, :, i, j, None, None]  # [N, O, CW, OH, OW]
            pop += popcount_table[xor].sum(axis=2)
    k_all = kh * kw * channels_in
    w_sign = unpack(wp, channels_in, axis=1)
    corr = border_correction(w_sign, height, width, strides, (top, left, bottom, right), dilations)
    return (k_all - 2 * pop + corr[None]).astype(np.int32)
