"""The ONNX function body of each `ai.bimatting` op, built from standard ops (opset >= 18).

Each op ships in an exported file as a model-local function, so onnxruntime, `onnx.reference` and
Netron run and show the file unchanged while a compiler recognises the op by (domain, name) and
ignores the body. The bodies use BitwiseAnd (new in opset 18) and ReduceSum with `axes` as an input.

Bodies are exact: Unpack yields +-1 floats, the float Conv of +-1 operands sums integers of
magnitude <= KH*KW*C < 2^24, which float32 represents exactly in any summation order. Bit order
and encoding are layout.py's; attributes and defaults schema.py's.
"""

import numpy as np
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from bimatting.binops.schema import DOMAIN, MIN_OPSET, OP_SCHEMAS, check_opset

_INT, _INTS = AttributeProto.INT, AttributeProto.INTS


class _Body:
    """Collects the nodes of one function body with short unique value names."""

    def __init__(self):
        self.nodes = []
        self._count = 0

    def __call__(self, op_type, inputs, n_out=1, **attrs):
        outputs = []
        for _ in range(n_out):
            self._count += 1
            outputs.append(f"t{self._count}")
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, **attrs))
        return outputs[0] if n_out == 1 else outputs

    def const(self, array):
        array = np.asarray(array)
        return self("Constant", [], value=numpy_helper.from_array(array))

    def ref_node(self, op_type, inputs, refs, **attrs):
        """A node whose attributes `refs` {inner name: (function attribute, type)} are references."""
        out = self(op_type, inputs, **attrs)
        node = self.nodes[-1]
        for inner, (outer, kind) in refs.items():
            node.attribute.append(helper.make_attribute_ref(inner, kind, ref_attr_name=outer))
        return out


def _unpack_body(body, packed, channels_attr):
    """Emit Unpack inline: uint8 [N, CW, H, W] -> float32 +-1 [N, C, H, W], C from an attribute.

    Also serves packed weights [O, CW, KH, KW]: the layouts share the axis order.
    """
    shifts = body.const(np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1, 1))
    one = body.const(np.array(1, dtype=np.uint8))
    words = body("Unsqueeze", [packed, body.const(np.array([2], dtype=np.int64))])  # [N, CW, 1, H, W]
    shifted = body("BitShift", [words, shifts], direction="RIGHT")  # [N, CW, 8, H, W]
    bits = body("BitwiseAnd", [shifted, one])  # bit b of each word, 0/1
    shape = body("Shape", [packed])  # [N, CW, H, W]
    n = body("Slice", [shape, body.const(np.array([0])), body.const(np.array([1]))])
    words_c = body("Slice", [shape, body.const(np.array([1])), body.const(np.array([2]))])
    hw = body("Slice", [shape, body.const(np.array([2])), body.const(np.array([4]))])
    channels8 = body("Mul", [words_c, body.const(np.array([8], dtype=np.int64))])
    flat = body("Reshape", [bits, body("Concat", [n, channels8, hw], axis=0)])  # [N, 8*CW, H, W]
    channels = _channels_tensor(body, channels_attr)
    real = body("Slice", [flat, body.const(np.array([0])), channels, body.const(np.array([1]))])
    as_float = body("Cast", [real], to=TensorProto.FLOAT)
    # bit 1 = -1, bit 0 = +1
    return body(
        "Sub", [body.const(np.array(1.0, np.float32)), body("Mul", [as_float, body.const(np.array(2.0, np.float32))])]
    )


def _channels_tensor(body, attr_name):
    """int64 [1] tensor holding the function's integer attribute `attr_name`."""
    scalar = body.ref_node("Constant", [], {"value_int": (attr_name, _INT)})
    return body("Reshape", [scalar, body.const(np.array([1], dtype=np.int64))])


def _opsets(opset):
    return [helper.make_opsetid("", check_opset(opset))]


def _defaults(op_type):
    """AttributeProtos with the defaults of the optional attributes of `op_type`."""
    protos = []
    for name, spec in OP_SCHEMAS[op_type]["attributes"].items():
        if not spec.required:
            protos.append(helper.make_attribute(name, spec.default))
    return protos


def _function(op_type, body, inputs, outputs, opset, doc):
    schema = OP_SCHEMAS[op_type]
    required = [name for name, spec in schema["attributes"].items() if spec.required]
    return helper.make_function(
        DOMAIN,
        op_type,
        inputs,
        outputs,
        body.nodes,
        _opsets(opset),
        attributes=required,
        attribute_protos=_defaults(op_type),
        doc_string=doc,
    )


