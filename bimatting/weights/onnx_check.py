"""Checks on an untrusted ONNX file before anything is built from it (torch-free).

    model = load_checked(path)        # ModelProto, or InputError (one line) naming the problem
    check_model(model, name)          # the same checks on a ModelProto already in memory

`bimatting compile` / `tune`, the onnxruntime backend of `bimatting matte`, the bench reference
and `load_model(".onnx")` read ONNX files through here. In order:

1. the file: exists, is not empty, parses as a ModelProto (protobuf);
2. external data: only relative paths inside the model's folder, files long enough
   (an .onnx must not make us read /etc/passwd or a file beside another model);
3. versions: IR version and the standard opset within what this onnx release knows, the
   `ai.bimatting` domain at version 1, no other domain;
4. tensors (initializers, Constant values, tensor attributes, also inside subgraphs and
   functions): a supported element type, every dimension >= 0, at most MAX_ELEMENTS elements, and
   exactly as many stored bytes/values as the declared shape needs;
5. declared and inferred shapes: no dimension above MAX_DIM, no tensor above MAX_ELEMENTS;
6. operators: every node is a standard op of the model's opset or one of the `ai.bimatting` ops
   (docs/onnx-ops.md) with sane attributes and weights [O, ceil(C/8), KH, KW];
7. `onnx.checker.check_model(full_check=True)`: graph structure, attribute types, strict shape
   inference (mismatched shapes, unknown ops).

Limits are generous for matting (a 4K RGB frame is 2.5e7 elements) and far below what would
exhaust memory or overflow 32-bit index arithmetic in the runtimes.
"""

import math
from pathlib import Path

import onnx
from google.protobuf.descriptor import FieldDescriptor
from onnx import AttributeProto, TensorProto
from onnx.external_data_helper import load_external_data_for_model

from bimatting.binops import functions as binop_functions, layout, schema
from bimatting.errors import InputError

STANDARD_DOMAINS = ("", "ai.onnx")
MIN_IR_VERSION = 3  # opset_import appeared in IR 3
MIN_OPSET = 7  # the oldest opset onnxruntime and TVM's frontend both import
MAX_DIM = 1 << 16  # one dimension: 65536 (16x the long side of a 4K frame)
MAX_ELEMENTS = 1 << 28  # one tensor: 2.7e8 elements (1 GiB of float32)
MAX_KERNEL = 64  # binary conv kernel side / stride / dilation / pad

# element type -> (bytes per element in raw_data, the typed field that holds it otherwise)
_STORAGE = {
    TensorProto.FLOAT: (4, "float_data"),
    TensorProto.DOUBLE: (8, "double_data"),
    TensorProto.FLOAT16: (2, "int32_data"),
    TensorProto.BFLOAT16: (2, "int32_data"),
    TensorProto.INT8: (1, "int32_data"),
    TensorProto.UINT8: (1, "int32_data"),
    TensorProto.INT16: (2, "int32_data"),
    TensorProto.UINT16: (2, "int32_data"),
    TensorProto.INT32: (4, "int32_data"),
    TensorProto.BOOL: (1, "int32_data"),
    TensorProto.INT64: (8, "int64_data"),
    TensorProto.UINT32: (4, "uint64_data"),
    TensorProto.UINT64: (8, "uint64_data"),
}


