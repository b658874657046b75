"""`bimatting compile`: ONNX model -> one artifact for a target board.

    metadata = compile_model("bimatting.onnx", "rpi4", "bimatting-rpi4.tar", resolution=(512, 288))

Stages: resolve the target and check its compiler (before any heavy work), plan static input
shapes (shapes.py), import (importer.py), legalize and fuse the standard ops (TVM's CPU
pipeline), lift the constants into parameters, schedule every PrimFunc (schedules/), compile,
link (cross compiler for ARM), write the artifact atomically (artifact.py).
"""

import datetime
import logging
import tempfile
from pathlib import Path

import numpy as np

from bimatting import __version__
from bimatting.atomic import check_writable_parent
from bimatting.binops import schema
from bimatting.deploy import artifact, target as targets
from bimatting.deploy.compiler import importer, shapes, tuning_database as tuning
from bimatting.deploy.compiler.channel_slices import push_channel_slices_pass
from bimatting.deploy.compiler.float_order import NoContraction
from bimatting.deploy.compiler.fuse_producers import fuse_producers_pass
from bimatting.deploy.compiler.resize import RESIZE_OP, legalize_resize2d
from bimatting.deploy.compiler.schedules import ScheduleModule, kernel_config_for
from bimatting.errors import InputError
from bimatting.weights.onnx_check import load_checked

log = logging.getLogger(__name__)
LIFT_MIN_ELEMENTS = 2  # scalars stay in the library