def binarize_pack_function(opset=MIN_OPSET):
    """BinarizePack(X float [N,C,H,W]) -> Y uint8 [N,ceil(C/8),H,W], bit(Y, c) = [X[:, c] < 0]."""
    body = _Body()
    negative = body("Less", ["X", body.const(np.array(0.0, np.float32))])
    bits = body("Cast", [negative], to=TensorProto.INT32)  # [N, C, H, W] 0/1
    shape = body("Shape", ["X"])
    n = body("Slice", [shape, body.const(np.array([0])), body.const(np.array([1]))])
    c = body("Slice", [shape, body.const(np.array([1])), body.const(np.array([2]))])
    hw = body("Slice", [shape, body.const(np.array([2])), body.const(np.array([4]))])
    words = body("Div", [body("Add", [c, body.const(np.array([7]))]), body.const(np.array([8]))])
    missing = body("Sub", [body("Mul", [words, body.const(np.array([8]))]), c])  # 0..7 padding channels
    zeros = body.const(np.zeros(1, dtype=np.int64))
    pads = body("Concat", [zeros, zeros, zeros, zeros, zeros, missing, zeros, zeros], axis=0)
    padded = body("Pad", [bits, pads])  # padding bits are 0 (+1)
    grouped = body("Reshape", [padded, body("Concat", [n, words, body.const(np.array([8])), hw], axis=0)])
    weights = body.const((1 << np.arange(8, dtype=np.int32)).reshape(1, 1, 8, 1, 1))  # little-endian bits
    summed = body("ReduceSum", [body("Mul", [grouped, weights]), body.const(np.array([2]))], keepdims=0)
    body.nodes.append(helper.make_node("Cast", [summed], ["Y"], to=TensorProto.UINT8))
    return _function("BinarizePack", body, ["X"], ["Y"], opset, binarize_pack_function.__doc__)


def unpack_function(opset=MIN_OPSET):
    """Unpack(Y uint8 [N,CW,H,W]; channels=C) -> X float32 +-1 [N,C,H,W]."""
    body = _Body()
    result = _unpack_body(body, "Y", "channels")
    body.nodes.append(helper.make_node("Identity", [result], ["X"]))
    return _function("Unpack", body, ["Y"], ["X"], opset, unpack_function.__doc__)


def _conv_body(body):
    """Unpack both operands, integer-valued float Conv, per-channel scale and bias -> Y value."""
    x = _unpack_body(body, "X", "channels_in")  # [N, C, H, W] +-1
    w = _unpack_body(body, "W", "channels_in")  # [O, C, KH, KW] +-1
    refs = {name: (name, _INTS) for name in ("kernel_shape", "strides", "pads", "dilations")}
    dot = body.ref_node("Conv", [x, w], refs)  # [N, O, OH, OW], exact integers
    # Round leaves the integers as they are; it keeps a runtime from folding `scale` into the +-1
    # weights (onnxruntime's Conv+Mul fusion), which would sum rounded products of scale instead.
    dot = body("Round", [dot])
    axes = body.const(np.array([1, 2], dtype=np.int64))
    scale = body("Unsqueeze", ["scale", axes])  # [O] -> [O, 1, 1]
    bias = body("Unsqueeze", ["bias", axes])
    return body("Add", [body("Mul", [dot, scale]), bias])


def binary_conv2d_function(opset=MIN_OPSET):
    """BinaryConv2d(X, W, scale, bias) = scale[o] * conv(+-1 X, +-1 W) + bias[o], zero padding."""
    body = _Body()
    body.nodes.append(helper.make_node("Identity", [_conv_body(body)], ["Y"]))
    return _function("BinaryConv2d", body, ["X", "W", "scale", "bias"], ["Y"], opset, binary_conv2d_function.__doc__)


def binary_conv2d_masked_function(opset=MIN_OPSET):
    """BinaryConv2dMasked(X, W, scale, bias, mask) = where(mask != 0, BinaryConv2d(...), 0)."""
    body = _Body()
    full = _conv_body(body)
    unset = body("Equal", ["mask", body.const(np.array(0.0, np.float32))])
    body.nodes.append(helper.make_node("Where", [unset, body.const(np.array(0.0, np.float32)), full], ["Y"]))
    return _function(
        "BinaryConv2dMasked",
        body,
        ["X", "W", "scale", "bias", "mask"],
        ["Y"],
        opset,
        binary_conv2d_masked_function.__doc__,
    )


FUNCTION_BUILDERS = {
    "BinarizePack": binarize_pack_function,
    "Unpack": unpack_function,
    "BinaryConv2d": binary_conv2d_function,
    "BinaryConv2dMasked": binary_conv2d_masked_function,
}


def functions(opset=MIN_OPSET, used=None):
    """The FunctionProtos of the ops in `used` (all ops if None), in a fixed order."""
    return [build(opset) for name, build in FUNCTION_BUILDERS.items() if used is None or name in used]
