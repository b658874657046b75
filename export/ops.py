"""The `ai.bimatting` ONNX operators: schema as data, FunctionProto bodies, numpy execution.

Every op is specified in docs/onnx-ops.md and follows the binary conventions of
`bimatting.bitpack` (bit 1 = -1, uint8 words, little-endian bits along channels, zero padding of
the +-1 tensor). Each op ships in the exported file as a model-local function built from standard
ONNX ops (opset >= 18: the bodies use BitwiseAnd, new in opset 18, and ReduceSum with `axes` as an
input), so onnxruntime, `onnx.reference` and Netron run and show the file unchanged while a
compiler recognises the op by (domain, name) and ignores the body.

Function bodies are exact: Unpack yields +-1 floats, the float Conv of +-1 operands sums integers
of magnitude <= KH*KW*C < 2^24, which float32 represents exactly in any summation order.
"""
import numpy as np
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from bimatting import bitpack

DOMAIN = "ai.bimatting"
DOMAIN_VERSION = 1
MIN_OPSET = 18  # BitwiseAnd (18) in the Unpack body

_INT, _INTS = AttributeProto.INT, AttributeProto.INTS

# Schema as data: inputs, outputs, attributes (type, required, default). docs/onnx-ops.md explains.
OP_SCHEMAS = {
    "BinarizePack": {"inputs": ["X"], "outputs": ["Y"], "attributes": {}},
    "Unpack": {"inputs": ["Y"], "outputs": ["X"], "attributes": {"channels": (_INT, True, None)}},
    "BinaryConv2d": {
        "inputs": ["X", "W", "scale", "bias"],
        "outputs": ["Y"],
        "attributes": {
            "channels_in": (_INT, True, None),
            "kernel_shape": (_INTS, True, None),
            "strides": (_INTS, False, [1, 1]),
            "pads": (_INTS, False, [0, 0, 0, 0]),
            "dilations": (_INTS, False, [1, 1]),
        },
    },
}
OP_SCHEMAS["BinaryConv2dMasked"] = {
    "inputs": OP_SCHEMAS["BinaryConv2d"]["inputs"] + ["mask"],
    "outputs": ["Y"],
    "attributes": OP_SCHEMAS["BinaryConv2d"]["attributes"],
}


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
    return body("Sub", [body.const(np.array(1.0, np.float32)),
                        body("Mul", [as_float, body.const(np.array(2.0, np.float32))])])


def _channels_tensor(body, attr_name):
    """int64 [1] tensor holding the function's integer attribute `attr_name`."""
    scalar = body.ref_node("Constant", [], {"value_int": (attr_name, _INT)})
    return body("Reshape", [scalar, body.const(np.array([1], dtype=np.int64))])


def _opsets(opset):
    if opset < MIN_OPSET:
        raise ValueError(f"the ai.bimatting function bodies need opset >= {MIN_OPSET}, got {opset}")
    return [helper.make_opsetid("", opset)]


def _defaults(op_type):
    """AttributeProtos with the defaults of the optional attributes of `op_type`."""
    protos = []
    for name, (_, required, default) in OP_SCHEMAS[op_type]["attributes"].items():
        if not required:
            protos.append(helper.make_attribute(name, default))
    return protos


def _function(op_type, body, inputs, outputs, opset, doc):
    schema = OP_SCHEMAS[op_type]
    required = [name for name, (_, req, _) in schema["attributes"].items() if req]
    return helper.make_function(DOMAIN, op_type, inputs, outputs, body.nodes, _opsets(opset),
                                attributes=required, attribute_protos=_defaults(op_type), doc_string=doc)


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
    axes = body.const(np.array([1, 2], dtype=np.int64))
    scale = body("Unsqueeze", ["scale", axes])  # [O] -> [O, 1, 1]
    bias = body("Unsqueeze", ["bias", axes])
    return body("Add", [body("Mul", [dot, scale]), bias])


def binary_conv2d_function(opset=MIN_OPSET):
    """BinaryConv2d(X, W, scale, bias) = scale[o] * conv(+-1 X, +-1 W) + bias[o], zero padding."""
    body = _Body()
    body.nodes.append(helper.make_node("Identity", [_conv_body(body)], ["Y"]))
    return _function("BinaryConv2d", body, ["X", "W", "scale", "bias"], ["Y"], opset,
                     binary_conv2d_function.__doc__)


