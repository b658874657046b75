"""ONNX pre-pass: with the input shapes fixed, compute the graph's shape arithmetic once.

The exported graph derives sizes, pixel coordinates and interpolation weights from `Shape` (the
fixed-order resize, crops, the mask's half size). TVM's ONNX frontend folds some of that into
symbolic scalars and then rejects tensor operators on them (`Floor` of a scalar). At compile time
every shape is known, so this pass evaluates those nodes here, with onnxruntime for the shapes
and the ONNX reference implementation for the arithmetic, and leaves their results as
initializers: the same values every runtime computes, and nothing left for the frontend to guess.

Once folded, the fixed-order resize's `Gather`s read constant indices, which for a whole-number
ratio step evenly (s = 0.25 at 1920x1080: columns 1, 5, 9, ..., rows likewise). `gathers_as_slices`
turns those into `Slice`s: the same elements, but a strided slice is an injective op TVM fuses
with what reads it, where each `take` was a pass of its own over the full-height frame (two of
3 x 1080 x 480 gathers per frame, ~4 ms at 1080p, before the height pass kept one row in four).
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Operators folded when all their inputs are known; their results stay small (sizes, coordinates).
FOLDABLE = {
    "Gather",
    "Cast",
    "Mul",
    "Floor",
    "Ceil",
    "Range",
    "Add",
    "Sub",
    "Div",
    "Max",
    "Min",
    "Unsqueeze",
    "Squeeze",
    "Reshape",
    "Concat",
    "Slice",
    "Constant",
    "Equal",
    "Where",
    "Neg",
    "Abs",
}
LARGEST_FOLDED = 1 << 16  # elements: larger results are tensors of the network, not shape arithmetic


def _standard(node):
    return node.domain in ("", "ai.onnx")


def _input_shapes(model, shapes):
    """{Shape node output: int64 array}: the shapes every `Shape` node reads, from one onnxruntime run."""
    import onnxruntime as ort  # noqa: PLC0415 - onnxruntime loads only to fold

    probes = [n for n in model.graph.node if _standard(n) and n.op_type == "Shape"]
    if not probes:
        return {}
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    del probed.graph.output[:]
    probed.graph.output.extend(helper.make_tensor_value_info(n.output[0], TensorProto.INT64, None) for n in probes)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    bound = {t.name for t in model.graph.initializer}
    elem = {i.name: i.type.tensor_type.elem_type for i in model.graph.input if i.name not in bound}
    feeds = {name: np.zeros(shapes[name], helper.tensor_dtype_to_np_dtype(kind)) for name, kind in elem.items()}
    values = session.run(None, feeds)
    return {n.output[0]: v for n, v in zip(probes, values)}


def _evaluate(node, inputs):
    from onnx.reference import ReferenceEvaluator  # noqa: PLC0415 - onnx's reference evaluator loads on use

    return ReferenceEvaluator(node).run(None, dict(zip(node.input, inputs)))


def fold_shape_arithmetic(model, shapes):
    """A copy of `model` (its free inputs of static `shapes`) with Shape nodes and the small
    arithmetic on their results replaced by initializers."""
    known = _input_shapes(model, shapes)
    if not known:
        return model
    small = {
        t.name: numpy_helper.to_array(t)
        for t in model.graph.initializer
        if np.prod(t.dims, dtype=np.int64) <= LARGEST_FOLDED
    }
    values = {**small, **known}
    folded = set(known)
    for node in model.graph.node:
        if not _standard(node) or node.op_type not in FOLDABLE or node.output[0] in folded:
            continue
        if not all(name in values for name in node.input if name):
            continue
        outputs = _evaluate(node, [values[name] if name else None for name in node.input])
        if any(np.asarray(o).size > LARGEST_FOLDED for o in outputs):
            continue
        for name, value in zip(node.output, outputs):
            values[name] = np.asarray(value)
            folded.add(name)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [n for n in out.graph.node if not any(o in folded for o in n.output)]
    needed = {name for n in kept for name in n.input} | {o.name for o in out.graph.output}
    existing = {t.name for t in out.graph.initializer}
    del out.graph.node[:]
    out.graph.node.extend(kept)
    out.graph.initializer.extend(
        numpy_helper.from_array(values[name], name) for name in sorted(folded & needed) if name not in existing
    )
    return out


def _even_steps(indices):
    """(start, step) when `indices` (1-D int) are start, start + step, ... with step >= 1, else None."""
    if indices.ndim != 1 or indices.size == 0 or indices.min() < 0:
        return None
    start = int(indices[0])
    step = int(indices[1] - indices[0]) if indices.size > 1 else 1
    if step < 1 or not np.array_equal(indices, start + step * np.arange(indices.size)):
        return None
    return start, step


def gathers_as_slices(model):
    """A copy of `model` with each Gather of constant, evenly stepped, non-negative 1-D indices
    replaced by a Slice taking the same elements."""
    constants = {
        t.name: numpy_helper.to_array(t)
        for t in model.graph.initializer
        if len(t.dims) == 1 and t.data_type in (TensorProto.INT64, TensorProto.INT32)
    }
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes, extra = [], []
    for node in out.graph.node:
        indices = constants.get(node.input[1]) if _standard(node) and node.op_type == "Gather" else None
        steps = None if indices is None else _even_steps(indices)
        if steps is None:
            nodes.append(node)
            continue
        start, step = steps
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        stop = start + step * (indices.size - 1) + 1
        names = [f"{node.output[0]}.slice_{part}" for part in ("starts", "ends", "axes", "steps")]
        extra += [
            numpy_helper.from_array(np.array([v], np.int64), name) for v, name in zip((start, stop, axis, step), names)
        ]
        nodes.append(helper.make_node("Slice", [node.input[0], *names], list(node.output), name=node.name))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(extra)
    return out
