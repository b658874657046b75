"""The ai.bimatting ops as shipped: function bodies run by onnxruntime and onnx.reference.

References are independent of the bodies: bimatting.binops.reference (numpy, unpack + integer conv) and
torch's float conv of the +-1 tensors. Binary dot products are integers (|D| <= KH*KW*C < 2^24),
so every comparison of D is exact equality; only the fused float scale/bias is compared with a
1-ulp-level tolerance.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from bimatting.binops import functions as op_functions, layout, reference as numpy_reference, schema


def _op_model(op_type, inputs, out_type, attrs, opset=schema.MIN_OPSET):
    """A one-node model calling `op_type`, its function shipped in the model."""
    infos = [helper.make_tensor_value_info(name, elem, shape) for name, elem, shape in inputs]
    node = schema.make_node(op_type, [name for name, _, _ in inputs], ["out"], name="op", **attrs)
    out = helper.make_tensor_value_info("out", out_type, ["y0", "y1", "y2", "y3"])
    graph = helper.make_graph([node], op_type, infos, [out])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(schema.DOMAIN, schema.DOMAIN_VERSION)],
        functions=op_functions.functions(opset, used={op_type}),
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _run_ort(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _conv_model(channels_in, masked=False, **attrs):
    dims4 = lambda p: [f"{p}{i}" for i in range(4)]  # noqa: E731
    inputs = [
        ("X", TensorProto.UINT8, dims4("x")),
        ("W", TensorProto.UINT8, dims4("w")),
        ("scale", TensorProto.FLOAT, ["o"]),
        ("bias", TensorProto.FLOAT, ["o"]),
    ]
    if masked:
        inputs.append(("mask", TensorProto.FLOAT, dims4("m")))
    return _op_model(
        "BinaryConv2dMasked" if masked else "BinaryConv2d",
        inputs,
        TensorProto.FLOAT,
        dict(channels_in=channels_in, **attrs),
    )


def _random_activation(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[::7] = 0.0  # sign(0) = +1 must hold in the body too
    x.flat[3::11] = -0.0  # -0.0 is not < 0: +1
    return x


def test_worked_example_of_the_doc():
    # docs/onnx-ops.md: x = [0.5, -2, 0] -> byte 2, w = [-0.3, -0.1, 0.7] -> byte 3, D = 1, Y = 0.75.
    x = np.array([0.5, -2.0, 0.0], np.float32).reshape(1, 3, 1, 1)
    w = np.array([-0.3, -0.1, 0.7], np.float32).reshape(1, 3, 1, 1)
    pack = _op_model("BinarizePack", [("X", TensorProto.FLOAT, ["n", 3, "h", "w"])], TensorProto.UINT8, {})
    x_packed = _run_ort(pack, {"X": x})
    assert x_packed.dtype == np.uint8 and x_packed.ravel().tolist() == [2]
    assert numpy_reference.pack_weights(w).ravel().tolist() == [3]
    conv = _conv_model(3, kernel_shape=[1, 1])
    y = _run_ort(
        conv,
        {
            "X": x_packed,
            "W": numpy_reference.pack_weights(w),
            "scale": np.array([0.5], np.float32),
            "bias": np.array([0.25], np.float32),
        },
    )
    assert y.ravel().tolist() == [0.75]


@pytest.mark.parametrize("channels", [1, 3, 8, 20, 35, 195])
def test_binarize_pack_and_unpack_match_the_bit_layout(channels):
    rng = np.random.default_rng(channels)
    x = _random_activation(rng, (2, channels, 5, 7))
    pack = _op_model("BinarizePack", [("X", TensorProto.FLOAT, ["n", "c", "h", "w"])], TensorProto.UINT8, {})
    packed = _run_ort(pack, {"X": x})
    assert packed.shape == (2, layout.packed_channels(channels), 5, 7)
    np.testing.assert_array_equal(packed, layout.pack(x))
    # channel padding bits are 0
    if channels % 8:
        assert not np.any(packed[:, -1] >> (channels % 8))
    unpack = _op_model(
        "Unpack", [("Y", TensorProto.UINT8, ["n", "cw", "h", "w"])], TensorProto.FLOAT, {"channels": channels}
    )
    np.testing.assert_array_equal(_run_ort(unpack, {"Y": packed}), layout.sign(x))


# (C_in, C_out, kernel, stride, dilation, pads [top, left, bottom, right], H, W)
CONV_CASES = [
    (3, 16, 3, 2, 1, [1, 1, 1, 1], 9, 12),
    (20, 11, 3, 1, 1, [1, 1, 1, 1], 7, 6),
    (20, 11, 3, 2, 1, [1, 1, 1, 1], 7, 6),
    (35, 16, 3, 1, 1, [1, 1, 1, 1], 5, 9),
    (35, 8, 1, 1, 1, [0, 0, 0, 0], 5, 9),
    (195, 13, 3, 1, 1, [1, 1, 1, 1], 4, 5),
    (195, 9, 1, 2, 1, [0, 0, 0, 0], 5, 4),
    (20, 7, 3, 1, 2, [2, 2, 2, 2], 8, 7),
    (13, 5, 3, 2, 1, [0, 1, 2, 0], 6, 7),
]


def _torch_pm1_conv(x, w, stride, dilation, pads):
    """Float conv of the +-1 tensors in torch, zero padding (pads in ONNX order)."""
    top, left, bottom, right = pads
    xs = torch.nn.functional.pad(torch.from_numpy(layout.sign(x)), (left, right, top, bottom))
    ws = torch.from_numpy(layout.sign(w))
    return torch.nn.functional.conv2d(xs, ws, stride=stride, dilation=dilation).numpy()


@pytest.mark.parametrize("c_in,c_out,k,stride,dilation,pads,h,w", CONV_CASES)
def test_binary_conv2d_is_the_exact_pm1_convolution(c_in, c_out, k, stride, dilation, pads, h, w):
    rng = np.random.default_rng(c_in * 100 + c_out)
    x = _random_activation(rng, (2, c_in, h, w))
    weight = rng.standard_normal((c_out, c_in, k, k)).astype(np.float32)
    attrs = dict(kernel_shape=[k, k], strides=[stride, stride], pads=pads, dilations=[dilation, dilation])
    model = _conv_model(c_in, **attrs)
    feeds = {
        "X": layout.pack(x),
        "W": numpy_reference.pack_weights(weight),
        "scale": np.ones(c_out, np.float32),
        "bias": np.zeros(c_out, np.float32),
    }
    dot = _run_ort(model, feeds)
    expected_dot = numpy_reference.binary_conv2d(
        feeds["X"], feeds["W"], c_in, strides=(stride, stride), pads=pads, dilations=(dilation, dilation)
    )
    np.testing.assert_array_equal(dot, expected_dot.astype(np.float32))
    np.testing.assert_array_equal(dot, _torch_pm1_conv(x, weight, stride, dilation, pads))
    # border positions are really there: the zero-padding correction is non-zero at some border
    if any(pads):
        plus_one_padded = numpy_reference.xnor_popcount_conv2d(
            feeds["X"], feeds["W"], c_in, h, w, strides=(stride, stride), pads=pads, dilations=(dilation, dilation)
        )
        np.testing.assert_array_equal(dot, plus_one_padded.astype(np.float32))
        corr = numpy_reference.border_correction(
            layout.sign(weight), h, w, strides=(stride, stride), pads=pads, dilations=(dilation, dilation)
        )
        assert np.any(corr != 0)
    # fused per-channel output transform
    feeds["scale"] = rng.uniform(0.01, 2.0, c_out).astype(np.float32)
    feeds["bias"] = rng.standard_normal(c_out).astype(np.float32)
    attrs_all = dict(channels_in=c_in, **attrs)
    expected = numpy_reference.execute("BinaryConv2d", [feeds[k_] for k_ in ("X", "W", "scale", "bias")], attrs_all)[0]
    # same float32 Mul then Add as the reference: at most rounding of one op apart
    np.testing.assert_allclose(_run_ort(model, feeds), expected, rtol=1e-6, atol=1e-6)


def test_binary_conv2d_masked_is_zero_exactly_where_mask_is_unset():
    rng = np.random.default_rng(7)
    c_in, c_out, h, w = 35, 12, 9, 11
    x = _random_activation(rng, (1, c_in, h, w))
    weight = rng.standard_normal((c_out, c_in, 3, 3)).astype(np.float32)
    mask = rng.uniform(0, 1, (1, 1, h, w)).astype(np.float32)
    mask[mask < 0.6] = 0.0  # soft (bilinear) mask values: nonzero means "compute"
    feeds = {
        "X": layout.pack(x),
        "W": numpy_reference.pack_weights(weight),
        "scale": rng.uniform(0.1, 1, c_out).astype(np.float32),
        "bias": rng.standard_normal(c_out).astype(np.float32),
    }
    attrs = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1])
    dense = _run_ort(_conv_model(c_in, **attrs), feeds)
    masked = _run_ort(_conv_model(c_in, masked=True, **attrs), dict(feeds, mask=mask))
    unset = np.broadcast_to(mask == 0, masked.shape)
    assert unset.any() and (~unset).any()
    assert np.all(masked[unset] == 0.0)
    np.testing.assert_array_equal(masked[~unset], dense[~unset])
    expected = numpy_reference.execute(
        "BinaryConv2dMasked",
        [feeds["X"], feeds["W"], feeds["scale"], feeds["bias"], mask],
        dict(channels_in=c_in, **attrs),
    )[0]
    np.testing.assert_allclose(masked, expected, rtol=1e-6, atol=1e-6)


def test_onnx_reference_evaluator_runs_the_functions():
    rng = np.random.default_rng(3)
    x = _random_activation(rng, (1, 20, 6, 5))
    weight = rng.standard_normal((6, 20, 3, 3)).astype(np.float32)
    pack = _op_model("BinarizePack", [("X", TensorProto.FLOAT, ["n", "c", "h", "w"])], TensorProto.UINT8, {})
    packed = ReferenceEvaluator(pack).run(None, {"X": x})[0]
    np.testing.assert_array_equal(packed, layout.pack(x))
    model = _conv_model(20, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1])
    feeds = {
        "X": packed,
        "W": numpy_reference.pack_weights(weight),
        "scale": np.ones(6, np.float32),
        "bias": np.zeros(6, np.float32),
    }
    dot = ReferenceEvaluator(model).run(None, feeds)[0]
    np.testing.assert_array_equal(
        dot, numpy_reference.binary_conv2d(packed, feeds["W"], 20, strides=(2, 2), pads=(1, 1, 1, 1))
    )


def test_function_bodies_are_standard_ops_and_need_opset_18():
    for function in op_functions.functions():
        assert function.domain == schema.DOMAIN
        assert {n.domain for n in function.node} <= {""}  # standard ops only
        assert [o.version for o in function.opset_import if o.domain == ""] == [schema.MIN_OPSET]
    with pytest.raises(ValueError, match="opset >= 18"):
        op_functions.functions(17)


def test_make_node_checks_the_schema():
    with pytest.raises(ValueError, match="channels_in"):
        schema.make_node("BinaryConv2d", ["x", "w", "s", "b"], ["y"], kernel_shape=[3, 3])
    with pytest.raises(ValueError, match="group"):
        schema.make_node("BinaryConv2d", ["x", "w", "s", "b"], ["y"], channels_in=3, kernel_shape=[1, 1], group=2)
    node = schema.make_node("BinaryConv2d", ["x", "w", "s", "b"], ["y"], channels_in=3, kernel_shape=[1, 1])
    assert schema.node_attributes(node)["pads"] == [0, 0, 0, 0]  # defaults are written explicitly
