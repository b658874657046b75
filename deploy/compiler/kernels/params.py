"""Compile-time operands of the bitserial kernels, computed once in numpy.

* `weight_words`: ONNX packed weights [O, ceil(C/8), KH, KW] uint8 -> [KH, KW, CW, Op] words.
* `border_classes`: which kernel rows / columns of each output row / column read the padding,
  as class indices plus the zero-padding correction per (row class, column class, o).
* `exact_base`, `epilogue_operands`: K_all + correction (int32) and the per-channel float steps
  of the output transform (algebra in bitserial.py and bimatting/binops/reference.py).

Geometry, bit layout and the correction formula are the contract's (bimatting.binops); this
module only lays their results out for the kernels.
"""

import numpy as np

from bimatting.binops import layout, reference
from bimatting.deploy.compiler.kernels.bitserial import KERNEL_WORD_BITS

NUMPY_WORDS = {"uint64": np.dtype("<u8"), "uint32": np.dtype("<u4"), "uint16": np.dtype("<u2")}


def weight_words(w_packed, channels_in, word_dtype, out_padded):
    """Packed ONNX weights -> [KH, KW, CW, Op] words; channels and outputs past the real ones are 0."""
    bits = layout.sign_bits(w_packed, channels_in)  # [O, C, KH, KW], 1 = -1
    o, c, kh, kw = bits.shape
    word_bits = KERNEL_WORD_BITS[word_dtype]
    words = layout.packed_channels(c, word_bits)
    padded = np.zeros((kh, kw, out_padded, words * word_bits), np.uint8)
    padded[:, :, :o, :c] = bits.transpose(2, 3, 0, 1)
    as_bytes = np.packbits(padded, axis=-1, bitorder="little")  # [KH, KW, Op, CW * B/8]
    as_words = np.ascontiguousarray(as_bytes).view(NUMPY_WORDS[word_dtype])  # little-endian words
    return np.ascontiguousarray(as_words.transpose(0, 1, 3, 2)).astype(np.dtype(word_dtype))


def border_classes(w_packed, geometry):
    """Row / column classes and the zero-padding correction table.

    Output rows (columns) whose kernel rows (columns) read the same image/padding pattern share a
    class; returns row_class [OH] int32, col_class [OW] int32 and corr [row classes, col classes, O]
    int32, reference.border_correction_table evaluated once per class.
    """
    g = geometry
    w_sign = layout.unpack(w_packed, g.channels_in, axis=1)  # [O, C, KH, KW] +-1
    row_sets, row_class = np.unique(g.valid_rows(), axis=0, return_inverse=True)
    col_sets, col_class = np.unique(g.valid_cols(), axis=0, return_inverse=True)
    corr = reference.border_correction_table(w_sign, row_sets, col_sets)
    return row_class.reshape(-1).astype(np.int32), col_class.reshape(-1).astype(np.int32), corr


def exact_base(corr, geometry, out_padded):
    """K_all + corr as int32 [rows, cols, Op]: D = base - 2 * popcount."""
    base = np.zeros(corr.shape[:2] + (out_padded,), np.int32)
    base[:, :, : geometry.channels_out] = geometry.taps + corr
    return base


def epilogue_operands(steps, channels, out_padded):
    """[(kind, per-channel values)] -> (kinds tuple, float32 [S, Op]) with values broadcast."""
    kinds = tuple(kind for kind, _ in steps)
    table = np.zeros((max(len(steps), 1), out_padded), np.float32)
    for i, (_, values) in enumerate(steps):
        table[i, :channels] = np.broadcast_to(np.asarray(values, np.float32).reshape(-1), (channels,))
    return kinds, table
