"""Binary tensors as bits: sign, bit encoding, channel packing (numpy only).

* sign(x) = +1 if x >= 0 else -1. Zero maps to +1 (as Larq / LCE and QONNX BipolarQuant do;
  torch.sign and ONNX Sign map 0 to 0, a third value no 1-bit kernel can hold).
* Bit encoding: bit 1 means -1, bit 0 means +1 (LCE's convention; it is the float sign bit).
* Packing axis: channels. Container word: uint8, 8 channels per byte. Channel c lives in byte
  c // 8 at bit c % 8 (little-endian bit order: channel 8k is the least significant bit).
* Channel padding: the last byte is filled with 0 bits (+1) in activations *and* weights; since
  XOR of two 0 bits is 0 the padding never changes a popcount, and K (geometry.taps) counts real
  channels only.
* Layouts: packed activations [N, ceil(C/8), H, W]; packed weights [O, ceil(C/8), KH, KW].
"""

import numpy as np

WORD_BITS = 8
PACK_DTYPE = np.uint8


def ceil_div(a, b):
    """ceil(a / b) for non-negative integers."""
    return -(-int(a) // int(b))


def packed_channels(channels, word_bits=WORD_BITS):
    """Number of words of `word_bits` bits that hold `channels` bits: ceil(C / word_bits)."""
    return ceil_div(channels, word_bits)


def packed_weight_shape(channels_out, channels_in, kernel_shape):
    """[O, ceil(C/8), KH, KW]: the shape of a BinaryConv2d's packed weights."""
    return (int(channels_out), packed_channels(channels_in)) + tuple(int(k) for k in kernel_shape)


def sign(x):
    """+1 where x >= 0, -1 elsewhere, as float32 (sign(0) = +1)."""
    return np.where(np.asarray(x) >= 0, 1.0, -1.0).astype(np.float32)


def pack(x, axis=1):
    """Binarize and bit-pack `x` along `axis` into uint8 (bit 1 = negative, little-endian bits).

    [N, C, H, W] float -> [N, ceil(C/8), H, W] uint8 (axis=1). Channel padding bits are 0.
    """
    bits = np.asarray(x) < 0
    return np.packbits(bits, axis=axis, bitorder="little")


def sign_bits(packed, channels, axis=1):
    """uint8 words -> the bits themselves, 0/1 uint8 with `channels` entries along `axis` (1 = -1)."""
    return np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=axis, count=int(channels), bitorder="little")


def unpack(packed, channels, axis=1):
    """Inverse of `pack`: uint8 words -> +-1 float32 with `channels` entries along `axis`."""
    return (1.0 - 2.0 * sign_bits(packed, channels, axis)).astype(np.float32)