def load_checked(path):
    """The ModelProto at `path` after every check of the module docstring; InputError otherwise."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise InputError(f"ONNX model '{path}' {what}; expected an .onnx file (e.g. from `bimatting export`)")
    if path.stat().st_size == 0:
        raise InputError(f"ONNX model '{path}' is empty (0 bytes); expected an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf raises several unrelated types for bad bytes
        raise InputError(
            f"'{path}' is not an ONNX model (cannot parse it: {_first_line(error)}); the file "
            "is truncated, corrupt or of another kind"
        ) from None
    return check_parsed(model, path)


def check_parsed(model, path):
    """For a ModelProto parsed from `path` with load_external_data=False: read its external data
    (inside the model's folder only), then check_model. Returns `model`."""
    _load_external_data(model, Path(path))
    check_model(model, f"'{path}'")
    return model


def check_model(model, name="model"):
    """Raise InputError (one line, naming `name`) unless `model` passes checks 3-7."""
    if not isinstance(model, onnx.ModelProto):
        raise InputError(f"{name} is a {type(model).__name__}, not an ONNX ModelProto")
    _check_text_fields(model, name)
    opsets = _check_versions(model, name)
    functions = _check_functions(model, name)
    for graph, where in _graphs(model):
        for tensor, place in _tensors(graph):
            _check_tensor(tensor, f"{name}: {where}{place}")
        for value in list(getattr(graph, "value_info", ())) + [
            v for v in list(graph.input) + list(graph.output) if not isinstance(v, str)
        ]:  # str: a function's
            _check_declared_shape(value, f"{name}: {where}'{value.name}'")
        for node in graph.node:
            _check_node(node, opsets, functions, f"{name}: {where}")
    _check_bimatting_weights(model, name)
    try:
        onnx.checker.check_model(model, full_check=False)
        # data_prop=False: onnx's data propagation materialises shapes from constants, and a
        # constant like 2**61 in a Range/Expand makes it allocate without bound (found by fuzzing).
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=False)
    except Exception as error:  # noqa: BLE001 - ValidationError, InferenceError, protobuf errors
        raise InputError(
            f"{name} is not a valid ONNX model ({_first_line(error)}); re-export it (e.g. with `bimatting export`)"
        ) from None
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        _check_declared_shape(value, f"{name}: inferred '{value.name}'")
    _check_conv_channels(inferred, name)


# -- 1. structure ---------------------------------------------------------------------------------


def _check_text_fields(message, name):
    """Every string field of the protobuf holds UTF-8 text (python-protobuf hands back `bytes`
    for a corrupt one, which no later check expects)."""
    pending = [message]
    while pending:
        current = pending.pop()
        for field, value in current.ListFields():
            repeated = (
                field.is_repeated if hasattr(field, "is_repeated") else field.label == FieldDescriptor.LABEL_REPEATED
            )
            if field.type == FieldDescriptor.TYPE_STRING:
                if any(not isinstance(item, str) for item in (value if repeated else [value])):
                    raise InputError(f"{name} has a '{field.name}' field that is not UTF-8 text; the file is corrupt")
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                pending.extend(value if repeated else [value])


# -- 2. external data ---------------------------------------------------------------------------


def _load_external_data(model, path):
    folder = path.resolve().parent
    external = False
    for graph, where in _graphs(model):
        for tensor, place in _tensors(graph):
            if tensor.data_location != TensorProto.EXTERNAL:
                continue
            external = True
            info = {entry.key: entry.value for entry in tensor.external_data}
            location = info.get("location", "")
            target = (folder / location).resolve()
            if (
                not location
                or Path(location).is_absolute()
                or ".." in Path(location).parts
                or folder not in target.parents
            ):
                raise InputError(
                    f"'{path}': tensor {where}{place} keeps its data in '{location}', outside the "
                    "model's folder; refused (external data must be a relative path beside the model)"
                )
            if not target.is_file():
                raise InputError(
                    f"'{path}': tensor {where}{place} keeps its data in '{location}', which does "
                    "not exist; copy it beside the model"
                )
            try:
                offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
            except ValueError:
                raise InputError(f"'{path}': tensor {where}{place} has a non-numeric external offset/length") from None
            needed = _stored_bytes(tensor)
            if length not in (-1, needed) or offset < 0 or offset + needed > target.stat().st_size:
                raise InputError(
                    f"'{path}': tensor {where}{place} declares {needed} bytes at offset {offset} of "
                    f"'{location}', which the file does not hold (truncated external data?)"
                )
    if external:
        load_external_data_for_model(model, str(folder))


# -- 3. versions ----------------------------------------------------------------------------------


