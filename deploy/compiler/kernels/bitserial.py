"""Bitserial (XNOR / popcount) kernels as TE compute definitions, target agnostic.

Schedules live apart, in `bimatting.deploy.compiler.schedules`; `bimatting.deploy.compiler.kernels.params`
prepares the constant operands (weight words, output-transform tables) in numpy.

Internal layout (free to choose inside TVM; the ONNX ops use uint8 NCHW, docs/onnx-ops.md):
* packed activations `[N, V * CW, Hp, Wp]` words (uint64 on x86; uint16 on ARM, uint32 with dotprod), planes of words
  like NCHW: channel c is bit c % B of word c // B (B = word bits), bit 1 = -1, the same
  little-endian order as `bimatting.binops.layout`. A row of one word plane is contiguous, so a
  kernel vectorized over output columns loads its activation words as one vector. The tensor
  carries its own spatial border of 0 bits (+1): `top`/`left` rows/columns before the image, and
  enough after it for every consumer, so a convolution reads without bounds checks. Unused
  channel bits are 0 in activations and weights: XOR drops them.
  V variants: sign(x + bias_v) for several biases of one float tensor (the LearnableBias of each
  branch reading it), packed in one pass over x; variant v is word planes [v * CW, (v + 1) * CW).
* packed weights `[KH, KW, CW, Op]` with the output channels padded to `Op` (a multiple of the
  schedule's vector width; padded filters are never stored).
* popcounts `[N, OH, OWp, Op]` integers as wide as a word (a vector popcount's own lanes: no
  narrowing per word), OWp = OW rounded up to `X_GRANULE`: the register tiles of
  every schedule divide it, so the inner loops need no bounds checks either.

Math (bimatting/binops/reference.py): with a +1 border, `D = K_all - 2 * popcount + corr[y, x, o]`, where
`corr` removes what the border taps added. `corr` only depends on which kernel rows and columns
fall outside the image, so it is a small table indexed by a row class and a column class. D is
computed exactly in int32; the output transform then applies the per-channel float steps the
graph had (scale, bias, LearnableBias, PReLU, ...) in their order, then the SAB mask. Folding
them into one multiply-add would be cheaper but rounds differently from the ONNX graph, and a
binary network turns any rounding difference at a later sign() into a flipped bit.
"""

from dataclasses import dataclass

from tvm import te, tirx

from bimatting.binops import layout as bit_layout
from bimatting.binops.layout import packed_channels

KERNEL_WORD_BITS = {"uint64": 64, "uint32": 32, "uint16": 16}  # the kernels' own words (the ONNX ops use bytes)
X_GRANULE = 8  # output columns are computed in multiples of this (register tiles divide it)


def out_width_padded(geometry):
    """OW rounded up to X_GRANULE: the popcount tensor's width (no bounds checks in the tiles)."""
    return packed_channels(geometry.out_width, X_GRANULE) * X_GRANULE


def rows_read(geometry):
    """Packed rows one output column block reads, counted from the conv's own top pad."""
    g = geometry
    return (g.out_height - 1) * g.strides[0] + (g.kernel[0] - 1) * g.dilations[0] + 1


def cols_read(geometry):
    """Packed columns read (over the padded output width), counted from the conv's left pad."""
    g = geometry
    return (out_width_padded(g) - 1) * g.strides[1] + (g.kernel[1] - 1) * g.dilations[1] + 1


@dataclass(frozen=True)
class PackLayout:
    """Where the image sits inside a packed activation tensor `[N, variants * words, rows, cols]`."""

    top: int
    left: int
    rows: int
    cols: int
    words: int  # per variant
    word_dtype: str
    variants: int = 1

    @property
    def word_stride(self):
        """Words per position: every variant's."""
        return self.variants * self.words

    def shape(self, batch):
        return (batch, self.word_stride, self.rows, self.cols)

    @staticmethod
    def covering(geometries, word_dtype, variants=1):
        """The smallest layout every convolution in `geometries` (same input) can read from."""
        top = max(g.pads[0] for g in geometries)
        left = max(g.pads[1] for g in geometries)
        g0 = geometries[0]
        rows = max(max(top - g.pads[0] + rows_read(g) for g in geometries), top + g0.height)
        cols = max(max(left - g.pads[1] + cols_read(g) for g in geometries), left + g0.width)
        words = packed_channels(g0.channels_in, KERNEL_WORD_BITS[word_dtype])
        return PackLayout(top, left, rows, cols, words, word_dtype, variants)


def _word_bit(bit_set, b, word_dtype):
    """`1 << b` as a word where `bit_set`, else 0."""
    one = tirx.const(1, word_dtype)
    return tirx.Select(bit_set, one << b.astype(word_dtype), tirx.const(0, word_dtype))  # branch-free