def pipeline_front(tvm_target):
    """Select the branches decided at compile time, take the parts of a split as slices (moved up
    to the tensors they come from, channel_slices.py), compute each repeated expression once (the
    exported graph pools some encoder tensors twice, once per branch reading them), legalize
    + fuse the standard ops (TVM's CPU pipeline, first half; bilinear resizes legalized as two 1-D
    passes, resize.py)."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    legalize = cpu.legalize_passes(tvm_target)
    assert legalize[0].info.name == "LegalizeOps", legalize[0].info.name  # TVM's list, first pass replaced
    legalize[0] = relax.transform.LegalizeOps(customize_legalize_map={RESIZE_OP: legalize_resize2d})
    passes = [
        _constant_where_pass(),
        _split_as_slices_pass(),
        relax.transform.DeadCodeElimination(),
        push_channel_slices_pass(),
        relax.transform.EliminateCommonSubexpr(),
    ]
    assert legalize[-1].info.name == "FuseTIR", legalize[-1].info.name
    legalize.insert(len(legalize) - 1, fuse_producers_pass())  # after FuseOps, before FuseTIR
    passes += cpu.library_dispatch_passes(tvm_target) + legalize
    passes.append(relax.transform.DeadCodeElimination())
    return tvm.transform.Sequential(passes)


def _constant_where(mod):
    """`where(c, a, b)` with a constant, uniform condition -> the branch it selects, when that
    branch already has the result's shape. The graph's refine-or-upsample choice depends on the
    downsample ratio, which is fixed at compile time; unfolded, both branches run at full
    resolution (at 1920x1080 the unused upsample cost ~20 ms of a ~60 ms function)."""
    import tvm
    import tvm_ffi
    from tvm import relax

    where_op = tvm.ir.Op.get("relax.where")

    @relax.expr_functor.mutator
    class _Fold(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (isinstance(call, relax.Call) and call.op.same_as(where_op)):
                return call
            condition = call.args[0]
            if not isinstance(condition, tvm.ir.expr.Constant):
                return call
            values = condition.value.numpy()
            if values.size == 0 or not (values.all() or not values.any()):
                return call
            chosen = call.args[1] if values.reshape(-1)[0] else call.args[2]
            same_shape = tvm_ffi.structural_equal(chosen.ty, call.ty)
            return chosen if same_shape else call

    for gvar, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gvar] = _Fold(mod).visit_expr(func)
    return mod


def _constant_where_pass():
    import tvm

    return tvm.transform.module_pass(
        lambda mod, _ctx: _constant_where(mod), opt_level=0, name="bimatting.ConstantWhere"
    )


def _split_as_slices(mod):
    """Each part of a `split` taken as its own strided_slice. Relax fuses no op with a tuple
    output into its consumers, so a split was a pass of its own copying the whole tensor (the
    refiner's 4-channel output at 1920x1080 into fgr and pha: ~4 ms); a slice is an injective op
    that fuses into what reads it. Same values: both only copy."""
    import tvm
    from tvm import relax

    split_op = tvm.ir.Op.get("relax.split")

    @relax.expr_functor.mutator
    class _Slices(relax.PyExprMutator):
        def visit_tuple_getitem_(self, op):
            op = super().visit_tuple_getitem_(op)
            source = op.tuple_value
            call = self.lookup_binding(source) if isinstance(source, relax.Var) else None
            if not (isinstance(call, relax.Call) and call.op.same_as(split_op)):
                return op
            bounds = _split_bounds(call)
            if bounds is None:
                return op
            begin, end = bounds[op.index]
            return relax.op.strided_slice(call.args[0], axes=[int(call.attrs.axis)], begin=[begin], end=[end])

    for gvar, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gvar] = _Slices(mod).visit_expr(func)
    return mod


def _split_bounds(call):
    """[(begin, end)] of each part of a static `split` along its axis, else None."""
    shape = getattr(call.args[0].ty, "shape", None)
    axis = int(call.attrs.axis)
    try:
        extent = int(shape[axis])
    except (TypeError, ValueError, IndexError):
        return None
    parts = call.attrs.indices_or_sections
    if isinstance(parts, int) or hasattr(parts, "value"):  # n equal sections
        count = int(parts)
        if count <= 0 or extent % count:
            return None
        cuts = [extent // count * i for i in range(1, count)]
    else:
        try:
            cuts = [int(v) for v in parts]
        except (TypeError, ValueError):
            return None
    edges = [0] + [min(max(c, 0), extent) for c in cuts] + [extent]
    return list(zip(edges[:-1], edges[1:]))


def _split_as_slices_pass():
    import tvm

    return tvm.transform.module_pass(
        lambda mod, _ctx: _split_as_slices(mod), opt_level=0, name="bimatting.SplitAsSlices"
    )


def pipeline_back(tvm_target, database=None):
    """Schedule every PrimFunc, keep the graph's float roundings (float_order), then TVM's CPU
    lowering and finalization passes."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="bimatting.Pipeline")
    def _pipeline(mod, _ctx):
        with tvm_target:
            seq = [ScheduleModule(tvm_target, database), NoContraction] + cpu.dataflow_lower_passes(tvm_target)
            return tvm.transform.Sequential(seq + cpu.finalize_passes(tvm_target))(mod)

    return _pipeline


def lift_constants(mod, prefix="p"):
    """Move the tensor constants of `main` into trailing parameters: (mod, {name: array})."""
    import tvm
    from tvm import relax

    lifted = []

    @relax.expr_functor.mutator
    class _Lift(relax.PyExprMutator):
        def visit_generic_const_(self, op):
            value = op.value
            if len(value.shape) == 0 or int(np.prod(value.shape)) < LIFT_MIN_ELEMENTS:
                return op
            var = relax.Var(f"{prefix}{len(lifted)}", relax.TensorType(tuple(value.shape), str(value.dtype)))
            lifted.append((var, value.numpy()))
            return var

    main = mod["main"]
    body = _Lift(mod).visit_expr(main.body)
    params = list(main.params) + [var for var, _ in lifted]
    func = relax.Function(params, body, main.ret_ty, main.is_pure, main.attrs)
    mod = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    mod["main"] = func
    return mod, {var.name: array for var, array in lifted}


def load_onnx(path):
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model '{path}' does not exist; export one with `bimatting export`")
    return load_checked(path)  # untrusted file: versions, ops, tensor sizes, shapes (InputError)


def import_model(model, kernel_config, resolution=None, downsample_ratio=None):
    """(Relax module, InputPlan) with static shapes at `resolution` (W, H)."""
    inputs, outputs = importer.graph_io(model)
    plan = shapes.plan_inputs(inputs, outputs, resolution, downsample_ratio)
    output_names = [o[0] for o in outputs]
    for attempt in range(2):
        mod = importer.import_onnx(model, {k: v for k, v in plan.shapes.items()}, kernel_config, plan.constants)
        inferred = dict(zip(output_names, importer.output_shapes(mod)))
        if not shapes.reconcile_states(plan, inferred):
            plan.output_shapes = inferred
            return mod, plan
        log.info("state shapes corrected to %s (attempt %d)", plan.shapes, attempt + 1)
    raise InputError(
        "the recurrent state shapes do not settle (an output rKo changes shape with its input "
        "rKi); export the model with static state shapes"
    )


def _versions():
    import onnx
    import tvm

    return {"bimatting": __version__, "tvm": tvm.__version__, "onnx": onnx.__version__, "numpy": np.__version__}


def compile_model(
    source, target_name, output, *, resolution=None, downsample_ratio=None, tuning_db=None, progress=None
):
    """Compile ONNX `source` for `target_name` into the artifact `output`; returns its metadata.

    `progress(stage)` is called before each stage (the CLI drives a progress bar with it).
    """
    step = progress or (lambda stage: None)
    step("target")
    target = targets.resolve(target_name)
    targets.check_compiler(target)
    _check_output(output)
    if tuning_db is not None:
        tuning.check(tuning_db, target.name, target.llvm)  # tuned for this very target (InputError)
    step("import")
    model = load_onnx(source)

    tvm_target = target.tvm_target
    kernel_config = kernel_config_for(tvm_target)
    mod, plan = import_model(model, kernel_config, resolution, downsample_ratio)
    step("legalize")
    with tvm_target:
        mod = pipeline_front(tvm_target)(mod)
    mod, params = lift_constants(mod)
    step("compile")
    executable = _compile(mod, tvm_target, tuning_db)
    step("link")
    with tempfile.TemporaryDirectory(prefix="bimatting-build-") as tmp:
        library = Path(tmp) / artifact.LIBRARY
        executable.export_library(str(library), fcompile=targets.fcompile(target))
        metadata = _metadata(model, source, target, plan, params, kernel_config)
        if tuning_db is not None:
            metadata["tuning"] = tuning.summary(tuning_db)
        step("write")
        return artifact.write(output, library, params, metadata)


def _check_output(output):
    check_writable_parent(output)


def _compile(mod, tvm_target, tuning_db):
    import tvm

    database = None
    if tuning_db is not None:
        database = tuning.open_database(tuning_db)
    with tvm.transform.PassContext(opt_level=3):
        return tvm.compile(mod, target=tvm_target, relax_pipeline=pipeline_back(tvm_target, database))


def _metadata(model, source, target, plan, params, kernel_config):
    inputs, outputs = importer.graph_io(model, bound=plan.constants)
    from onnx.helper import tensor_dtype_to_np_dtype

    input_meta = [
        {
            "name": name,
            "shape": plan.shapes[name],
            "dtype": str(tensor_dtype_to_np_dtype(elem)),
            "role": "image" if name == plan.image else ("state" if name in plan.states else "input"),
        }
        for name, _, elem in inputs
    ]
    output_meta = [
        {"name": name, "shape": list(plan.output_shapes[name]), "dtype": str(tensor_dtype_to_np_dtype(elem))}
        for name, _, elem in outputs
    ]
    binary_convs = sum(1 for n in model.graph.node if schema.is_binary_conv(n))
    return {
        "inputs": input_meta,
        "outputs": output_meta,
        "states": plan.states,
        "params": list(params),
        "resolution": list(plan.resolution),
        "downsample_ratio": plan.downsample_ratio,
        "target": target.summary(),
        "kernels": {"binary_convs": binary_convs, "word": kernel_config.word_dtype},
        "source": {"file": Path(source).name, "sha256": artifact.sha256_file(source)},
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