def _check_versions(model, name):
    if not MIN_IR_VERSION <= model.ir_version <= onnx.IR_VERSION:
        newer = model.ir_version > onnx.IR_VERSION
        raise InputError(
            f"{name} has ONNX IR version {model.ir_version}; this install reads "
            f"{MIN_IR_VERSION}..{onnx.IR_VERSION}" + ("; upgrade onnx" if newer else "; re-export it")
        )
    highest = onnx.defs.onnx_opset_version()
    opsets = {}
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        if domain in opsets:
            raise InputError(f"{name} imports domain '{entry.domain or 'ai.onnx'}' twice")
        opsets[domain] = entry.version
        if domain == "" and not MIN_OPSET <= entry.version <= highest:
            raise InputError(f"{name} uses standard opset {entry.version}; expected {MIN_OPSET}..{highest}")
        elif domain == schema.DOMAIN and entry.version != schema.DOMAIN_VERSION:
            raise InputError(
                f"{name} uses {schema.DOMAIN} version {entry.version}; this bimatting "
                f"implements version {schema.DOMAIN_VERSION} (docs/onnx-ops.md)"
            )
        elif domain not in ("", schema.DOMAIN):
            raise InputError(
                f"{name} imports the operator domain '{entry.domain}'; only the standard "
                f"domain and {schema.DOMAIN} are supported"
            )
    if "" not in opsets:
        raise InputError(f"{name} imports no standard opset; expected an opset_import for the ai.onnx domain")
    return opsets


def _check_functions(model, name):
    """Model-local functions: only the ai.bimatting ops, each exactly this release's body.

    onnxruntime runs the body while `bimatting compile` runs its own kernel for the op; a body
    that differs from docs/onnx-ops.md would make the two compute different things."""
    found = set()
    for function in model.functions:
        key = (function.domain, function.name)
        if function.domain != schema.DOMAIN or function.name not in binop_functions.FUNCTION_BUILDERS:
            raise InputError(
                f"{name} defines the function {function.domain or 'ai.onnx'}.{function.name}; only the "
                f"{schema.DOMAIN} ops ({', '.join(binop_functions.FUNCTION_BUILDERS)}) may be model-local functions"
            )
        if key in found:
            raise InputError(f"{name} defines the function {function.domain}.{function.name} twice")
        found.add(key)
        opset = next((o.version for o in function.opset_import if o.domain in STANDARD_DOMAINS), None)
        expected = _canonical_function(function.name, opset)
        if expected is None or _without_docs(function) != expected:
            raise InputError(
                f"{name}: the body of function {function.domain}.{function.name} is not the one "
                "docs/onnx-ops.md defines (edited or corrupt); re-export the model with `bimatting export`"
            )
    return found


def _canonical_function(op_type, opset):
    if not isinstance(opset, int) or not schema.MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        return None
    return _without_docs(binop_functions.FUNCTION_BUILDERS[op_type](opset))


def _without_docs(function):
    copy = onnx.FunctionProto()
    copy.CopyFrom(function)
    copy.ClearField("doc_string")
    return copy


# -- 4. tensors -----------------------------------------------------------------------------------


def _graphs(model):
    """(GraphProto-like, where) for the main graph, its subgraphs and the function bodies."""
    pending = [(model.graph, "")]
    for function in model.functions:
        pending.append((function, f"function {function.domain}.{function.name}: "))
    while pending:
        graph, where = pending.pop()
        yield graph, where
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.GRAPH:
                    pending.append((attr.g, f"{where}subgraph of '{node.name or node.op_type}': "))
                elif attr.type == AttributeProto.GRAPHS:
                    pending.extend((g, f"{where}subgraph of '{node.name or node.op_type}': ") for g in attr.graphs)


def _tensors(graph):
    """(TensorProto, where) for the initializers and the tensor attributes of `graph`'s nodes."""
    for tensor in getattr(graph, "initializer", ()):
        yield tensor, f"initializer '{tensor.name}'"
    if len(getattr(graph, "sparse_initializer", ())):
        raise InputError(
            f"sparse initializer '{graph.sparse_initializer[0].values.name}' is not supported; store it dense"
        )
    for node in graph.node:
        for attr in node.attribute:
            place = f"attribute '{attr.name}' of node '{node.name or node.op_type}'"
            if attr.ref_attr_name:
                continue  # a function attribute reference: the value comes from the calling node
            if attr.type == AttributeProto.TENSOR:
                yield attr.t, place
            elif attr.type == AttributeProto.TENSORS:
                for tensor in attr.tensors:
                    yield tensor, place
            elif attr.type in (AttributeProto.SPARSE_TENSOR, AttributeProto.SPARSE_TENSORS):
                raise InputError(f"{place} is a sparse tensor; not supported, store it dense")