def pack_activations(x, layout, bias=None):
    """Binarize and bit-pack a float activation: [N, C, H, W] float32 -> [N, V * CW, rows, cols] words.

    bit (c % B) of word v * CW + c // B is [x[n, c] (+ bias[v, c]) < 0] (bias [V, C], V =
    layout.variants; without bias V = 1); border positions and unused channels are 0 (+1). Two
    stages: the image's words [N, V, CW, H, W] (no spatial bounds checks in the bit loop; every
    variant of a bit from one read of x), then the border.
    """
    n_, channels, height, width = (int(d) for d in x.shape)
    bits = KERNEL_WORD_BITS[layout.word_dtype]
    if bias is None and layout.variants != 1:
        raise ValueError("several pack variants need one bias row each")
    index = str(x.shape[0].ty)  # the loops index x as x's own shape does (int64 from Relax)

    def dim(value):
        return tirx.IntImm(index, value)

    b = te.reduce_axis((dim(0), dim(min(bits, channels))), name="b")  # one word: only its real channels

    def image_word(n, v, k, y, x_):
        c = k * bits + b
        channel = tirx.min(c, channels - 1)
        value = x[n, channel, y, x_] if bias is None else x[n, channel, y, x_] + bias[v, channel]
        negative = tirx.all(c < channels, value < 0)
        return te.sum(_word_bit(negative, b, layout.word_dtype), axis=b)

    shape = tuple(dim(d) for d in (n_, layout.variants, layout.words, height, width))
    words = te.compute(shape, image_word, name="bpack_image")
    return _with_border(words, layout, "bpack")


def _with_border(words, layout, name):
    """[N, V, CW, H, W] words -> [N, V * CW, rows, cols] with 0 words (+1) around the image."""
    height, width = int(words.shape[3]), int(words.shape[4])

    def bordered(n, k, y, x_):
        yy, xx = y - layout.top, x_ - layout.left
        inside = tirx.all(yy >= 0, yy < height, xx >= 0, xx < width)
        value = words[
            n,
            k // layout.words,
            k % layout.words,
            tirx.max(tirx.min(yy, height - 1), 0),
            tirx.max(tirx.min(xx, width - 1), 0),
        ]
        return tirx.if_then_else(inside, value, tirx.const(0, layout.word_dtype))

    return te.compute(layout.shape(int(words.shape[0])), bordered, name=name)


def repack_bytes(x8, channels, layout):
    """Re-pack an ONNX packed activation: [N, ceil(C/8), H, W] uint8 -> [N, CW, rows, cols] words.

    Byte j of a word is uint8 channel-word (k * B/8 + j): the little-endian bit order is kept;
    unused bits of the last byte are already 0 by the ONNX convention.
    """
    del channels
    n_, byte_words, height, width = (int(d) for d in x8.shape)
    per_word = KERNEL_WORD_BITS[layout.word_dtype] // bit_layout.WORD_BITS
    j = te.reduce_axis((0, per_word), name="j")

    if layout.variants != 1:
        raise ValueError("re-packed bytes have one variant")

    def image_word(n, v, k, y, x_):
        byte = k * per_word + j
        value = x8[n, tirx.min(byte, byte_words - 1), y, x_].astype(layout.word_dtype)
        shifted = value << (j * 8).astype(layout.word_dtype)
        return te.sum(tirx.if_then_else(byte < byte_words, shifted, tirx.const(0, layout.word_dtype)), axis=j)

    words = te.compute((n_, 1, layout.words, height, width), image_word, name="brepack_image")
    return _with_border(words, layout, "brepack")


def popcount_accumulator(word_dtype, bits_summed):
    """The popcount sum's type: as wide as a word, so a vector popcount accumulates in its own
    lanes (uint16 words: `cnt` + `uadalp .8h`, no widening per word on NEON), as long as the sum
    of `bits_summed` ones fits; int32 otherwise."""
    if word_dtype == "uint64":
        return "int64"
    if word_dtype == "uint16" and bits_summed < 2**15:
        return "int16"
    return "int32"


def popcount_conv(packed, weights, geometry, layout, variant=0):
    """Sum of popcount(activation XOR weight) over the window: -> [N, OH, OWp, Op] in
    `popcount_accumulator`'s type (int64, int32 or int16).

    packed [N, V * CW, rows, cols] (layout; this conv reads variant `variant`), weights
    [KH, KW, CW, Op] words.
    """
    g = geometry
    kh, kw, words, out_padded = (int(d) for d in weights.shape)
    (sh, sw), (dh, dw) = g.strides, g.dilations
    off_y, off_x = layout.top - g.pads[0], layout.left - g.pads[1]
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    rc = te.reduce_axis((0, words), name="rc")
    word = str(packed.dtype)
    acc = popcount_accumulator(word, kh * kw * words * KERNEL_WORD_BITS[word])

    def count(n, y, x, o):
        a = packed[n, variant * words + rc, y * sh + ry * dh + off_y, x * sw + rx * dw + off_x]
        return te.sum(tirx.popcount(a ^ weights[ry, rx, rc, o]).astype(acc), axis=[ry, rx, rc])

    shape = (int(packed.shape[0]), g.out_height, out_width_padded(g), out_padded)
    return te.compute(shape, count, name="bconv_popcount")


