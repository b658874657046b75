"""The `ai.bimatting` ONNX domain: op schemas as data, defaults written once (docs/onnx-ops.md).

Each op is (inputs, outputs, attributes); each attribute an `Attribute(type, required, default)`.
Everything that reads or writes a node of the domain goes through `make_node` / `node_attributes`,
so a default lives here and nowhere else (the layout of QONNX's `get_nodeattr_types`).
"""

from typing import NamedTuple

from onnx import AttributeProto, helper

from bimatting.errors import InputError

DOMAIN = "ai.bimatting"
DOMAIN_VERSION = 1
MIN_OPSET = 18  # the function bodies use BitwiseAnd (new in opset 18) and ReduceSum with `axes` as an input


class Attribute(NamedTuple):
    type: int  # onnx AttributeProto.INT / INTS
    required: bool
    default: object


_CONV_ATTRIBUTES = {
    "channels_in": Attribute(AttributeProto.INT, True, None),
    "kernel_shape": Attribute(AttributeProto.INTS, True, None),
    "strides": Attribute(AttributeProto.INTS, False, [1, 1]),
    "pads": Attribute(AttributeProto.INTS, False, [0, 0, 0, 0]),  # (top, left, bottom, right), as ONNX Conv
    "dilations": Attribute(AttributeProto.INTS, False, [1, 1]),
}

OP_SCHEMAS = {
    "BinarizePack": {"inputs": ["X"], "outputs": ["Y"], "attributes": {}},
    "Unpack": {
        "inputs": ["Y"],
        "outputs": ["X"],
        "attributes": {"channels": Attribute(AttributeProto.INT, True, None)},
    },
    "BinaryConv2d": {"inputs": ["X", "W", "scale", "bias"], "outputs": ["Y"], "attributes": _CONV_ATTRIBUTES},
    "BinaryConv2dMasked": {
        "inputs": ["X", "W", "scale", "bias", "mask"],
        "outputs": ["Y"],
        "attributes": _CONV_ATTRIBUTES,
    },
}
KNOWN_OPS = tuple(OP_SCHEMAS)
CONV_OPS = ("BinaryConv2d", "BinaryConv2dMasked")


def is_domain_node(node):
    """True for a node of the `ai.bimatting` domain."""
    return node.domain == DOMAIN


def is_binary_conv(node):
    return node.domain == DOMAIN and node.op_type in CONV_OPS


def make_node(op_type, inputs, outputs, name=None, **attrs):
    """A node of the domain, its attributes checked against OP_SCHEMAS (all written explicitly)."""
    schema = OP_SCHEMAS[op_type]
    if len(inputs) != len(schema["inputs"]):
        raise ValueError(f"{op_type} takes {len(schema['inputs'])} inputs {schema['inputs']}, got {len(inputs)}")
    unknown = set(attrs) - set(schema["attributes"])
    if unknown:
        raise ValueError(f"{op_type} has no attribute(s) {sorted(unknown)}")
    full = {}
    for attr, spec in schema["attributes"].items():
        if attr not in attrs and spec.required:
            raise ValueError(f"{op_type} needs attribute '{attr}'")
        full[attr] = attrs.get(attr, spec.default)
    return helper.make_node(op_type, list(inputs), list(outputs), name=name, domain=DOMAIN, **full)


def node_defaults(op_type):
    """{attribute: default} of the optional attributes of `op_type`."""
    return {attr: spec.default for attr, spec in OP_SCHEMAS[op_type]["attributes"].items() if not spec.required}


def node_attributes(node):
    """The attributes of a domain node as a dict, defaults filled in from OP_SCHEMAS.

    InputError (one line) when the op is unknown or a required attribute is missing: the node may
    come from an untrusted file."""
    schema = OP_SCHEMAS.get(node.op_type)
    if schema is None:
        raise InputError(
            f"unsupported operator {DOMAIN}.{node.op_type} (node '{node.name}'); known: {', '.join(KNOWN_OPS)}"
        )
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    for attr, spec in schema["attributes"].items():
        if attr not in values and spec.required:
            raise InputError(f"{DOMAIN}.{node.op_type} node '{node.name}' lacks attribute '{attr}'")
        values.setdefault(attr, spec.default)
    return values


def check_opset(opset):
    """The standard opset a model holding these ops' functions may use; ValueError below MIN_OPSET."""
    if int(opset) < MIN_OPSET:
        raise ValueError(f"the {DOMAIN} function bodies need opset >= {MIN_OPSET}, got {opset}")
    return int(opset)