def _element_count(dims, where):
    for dim in dims:
        if dim < 0:
            raise InputError(f"{where} has a negative dimension ({list(dims)})")
        if dim > MAX_ELEMENTS:
            raise InputError(f"{where} declares a dimension of {dim}; at most {MAX_ELEMENTS} is accepted")
    count = math.prod(dims)
    if count > MAX_ELEMENTS:
        raise InputError(f"{where} declares {count} elements ({list(dims)}); at most {MAX_ELEMENTS} per tensor")
    return count


def _stored_bytes(tensor):
    itemsize = _STORAGE.get(tensor.data_type, (0, None))[0]
    return math.prod(tensor.dims) * itemsize


def _check_tensor(tensor, where):
    if tensor.data_type not in _STORAGE:
        kind = (
            TensorProto.DataType.Name(tensor.data_type)
            if tensor.data_type in TensorProto.DataType.values()
            else str(tensor.data_type)
        )
        raise InputError(f"{where} has element type {kind}; expected a numeric type (float32, uint8, int64, ...)")
    if tensor.HasField("segment"):
        raise InputError(f"{where} is stored in segments; not supported, re-save the model")
    count = _element_count(tensor.dims, where)
    itemsize, field = _STORAGE[tensor.data_type]
    if tensor.data_location == TensorProto.EXTERNAL:
        return  # checked (and read) by _load_external_data
    if tensor.raw_data:
        stored, expected, unit = len(tensor.raw_data), count * itemsize, "bytes"
    else:
        stored, expected, unit = len(getattr(tensor, field)), count, "values"
    if stored != expected:
        raise InputError(
            f"{where} declares shape {list(tensor.dims)} ({expected} {unit}) but stores {stored} "
            f"{unit}; the file is corrupt or was edited inconsistently"
        )


def _check_declared_shape(value, where):
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return
    dims = [d.dim_value for d in value.type.tensor_type.shape.dim if d.HasField("dim_value")]
    for dim in dims:
        if dim < 0 or dim > MAX_DIM:
            raise InputError(f"{where} declares dimension {dim}; expected 0..{MAX_DIM}")
    if math.prod(dims) > MAX_ELEMENTS:
        raise InputError(f"{where} declares {math.prod(dims)} elements; at most {MAX_ELEMENTS} per tensor")


# -- 6. operators --------------------------------------------------------------------------------


def _check_node(node, opsets, functions, where):
    label = f"node '{node.name or node.op_type}' ({node.domain or 'ai.onnx'}.{node.op_type})"
    domain = "" if node.domain == "ai.onnx" else node.domain
    if domain not in opsets:
        raise InputError(f"{where}{label} uses domain '{node.domain}', which the model does not import")
    if domain == schema.DOMAIN:
        _check_bimatting_node(node, functions, f"{where}{label}")
        return
    if (node.domain, node.op_type) in functions:
        return
    try:
        onnx.defs.get_schema(node.op_type, opsets[domain], domain)
    except onnx.defs.SchemaError:
        raise InputError(
            f"{where}{label} is not an operator of opset {opsets[domain]}; unknown op (re-export with standard ops)"
        ) from None


