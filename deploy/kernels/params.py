"""Compile-time operands of the bitserial kernels, computed once in numpy.

* `weight_words`: ONNX packed weights [O, ceil(C/8), KH, KW] uint8 -> [KH, KW, CW, Op] words.
* `border_classes`: which kernel rows / columns of each output row / column read the padding,
  as class indices plus the zero-padding correction per (row class, column class, o).
* `exact_base`, `epilogue_operands`: K_all + correction (int32) and the per-channel float steps
  of the output transform (algebra in bitserial.py and bimatting/bitpack.py).
"""
import numpy as np

from bimatting.deploy.kernels.bitserial import WORD_BITS, ceil_div

NUMPY_WORDS = {"uint64": np.dtype("<u8"), "uint32": np.dtype("<u4")}


def sign_bits(w_packed, channels_in):
    """[O, ceil(C/8), KH, KW] uint8 -> bits [O, C, KH, KW] uint8 (1 = -1)."""
    return np.unpackbits(np.asarray(w_packed, np.uint8), axis=1, count=channels_in, bitorder="little")


def weight_words(w_packed, channels_in, word_dtype, out_padded):
    """Packed ONNX weights -> [KH, KW, CW, Op] words; channels and outputs past the real ones are 0."""
    bits = sign_bits(w_packed, channels_in)  # [O, C, KH, KW]
    o, c, kh, kw = bits.shape
    word_bits = WORD_BITS[word_dtype]
    words = ceil_div(c, word_bits)
    padded = np.zeros((kh, kw, out_padded, words * word_bits), np.uint8)
    padded[:, :, :o, :c] = bits.transpose(2, 3, 0, 1)
    as_bytes = np.packbits(padded, axis=-1, bitorder="little")  # [KH, KW, Op, CW * B/8]
    as_words = np.ascontiguousarray(as_bytes).view(NUMPY_WORDS[word_dtype])  # little-endian words
    return np.ascontiguousarray(as_words.transpose(0, 1, 3, 2)).astype(np.dtype(word_dtype))


def _valid_taps(out_size, in_size, kernel, stride, pad_before, dilation):
    """[out_size, kernel] bool: tap i of output position y reads inside the image."""
    pos = np.arange(out_size)[:, None] * stride + np.arange(kernel)[None, :] * dilation - pad_before
    return (pos >= 0) & (pos < in_size)


def border_classes(w_packed, geometry):
    """Row / column classes and the zero-padding correction table.

    Returns row_class [OH] int32, col_class [OW] int32, corr [rows, cols, O] int32 with
    corr = -(sum over padded taps of w) = -(sum_all w - sum_{valid i, valid j} wsum[o, i, j]).
    """
    g = geometry
    w_sign = 1 - 2 * sign_bits(w_packed, g.channels_in).astype(np.int64)  # [O, C, KH, KW] +-1
    wsum = w_sign.sum(axis=1)  # [O, KH, KW]
    rows = _valid_taps(g.out_height, g.height, g.kernel[0], g.strides[0], g.pads[0], g.dilations[0])
    cols = _valid_taps(g.out_width, g.width, g.kernel[1], g.strides[1], g.pads[1], g.dilations[1])
    row_sets, row_class = np.unique(rows, axis=0, return_inverse=True)
    col_sets, col_class = np.unique(cols, axis=0, return_inverse=True)
    valid_sum = np.einsum("ri,cj,oij->rco", row_sets.astype(np.int64), col_sets.astype(np.int64), wsum)
    corr = -(wsum.sum(axis=(1, 2))[None, None, :] - valid_sum)
    return (row_class.reshape(-1).astype(np.int32), col_class.reshape(-1).astype(np.int32),
            corr.astype(np.int32))


def exact_base(corr, geometry, out_padded):
    """K_all + corr as int32 [rows, cols, Op]: D = base - 2 * popcount."""
    base = np.zeros(corr.shape[:2] + (out_padded,), np.int32)
    base[:, :, :geometry.channels_out] = geometry.taps + corr
    return base


def epilogue_operands(steps, channels, out_padded):
    """[(kind, per-channel values)] -> (kinds tuple, float32 [S, Op]) with values broadcast."""
    kinds = tuple(kind for kind, _ in steps)
    table = np.zeros((max(len(steps), 1), out_padded), np.float32)
    for i, (_, values) in enumerate(steps):
        table[i, :channels] = np.broadcast_to(np.asarray(values, np.float32).reshape(-1), (channels,))
    return kinds, table
