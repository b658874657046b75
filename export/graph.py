"""A small ONNX graph builder: unique names, initializers, opset-aware helpers, the binary ops.

Each module of bimatting/models emits its own nodes (`emit_onnx(b, ...)`, beside its forward)
through these helpers and those of layers.Builder, so node names, value names, dynamic shapes and
the packing of binary weights are all under our control (unlike a traced export). Value names follow the module
path that produced them (`decoder.decode3/Concat_2`), initializers the parameter they came from.

Shapes are NCHW throughout. Resize follows torch's bilinear with align_corners=False:
`half_pixel` (ONNX) maps output x to input (x + 0.5) / scale - 0.5 and clamps at the border,
as torch does; with runtime `scales` it uses the given ratio, like
`F.interpolate(scale_factor=s, recompute_scale_factor=False)`.
"""

import contextlib
import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bimatting.binops import functions as binop_functions, schema

FLOAT = TensorProto.FLOAT


class GraphBuilder:
    FLOAT = FLOAT  # for Cast(to=...) in emitters that do not import onnx

    def __init__(self, opset, name="graph"):
        self.opset = int(opset)
        self.name = name
        self.nodes, self.initializers, self.inputs, self.outputs = [], [], [], []
        self._scope = []
        self._used = set()
        self._counts = {}
        self._consts = {}
        self.custom_ops = set()
        self.module_names = {}  # id(module) -> dotted path, for initializer names
        self.param_cache = {}  # (kind, id(module), ...) -> initializer names shared by repeated use
        self.marks = {}  # module path -> value name of its output, to compare blocks with torch

    def name_modules(self, model):
        """Remember every module's path in `model` so initializers carry state_dict-like names."""
        self.module_names = {id(module): name for name, module in model.named_modules()}

    def module_name(self, module):
        return self.module_names.get(id(module)) or self.fresh("module")

    # -- names ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def scope(self, name):
        """Prefix the names of everything emitted inside with the module path `name`."""
        self._scope.append(str(name))
        try:
            yield
        finally:
            self._scope.pop()

    def _prefix(self):
        return ".".join(s for s in self._scope if s)

    def fresh(self, hint):
        """A value name not used before: `<scope>/<hint>_<k>`."""
        base = f"{self._prefix()}/{hint}" if self._scope else hint
        count = self._counts.get(base, 0)
        self._counts[base] = count + 1
        name = f"{base}_{count}"
        while name in self._used:
            count += 1
            name = f"{base}_{count}"
        self._used.add(name)
        return name

    def _reserve(self, name):
        if name in self._used:
            raise ValueError(f"ONNX value name '{name}' used twice")
        self._used.add(name)
        return name

    def mark(self, module_path, value):
        """Record `value` as the output of the module at `module_path`; the file's metadata keeps
        the map (`block_outputs`), so a block can be compared with its torch module."""
        self.marks[module_path] = value
        return value

    # -- values -----------------------------------------------------------------------------------

    def input(self, name, elem_type, shape):
        self.inputs.append(helper.make_tensor_value_info(self._reserve(name), elem_type, shape))
        return name

    def output(self, value, elem_type, shape):
        self.outputs.append(helper.make_tensor_value_info(value, elem_type, shape))
        return value

    def initializer(self, array, name):
        """A named initializer (weights). `name` is used as is when free, else made unique."""
        name = self._reserve(name) if name not in self._used else self.fresh(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, values, dtype=np.int64):
        """A small constant initializer, shared by identical values: `const([1, 1])`."""
        array = np.asarray(values, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = f"const_{len(self._consts)}"
            self._reserve(name)
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    # -- nodes ------------------------------------------------------------------------------------

    def op(self, op_type, inputs, n_out=1, out=None, **attrs):
        """Emit one standard node; returns its output name (or list of names when n_out > 1).

        `out` names the output(s) explicitly (graph outputs such as 'r4o')."""
        names = self._outputs(op_type, n_out, out)
        node_name = self.fresh(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=node_name, **attrs))
        return names[0] if n_out == 1 else names

    def custom(self, op_type, inputs, out=None, **attrs):
        """Emit one node of the ai.bimatting domain (attributes checked against its schema)."""
        names = self._outputs(op_type, 1, out)
        node = schema.make_node(op_type, list(inputs), names, name=self.fresh(op_type), **attrs)
        self.nodes.append(node)
        self.custom_ops.add(op_type)
        return names[0]

    def _outputs(self, op_type, n_out, out):
        if out is None:
            return [self.fresh(op_type) for _ in range(n_out)]
        names = [out] if isinstance(out, str) else list(out)
        return [self._reserve(n) for n in names]

    # -- opset-aware helpers ------------------------------------------------------------------

    def split(self, x, sizes, axis=1):
        """Split into parts of the given sizes along `axis` (attribute before opset 13)."""
        if self.opset >= 13:
            return self.op("Split", [x, self.const(sizes)], n_out=len(sizes), axis=axis)
        return self.op("Split", [x], n_out=len(sizes), axis=axis, split=list(sizes))

    def reduce_mean(self, x, axes, keepdims=1):
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.const(axes)], keepdims=keepdims)
        return self.op("ReduceMean", [x], axes=list(axes), keepdims=keepdims)

    def shape_slice(self, x, start, end):
        """int64 [end - start]: Shape(x)[start:end]."""
        return self.op("Slice", [self.op("Shape", [x]), self.const([start]), self.const([end])])

    def slice(self, x, starts, ends, axes):
        """x[..., starts:ends] on `axes`; starts/ends are lists or int64 value names."""
        starts = starts if isinstance(starts, str) else self.const(starts)
        ends = ends if isinstance(ends, str) else self.const(ends)
        return self.op("Slice", [x, starts, ends, self.const(axes)])

    def crop_to(self, x, like):
        """x[:, :, :H, :W] with H, W = like's spatial size (RVM's crop after upsampling)."""
        return self.slice(x, [0, 0], self.shape_slice(like, 2, 4), [2, 3])

    def resize_scale(self, x, scales, mode="half_pixel"):
        """Bilinear resize by runtime or constant scales (a float32 [4] value name)."""
        roi = "" if self.opset >= 13 else self.const([], np.float32)
        return self.op("Resize", [x, roi, scales], mode="linear", coordinate_transformation_mode=mode)

    def resize_to(self, x, height_width, mode="half_pixel"):
        """Bilinear resize to an int64 [2] size (H, W) value: torch's F.interpolate(size=...)."""
        sizes = self.op("Concat", [self.shape_slice(x, 0, 2), height_width], axis=0)
        if self.opset >= 13:
            return self.op("Resize", [x, "", "", sizes], mode="linear", coordinate_transformation_mode=mode)
        empty = self.const([], np.float32)
        return self.op("Resize", [x, empty, empty, sizes], mode="linear", coordinate_transformation_mode=mode)

    def clip(self, x, low, high, out=None):
        return self.op("Clip", [x, self.const(low, np.float32), self.const(high, np.float32)], out=out)

    def avg_pool2(self, x):
        """2x2 average, stride 2, ceil_mode, counting only real pixels (torch AvgPool2d(2, 2, ceil_mode=True))."""
        return self.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, count_include_pad=0)

    def channel_vector(self, values, name):
        """A per-channel float32 parameter [C] as [C, 1, 1] so it broadcasts over [N, C, H, W]."""
        return self.initializer(np.asarray(values, np.float32).reshape(-1, 1, 1), name)

    # -- model ------------------------------------------------------------------------------------

    def model(self, doc="", metadata=None, producer="bimatting"):
        opsets = [helper.make_opsetid("", self.opset)]
        functions = []
        if self.custom_ops:
            schema.check_opset(self.opset)
            opsets.append(helper.make_opsetid(schema.DOMAIN, schema.DOMAIN_VERSION))
            functions = binop_functions.functions(self.opset, used=self.custom_ops)
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph, opset_imports=opsets, functions=functions, producer_name=producer, doc_string=doc
        )
        # IR 9 (function attribute defaults) is the oldest that holds the files; newer opsets need newer IR.
        model.ir_version = max(9, helper.find_min_ir_version_for(opsets, ignore_unknown=True))
        metadata = dict(metadata or {})
        if self.marks:
            metadata[BLOCK_OUTPUTS_KEY] = json.dumps(self.marks)
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = str(key), str(value)
        return model


BLOCK_OUTPUTS_KEY = "bimatting.block_outputs"


def block_outputs(model):
    """{module path: value name} of the marked block outputs recorded in the file's metadata."""
    for prop in model.metadata_props:
        if prop.key == BLOCK_OUTPUTS_KEY:
            return json.loads(prop.value)
    return {}


def with_outputs(model, values):
    """A copy of `model` that also returns the float32 `values` (to compare blocks with torch)."""
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    for name in values:
        extended.graph.output.append(helper.make_tensor_value_info(name, FLOAT, None))
    return extended


def to_array(tensor):
    """torch tensor or array -> float32 numpy (detached, on CPU)."""
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu().numpy()
    return np.asarray(tensor, dtype=np.float32)


def check(model):
    """onnx's full check (types, shapes of the functions' call sites included)."""
    onnx.checker.check_model(model, full_check=True)
    return model