EPILOGUE_KINDS = ("mul", "add", "prelu", "residual")


def _rounded(product):
    """A product rounded to float32 on its own: LLVM may not fuse it with a later add into an
    FMA (one rounding instead of the graph's two), which would make the kernel's output differ
    from the ONNX graph's in the last bit, and a later sign() flip."""
    return tirx.call_llvm_pure_intrin("float32", "llvm.arithmetic.fence", product)


def _class_runs(classes):
    """Runs of equal class along one axis: [(end, class)], `end` exclusive, in order."""
    runs = []
    for position, cls in enumerate(int(c) for c in classes):
        if runs and runs[-1][1] == cls:
            runs[-1] = (position + 1, cls)
        else:
            runs.append((position + 1, cls))
    return runs


def _by_runs(index, runs, value_of):
    """value_of(class of `index`), written as a chain of compares on `index` (runs from
    _class_runs): no table read with a computed address, so a vector of columns needs no gather."""
    value = value_of(runs[-1][1])
    for end, cls in reversed(runs[:-1]):
        value = tirx.Select(index < end, value_of(cls), value)
    return value


def output_transform(pop, base, row_class, col_class, *, steps, kinds, geometry, mask=None, residual=None):
    """Popcounts -> float NCHW output [N, O, OH, OW] (module docstring for the algebra).

    base [row classes, col classes, Op] int32 = K_all + corr, so D = base - 2 * popcount is the
    exact integer dot product; row_class [OH], col_class [OW]: numpy int arrays, constants of the
    kernel's code (a run of equal classes is one compare: the columns of a vector share a class
    except at the image's edges). Then the per-channel float
    steps (`kinds[i]` with operand steps[i, :Op]: "mul" v*s, "add" v+s, "prelu" v<0 ? v*s : v)
    in the order the graph applies them, so every float rounding matches the ONNX graph's;
    "residual" adds residual [N, O, OH, OW] (the block's shortcut) at its place in that order.
    mask [N, 1, OH, OW]: the value is kept where mask != 0, else exactly 0.
    PReLU is written with max / min: as a select, LLVM compiles it to a branch, mispredicted on
    half the values of a sign-balanced layer (1x1 35->16 at 288x512 with PReLU: 23 -> 2.8 ms).
    """
    n_ = int(pop.shape[0])
    g = geometry
    row_runs, col_runs = _class_runs(row_class), _class_runs(col_class)

    def transform(n, o, y, x):
        row = _by_runs(y, row_runs, lambda cls: tirx.const(cls, "int32"))
        dot = _by_runs(x, col_runs, lambda cls: base[row, cls, o]) - 2 * pop[n, y, x, o].astype("int32")
        value = dot.astype("float32")
        for i, kind in enumerate(kinds):
            operand = steps[i, o]
            if kind == "mul":
                value = _rounded(value * operand)
            elif kind == "add":
                value = value + operand
            elif kind == "residual":
                value = value + residual[n, o, y, x]
            else:
                # PReLU without a branch: exactly the graph's value (adding a zero is exact; only
                # the sign of a zero result may differ, which no later sign() or add sees).
                zero = tirx.const(0, "float32")
                value = tirx.max(value, zero) + _rounded(tirx.min(value, zero) * operand)
        if mask is not None:
            value = tirx.Select(mask[n, 0, y, x] != 0, value, tirx.const(0, "float32"))
        return value

    return te.compute((n_, g.channels_out, g.out_height, g.out_width), transform, name="bconv_output")


def binarize_pack_bytes(x):
    """The ONNX BinarizePack op itself: [N, C, H, W] float -> [N, ceil(C/8), H, W] uint8."""
    n_, channels, height, width = (int(d) for d in x.shape)
    byte_bits = bit_layout.WORD_BITS
    b = te.reduce_axis((0, byte_bits), name="b")

    def packed(n, k, y, x_):
        c = k * byte_bits + b
        value = x[n, tirx.min(c, channels - 1), y, x_]
        return te.sum(_word_bit(tirx.all(c < channels, value < 0), b, "uint8"), axis=b)

    return te.compute((n_, packed_channels(channels), height, width), packed, name="binarize_pack")


def unpack_bytes(x8, channels):
    """The ONNX Unpack op: [N, ceil(C/8), H, W] uint8 -> +-1 float32 [N, C, H, W]."""
    n_, _, height, width = (int(d) for d in x8.shape)

    def unpacked(n, c, y, x_):
        byte_bits = bit_layout.WORD_BITS
        bit = (x8[n, c // byte_bits, y, x_] >> (c % byte_bits).astype("uint8")) & tirx.const(1, "uint8")
        return tirx.const(1.0, "float32") - tirx.const(2.0, "float32") * bit.astype("float32")

    return te.compute((n_, int(channels), height, width), unpacked, name="unpack")