def _check_bimatting_node(node, functions, label):
    schemas = schema.OP_SCHEMAS
    if node.op_type not in schemas:
        raise InputError(f"unsupported operator {schema.DOMAIN}.{node.op_type} ({label}); known: {', '.join(schemas)}")
    if (schema.DOMAIN, node.op_type) not in functions:
        raise InputError(
            f"{label} has no function body in the model; expected one FunctionProto per "
            f"{schema.DOMAIN} op (docs/onnx-ops.md), as `bimatting export` writes"
        )
    op = schemas[node.op_type]
    if len(node.input) != len(op["inputs"]) or len(node.output) != len(op["outputs"]):
        raise InputError(
            f"{label} has {len(node.input)} inputs and {len(node.output)} outputs; expected "
            f"{len(op['inputs'])} ({', '.join(op['inputs'])}) and {len(op['outputs'])}"
        )
    attrs = {a.name: a for a in node.attribute}
    for attr_name in attrs:
        if attr_name not in op["attributes"]:
            raise InputError(f"{label} has the unknown attribute '{attr_name}'")
    values = {}
    for attr_name, (kind, required, default) in op["attributes"].items():
        attr = attrs.get(attr_name)
        if attr is None:
            if required:
                raise InputError(f"{label} lacks the required attribute '{attr_name}'")
            values[attr_name] = default
            continue
        if attr.type != kind:
            raise InputError(
                f"{label} attribute '{attr_name}' is {AttributeProto.AttributeType.Name(attr.type)}; "
                f"expected {AttributeProto.AttributeType.Name(kind)}"
            )
        values[attr_name] = attr.i if kind == AttributeProto.INT else list(attr.ints)
    _check_attribute_values(values, label)


def _check_attribute_values(values, label):
    def fail(attr_name, expected):
        raise InputError(f"{label} attribute {attr_name}={values[attr_name]} is out of range; expected {expected}")

    for attr_name in ("channels", "channels_in"):
        if attr_name in values and not 1 <= values[attr_name] <= MAX_DIM:
            fail(attr_name, f"1..{MAX_DIM}")
    for attr_name, length, low in (("kernel_shape", 2, 1), ("strides", 2, 1), ("dilations", 2, 1), ("pads", 4, 0)):
        if attr_name in values and (
            len(values[attr_name]) != length or not all(low <= v <= MAX_KERNEL for v in values[attr_name])
        ):
            fail(attr_name, f"{length} integers in {low}..{MAX_KERNEL}")


def _check_bimatting_weights(model, name):
    """Packed weights of BinaryConv2d(Masked) fit [O, ceil(C/8), KH, KW] and scale/bias [O]."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if not schema.is_binary_conv(node):
            continue
        attrs = {a.name: a for a in node.attribute}
        channels, kernel = attrs["channels_in"].i, list(attrs["kernel_shape"].ints)
        weight = inits.get(node.input[1])
        if weight is None:
            continue  # a computed weight: shape inference checks it
        label = f"{name}: node '{node.name or node.op_type}'"
        dims = list(weight.dims)
        words = layout.packed_channels(channels)
        if weight.data_type != TensorProto.UINT8 or len(dims) != 4 or dims[1:] != [words] + kernel:
            raise InputError(
                f"{label} has packed weights {TensorProto.DataType.Name(weight.data_type)} {dims}; "
                f"channels_in={channels}, kernel_shape={kernel} need uint8 "
                f"[O, {words}, {kernel[0]}, {kernel[1]}]"
            )
        for index in (2, 3):
            other = inits.get(node.input[index])
            if other is not None and list(other.dims) != [dims[0]]:
                raise InputError(
                    f"{label} input '{node.input[index]}' has shape {list(other.dims)}; "
                    f"expected [{dims[0]}] (one value per output channel)"
                )


def _check_conv_channels(inferred, name):
    """Conv input channels = weight channels x group (onnx's shape inference does not compare
    them; onnxruntime and TVM would fail only when run or compiled)."""
    shapes = {}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            shapes[value.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim
            ]
    weights = {t.name: list(t.dims) for t in inferred.graph.initializer}
    for node in inferred.graph.node:
        if node.op_type != "Conv" or node.domain not in STANDARD_DOMAINS or len(node.input) < 2:
            continue
        x, w = shapes.get(node.input[0]), weights.get(node.input[1])
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if not x or not w or len(x) < 2 or len(w) < 2 or x[1] is None:
            continue
        if x[1] != w[1] * group:
            raise InputError(
                f"{name}: Conv node '{node.name or node.input[1]}' gets {x[1]} input channels but its "
                f"weight '{node.input[1]}' {w} with group={group} expects {w[1] * group}"
            )


def _first_line(error):
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line[:200]