def binary_conv2d_masked_function(opset=MIN_OPSET):
    """BinaryConv2dMasked(X, W, scale, bias, mask) = where(mask != 0, BinaryConv2d(...), 0)."""
    body = _Body()
    full = _conv_body(body)
    unset = body("Equal", ["mask", body.const(np.array(0.0, np.float32))])
    body.nodes.append(helper.make_node("Where", [unset, body.const(np.array(0.0, np.float32)), full], ["Y"]))
    return _function("BinaryConv2dMasked", body, ["X", "W", "scale", "bias", "mask"], ["Y"], opset,
                     binary_conv2d_masked_function.__doc__)


FUNCTION_BUILDERS = {
    "BinarizePack": binarize_pack_function,
    "Unpack": unpack_function,
    "BinaryConv2d": binary_conv2d_function,
    "BinaryConv2dMasked": binary_conv2d_masked_function,
}


def functions(opset=MIN_OPSET, used=None):
    """The FunctionProtos of the ops in `used` (all ops if None), in a fixed order."""
    return [build(opset) for name, build in FUNCTION_BUILDERS.items() if used is None or name in used]


def make_node(op_type, inputs, outputs, name=None, **attrs):
    """A node of the domain, its attributes checked against OP_SCHEMAS (all written explicitly)."""
    schema = OP_SCHEMAS[op_type]
    if len(inputs) != len(schema["inputs"]):
        raise ValueError(f"{op_type} takes {len(schema['inputs'])} inputs {schema['inputs']}, got {len(inputs)}")
    unknown = set(attrs) - set(schema["attributes"])
    if unknown:
        raise ValueError(f"{op_type} has no attribute(s) {sorted(unknown)}")
    full = {}
    for attr, (_, required, default) in schema["attributes"].items():
        if attr not in attrs and required:
            raise ValueError(f"{op_type} needs attribute '{attr}'")
        full[attr] = attrs.get(attr, default)
    return helper.make_node(op_type, list(inputs), list(outputs), name=name, domain=DOMAIN, **full)


def node_attributes(node):
    """The attributes of a domain node as a dict, defaults filled in from OP_SCHEMAS."""
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    for attr, (_, _, default) in OP_SCHEMAS[node.op_type]["attributes"].items():
        values.setdefault(attr, default)
    return values


# --- numpy execution (the reference every function body and kernel is tested against) ----------

def execute(op_type, inputs, attrs):
    """Run one op in numpy (bimatting.bitpack); returns the list of outputs."""
    if op_type == "BinarizePack":
        return [bitpack.pack(inputs[0], axis=1)]
    if op_type == "Unpack":
        return [bitpack.unpack(inputs[0], attrs["channels"], axis=1)]
    if op_type in ("BinaryConv2d", "BinaryConv2dMasked"):
        x, w, scale, bias = inputs[:4]
        dot = bitpack.binary_conv2d(x, w, attrs["channels_in"], strides=attrs.get("strides", (1, 1)),
                                    pads=attrs.get("pads", (0, 0, 0, 0)),
                                    dilations=attrs.get("dilations", (1, 1)))
        y = (dot.astype(np.float32) * np.asarray(scale, np.float32)[None, :, None, None]
             + np.asarray(bias, np.float32)[None, :, None, None])
        if op_type == "BinaryConv2dMasked":
            y = np.where(np.asarray(inputs[4]) != 0, y, np.float32(0))
        return [y.astype(np.float32)]
    raise ValueError(f"unknown op {DOMAIN}.{op_type}")


def pack_weights(weight_sign):
    """+-1 (or any sign-carrying) float weights [O, C, KH, KW] -> packed uint8 [O, ceil(C/8), KH, KW]."""
    return bitpack.pack(np.asarray(weight_sign, dtype=np.float32), axis=1)


def check_opset(opset):
    """Validate the standard opset a model with these functions may use."""
    _opsets(int(opset))
    return int(opset)


__all__ = ["DOMAIN", "DOMAIN_VERSION", "MIN_OPSET", "OP_SCHEMAS", "functions", "make_node",
           "node_attributes", "execute", "pack_weights", "check_opset"]
