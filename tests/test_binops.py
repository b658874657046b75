"""The binary-op contract (bimatting.binops) against a direct float conv of +-1 tensors.

The reference conv here is deliberately naive (one window at a time, float64, explicit padding),
so it shares no code with the contract's geometry or its integer conv. Every case uses odd sizes
and covers strides, dilations and asymmetric padding; results are integers, compared exactly.
"""

import numpy as np
import pytest

from bimatting.binops import functions as op_functions, layout, reference, schema
from bimatting.binops.geometry import ConvGeometry, output_size
from bimatting.deploy.compiler.kernels import params
from bimatting.errors import InputError

# (H, W, C, O, kernel, strides, pads (top, left, bottom, right), dilations)
CASES = [
    (7, 9, 5, 3, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (9, 7, 13, 4, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    (11, 5, 9, 2, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),
    (5, 11, 3, 3, (5, 3), (3, 2), (2, 1, 0, 1), (1, 2)),
    (7, 7, 17, 5, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),
    (3, 5, 8, 2, (3, 5), (1, 1), (0, 2, 1, 0), (1, 1)),
    (9, 9, 1, 1, (3, 3), (2, 1), (1, 0, 1, 0), (3, 1)),
]


def direct_float_conv(x, w, strides, pads, dilations, pad_value=0.0):
    """[C, H, W] x [O, C, KH, KW] -> [O, OH, OW] float64; the padding holds `pad_value`."""
    c, h, wd = x.shape
    o, _, kh, kw = w.shape
    top, left, bottom, right = pads
    padded = np.full((c, h + top + bottom, wd + left + right), pad_value, np.float64)
    padded[:, top : top + h, left : left + wd] = x
    rows = []
    y = 0
    while y + (kh - 1) * dilations[0] < padded.shape[1]:
        cols = []
        x0 = 0
        while x0 + (kw - 1) * dilations[1] < padded.shape[2]:
            window = padded[
                :,
                y : y + (kh - 1) * dilations[0] + 1 : dilations[0],
                x0 : x0 + (kw - 1) * dilations[1] + 1 : dilations[1],
            ]
            cols.append(np.einsum("chw,ochw->o", window, w))
            x0 += strides[1]
        rows.append(cols)
        y += strides[0]
    return np.asarray(rows, np.float64).transpose(2, 0, 1)


def _case(case, seed=0):
    h, wd, c, o, kernel, strides, pads, dilations = case
    rng = np.random.default_rng(seed)
    x = layout.sign(rng.standard_normal((c, h, wd)))
    w = layout.sign(rng.standard_normal((o, c) + kernel))
    geometry = ConvGeometry(h, wd, c, o, kernel, strides, pads, dilations)
    return geometry, x, w


@pytest.mark.parametrize("case", CASES)
def test_geometry_output_size_and_taps_match_a_direct_conv(case):
    g, x, w = _case(case)
    direct = direct_float_conv(x, w, g.strides, g.pads, g.dilations)
    assert direct.shape == (g.channels_out, g.out_height, g.out_width)
    assert g.taps == w[0].size == g.kernel[0] * g.kernel[1] * g.channels_in


@pytest.mark.parametrize("case", CASES)
def test_reference_conv_is_the_zero_padded_float_conv(case):
    g, x, w = _case(case)
    got = reference.binary_conv2d(
        layout.pack(x[None]), layout.pack(w), g.channels_in, strides=g.strides, pads=g.pads, dilations=g.dilations
    )
    np.testing.assert_array_equal(got[0], direct_float_conv(x, w, g.strides, g.pads, g.dilations))


@pytest.mark.parametrize("case", CASES)
def test_border_correction_turns_plus_one_padding_into_zero_padding(case):
    g, x, w = _case(case)
    plus_one = direct_float_conv(x, w, g.strides, g.pads, g.dilations, pad_value=1.0)
    zero = direct_float_conv(x, w, g.strides, g.pads, g.dilations, pad_value=0.0)
    corr = reference.border_correction(w, g.height, g.width, strides=g.strides, pads=g.pads, dilations=g.dilations)
    np.testing.assert_array_equal(plus_one + corr, zero)
    # The XNOR/popcount route (the kernels' arithmetic) lands on the same integers.
    pop = reference.xnor_popcount_conv2d(
        layout.pack(x[None]),
        layout.pack(w),
        g.channels_in,
        g.height,
        g.width,
        strides=g.strides,
        pads=g.pads,
        dilations=g.dilations,
    )
    np.testing.assert_array_equal(pop[0], zero)


@pytest.mark.parametrize("case", CASES)
def test_valid_taps_say_which_taps_read_the_image(case):
    g, _, _ = _case(case)
    rows, cols = g.valid_rows(), g.valid_cols()
    for y in range(g.out_height):
        for i in range(g.kernel[0]):
            assert rows[y, i] == (0 <= y * g.strides[0] + i * g.dilations[0] - g.pads[0] < g.height)
    for x in range(g.out_width):
        for j in range(g.kernel[1]):
            assert cols[x, j] == (0 <= x * g.strides[1] + j * g.dilations[1] - g.pads[1] < g.width)


@pytest.mark.parametrize("case", CASES)
def test_geometry_from_a_node_and_as_ints(case):
    g, _, _ = _case(case)
    node = schema.make_node(
        "BinaryConv2d",
        ["x", "w", "s", "b"],
        ["y"],
        channels_in=g.channels_in,
        kernel_shape=list(g.kernel),
        strides=list(g.strides),
        pads=list(g.pads),
        dilations=list(g.dilations),
    )
    assert ConvGeometry.from_node(node, g.height, g.width, g.channels_out) == g
    assert ConvGeometry.ints_from_attributes(schema.node_attributes(node)) == g.to_ints()
    assert ConvGeometry.from_ints(g.to_ints(), g.height, g.width, g.channels_in, g.channels_out) == g


def test_geometry_from_a_node_takes_the_schema_defaults():
    node = schema.make_node("BinaryConv2d", ["x", "w", "s", "b"], ["y"], channels_in=5, kernel_shape=[3, 3])
    required = [a for a in node.attribute if a.name in ("channels_in", "kernel_shape")]
    del node.attribute[:]
    node.attribute.extend(required)  # a file may leave the optional attributes out
    g = ConvGeometry.from_node(node, 7, 9, 4)
    assert (g.strides, g.pads, g.dilations) == ((1, 1), (0, 0, 0, 0), (1, 1))
    assert (g.out_height, g.out_width) == (5, 7)
    del node.attribute[:]
    with pytest.raises(InputError, match="lacks attribute 'channels_in'"):
        ConvGeometry.from_node(node, 7, 9, 4)


def test_output_size_is_onnx_convs():
    # ONNX Conv / torch Conv2d: floor((in + pads - dilation * (k - 1) - 1) / stride) + 1
    assert output_size(9, 3, stride=2, pad_before=1, pad_after=1) == 5
    assert output_size(10, 3, stride=2, pad_before=1, pad_after=1) == 5
    assert output_size(7, 3, dilation=3) == 1


@pytest.mark.parametrize("channels", [1, 7, 8, 9, 16, 35, 64, 195])
def test_packing_layout(channels):
    assert layout.packed_channels(channels) == -(-channels // 8)
    assert layout.packed_weight_shape(4, channels, (3, 1)) == (4, -(-channels // 8), 3, 1)
    x = np.random.default_rng(channels).standard_normal((2, channels, 3, 5))
    packed = layout.pack(x)
    assert packed.dtype == np.uint8 and packed.shape == (2, layout.packed_channels(channels), 3, 5)
    np.testing.assert_array_equal(layout.unpack(packed, channels), layout.sign(x))
    np.testing.assert_array_equal(layout.sign_bits(packed, channels), (x < 0).astype(np.uint8))


def test_sign_of_zero_is_plus_one_and_bit_one_is_minus_one():
    assert layout.sign(np.array([0.0, -0.0]))[0] == 1.0
    assert layout.pack(np.array([[-1.0, 1.0, 0.0]]).reshape(1, 3, 1, 1)).ravel().tolist() == [1]


def test_function_bodies_carry_the_schema_defaults():
    for function in op_functions.functions():
        defaults = {a.name: list(a.ints) for a in function.attribute_proto}
        assert defaults == {k: v for k, v in schema.node_defaults(function.name).items()}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("word", ["uint16", "uint32", "uint64"])
def test_kernel_parameters_follow_the_contract(case, word):
    """deploy/compiler/kernels/params.py: per-class border tables, the exact base and the weight words."""
    g, _, w = _case(case, seed=1)
    w_packed = layout.pack(w)
    row_class, col_class, corr = params.border_classes(w_packed, g)
    per_position = corr[row_class][:, col_class].transpose(2, 0, 1)  # [O, OH, OW]
    np.testing.assert_array_equal(
        per_position,
        reference.border_correction(w, g.height, g.width, strides=g.strides, pads=g.pads, dilations=g.dilations),
    )
    out_padded = 8 * layout.ceil_div(g.channels_out, 8)
    base = params.exact_base(corr, g, out_padded)
    np.testing.assert_array_equal(base[:, :, : g.channels_out], g.taps + corr)
    assert not base[:, :, g.channels_out :].any()

    words = params.weight_words(w_packed, g.channels_in, word, out_padded)  # [KH, KW, CW, Op]
    word_bits = params.KERNEL_WORD_BITS[word]
    assert words.shape == g.kernel + (layout.packed_channels(g.channels_in, word_bits), out_padded)
    word_bytes = words.view(np.uint8).reshape(words.shape + (word_bits // 8,))  # little-endian words
    as_bits = np.unpackbits(
        word_bytes.transpose(0, 1, 2, 4, 3).reshape(g.kernel + (-1, out_padded)), axis=2, bitorder="little"
    )  # [KH, KW, CW * B, Op], bit c = channel c
    np.testing.assert_array_equal(as_bits[:, :, : g.channels_in, : g.channels_out], (w < 0).transpose(2, 3, 1, 0))
    assert not as_bits[:, :, g.channels_in :].any() and not as_bits[:, :, :, g.channels_out :].any()
