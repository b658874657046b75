"""`bimatting tune`: MetaSchedule tuning of a model's kernels, each candidate measured on the board.

    summary = tune("bimatting.onnx", "rpi4", "rpi4.db", trials=64, rpc="pi.local:9090")
    compile_model("bimatting.onnx", "rpi4", "rpi4.tar", tuning_db="rpi4.db")

Tasks are the kernels exactly as `bimatting compile` schedules them (same import, legalization,
fusion and constant lifting, deploy/build.py), so the records match at compile time:
* binary convs: the design space is the hand-written bitserial schedule with its tile sizes
  (vector width, register tile) sampled (schedules/bitserial.py, `tunable=True`);
* float convs: MetaSchedule's default CPU design space.
Packing and element-wise kernels keep their rules. Tasks are visited round robin, those with the
fewest records first, then the largest (FLOPs x uses).

Measurement (deploy/measure.py): candidates are cross-compiled here and timed on the board with
`time_evaluator`, straight over `--rpc` (MetaSchedule's RPCRunner needs a tracker, which a plain
server cannot join), through a tracker (`--tracker`/`--key`), or here (`--local`).

The hand-written schedule of every task that got trials is measured too and stored as a record:
compile picks the fastest record, so a short search never makes a kernel slower than untuned.

Resuming: records are kept in a scratch copy and the database folder is replaced atomically after
each measured batch (a crash or Ctrl-C keeps every finished batch); running again with the same
-o adds trials. The manifest (tuning.json, deploy/tuning.py) pins model, target and resolution.
"""

import functools
import gc
import importlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bimatting.atomic import atomic_dir, check_writable_parent
from bimatting.deploy import target as targets
from bimatting.deploy.artifact import sha256_file
from bimatting.deploy.compiler import tuning_database as tuning
from bimatting.deploy.device import rpc as rpc_util
from bimatting.deploy.tuning import measure
from bimatting.errors import InputError, RuntimeFailure

KERNEL_KINDS = {"binary": ("bconv",), "float": ("conv",), "all": ("bconv", "conv")}
BUILD_TIMEOUT_S = 300.0  # one candidate, cross-compiled on a busy 2-core host


@dataclass
class Task:
    name: str
    kind: str  # "bconv" (bitserial, hand-written space) or "conv" (float, MetaSchedule's space)
    mod: object  # IRModule({"main": func}) exactly as the build pipeline queries it
    weight: int  # call sites in the network
    flops: float


def extract_tasks(model_path, target, resolution=None, downsample_ratio=None, kernels="all"):
    """The tunable kernels of an ONNX model for a ResolvedTarget, largest first."""
    import tvm

    from bimatting.deploy.compiler import build  # noqa: PLC0415 - TVM loads on use
    from bimatting.deploy.compiler.schedules import KERNEL_ATTR, kernel_config_for  # noqa: PLC0415 - TVM loads on use

    if kernels not in KERNEL_KINDS:
        raise InputError(f"--kernels must be one of {', '.join(KERNEL_KINDS)}, got '{kernels}'")
    tvm_target = target.tvm_target
    mod, _ = build.import_model(
        build.load_onnx(model_path), kernel_config_for(tvm_target), resolution, downsample_ratio
    )
    with tvm_target:
        mod = build.pipeline_front(tvm_target)(mod)
    mod, _ = build.lift_constants(mod)
    uses = _call_counts(mod)
    tasks = []
    for gvar, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        if func.attrs is not None and KERNEL_ATTR in func.attrs:
            kind = str(func.attrs[KERNEL_ATTR])
        else:
            kind = "conv" if "conv2d" in gvar.name_hint else "other"
        if kind not in KERNEL_KINDS[kernels]:
            continue
        workload = tuning.workload(func)
        tasks.append(Task(gvar.name_hint, kind, workload, uses.get(gvar.name_hint, 1), _flops(workload)))
    tasks.sort(key=lambda t: (-t.flops * t.weight, t.name))
    return tasks


def _call_counts(mod):
    """{PrimFunc name: number of call_tir sites in the module's Relax functions}."""
    from tvm import relax

    counts = {}

    @relax.expr_functor.visitor
    class _Count(relax.PyExprVisitor):
        def visit_call_(self, call):
            for arg in call.args:
                if hasattr(arg, "name_hint") and isinstance(arg, __import__("tvm").ir.GlobalVar):
                    counts[arg.name_hint] = counts.get(arg.name_hint, 0) + 1
            for arg in call.args:
                self.visit_expr(arg)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            _Count().visit_expr(func)
    return counts


def _flops(mod):
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(mod))
    except Exception:  # noqa: BLE001 - an opaque kernel: order it last
        return 0.0


# ---- the tuning session ----------------------------------------------------------------------


def tune(
    model_path,
    target_name,
    database_dir,
    *,
    trials,
    rpc=None,
    tracker=None,
    key=None,
    local=False,
    resolution=None,
    downsample_ratio=None,
    kernels="all",
    timeout=120.0,
    progress=True,
):
    """Tune the kernels of `model_path` for `target_name` into `database_dir`; returns a summary."""
    if trials < 1:
        raise InputError(f"--trials must be >= 1, got {trials}")
    if sum(bool(x) for x in (rpc, tracker, local)) != 1:
        raise InputError("give where to measure: --rpc HOST:PORT, --tracker HOST:PORT --key KEY, or --local")
    target = targets.resolve(target_name)
    # Ctrl-C is handled from here on, the checks included: arriving while TVM's compiler ran
    # (the task extraction), it could end up caught as an error and the tuning would go on.
    with measure.Interrupt() as interrupt:
        compiler = targets.check_compiler(target) if target.cross_compiler else None
        manifest = _open_manifest(database_dir, model_path, target, resolution, downsample_ratio)
        connect = _preflight(target, rpc, tracker, key, local)
        tasks = extract_tasks(model_path, target, resolution, downsample_ratio, kernels)
        if interrupt.is_set():
            raise KeyboardInterrupt
        if not tasks:
            raise InputError(f"the model has no {kernels} kernels to tune")
        scratch = Path(tempfile.mkdtemp(prefix=f".{Path(database_dir).name}.", dir=Path(database_dir).resolve().parent))
        runner = measure.make_runner(connect, timeout, interrupt)
        try:
            return _session(
                tasks, target, compiler, manifest, scratch, database_dir, trials, runner, interrupt, progress
            )
        except Exception:
            if interrupt.is_set():  # whatever the killed workers broke: it is the Ctrl-C
                raise KeyboardInterrupt from None
            raise
        finally:
            runner.shutdown()
            shutil.rmtree(scratch, ignore_errors=True)


def _session(tasks, target, compiler, manifest, scratch, database_dir, trials, runner, interrupt, progress):
    _import_cpu_intrinsics()
    from tvm.s_tir import meta_schedule as ms

    from bimatting.deploy.compiler.schedules import kernel_config_for  # noqa: PLC0415 - TVM loads on use

    tvm_target, kernel_config, task_count = target.tvm_target, kernel_config_for(target.tvm_target), len(tasks)
    for name in (tuning.WORKLOADS, tuning.RECORDS):
        if (Path(database_dir) / name).is_file():
            shutil.copyfile(Path(database_dir) / name, scratch / name)
    database = ms.database.JSONDatabase(str(scratch / tuning.WORKLOADS), str(scratch / tuning.RECORDS))
    counts_before = {t.name: _record_count(database, t) for t in tasks}
    # Kernels with the fewest records first (a resumed run spreads to untuned kernels), largest
    # first among equals. Round robin gives each visited task at least one trial, so no more than
    # `trials` tasks can be reached: the rest are not set up at all.
    tasks = sorted(tasks, key=lambda t: (counts_before[t.name], -t.flops * t.weight, t.name))[:trials]
    builder = measure.make_builder(compiler, BUILD_TIMEOUT_S, interrupt)
    contexts = [
        ms.TuneContext(
            mod=t.mod,
            target=tvm_target,
            space_generator=_space(t, kernel_config),
            search_strategy=ms.search_strategy.EvolutionarySearch(population_size=64, init_min_unmeasured=16),
            task_name=t.name,
            num_threads=os.cpu_count(),
        )
        for t in tasks
    ]
    done_before = manifest.get("trials", 0)

    def snapshot():  # after each batch: what finished so far survives a crash or Ctrl-C
        manifest["trials"] = done_before + watcher.measured
        _snapshot(scratch, database_dir, manifest)

    with tqdm(total=trials, desc="tune", unit="trial", disable=not progress) as bar:
        watcher = measure.make_watcher(bar, snapshot, interrupt)
        try:
            ms.tune_tasks(
                tasks=contexts,
                task_weights=[float(t.weight) for t in tasks],
                work_dir=str(scratch),
                max_trials_global=trials,
                num_trials_per_iter=min(trials, 16),
                builder=builder,
                runner=runner,
                database=database,
                cost_model="random",
                measure_callbacks=list(ms.MeasureCallback.create("default")) + [watcher],
                task_scheduler="round-robin",
            )
        except Exception:  # noqa: BLE001 - whatever TVM made of the Watcher's error
            if interrupt.is_set():
                raise KeyboardInterrupt from None
            if watcher.abort_reason:
                raise RuntimeFailure(watcher.abort_reason) from None
            raise
    if interrupt.is_set():
        raise KeyboardInterrupt
    tuned = [t for t in tasks if _record_count(database, t) > counts_before[t.name]]
    baselines = _measure_baselines(
        [t for t in tuned if _entry(manifest, t).get("baseline_ms") is None],
        builder,
        runner,
        database,
        tvm_target,
        kernel_config,
    )
    manifest["trials"] = done_before + watcher.measured
    for task in tuned:
        entry = _entry(manifest, task)
        entry.update(
            kind=task.kind,
            uses=task.weight,
            flops=task.flops,
            records=_record_count(database, task),
            best_ms=_best_ms(database, task),
        )
        if task.name in baselines:
            entry["baseline_ms"] = baselines[task.name]
    _snapshot(scratch, database_dir, manifest)
    return {
        "database": str(database_dir),
        "target": target.name,
        "trials": watcher.measured,
        "failed": watcher.failed,
        "total_trials": manifest["trials"],
        "tasks": task_count,
        "tuned": [dict(_entry(manifest, t), name=t.name) for t in tuned],
    }


def _import_cpu_intrinsics():
    """Register the CPU tensor intrinsics without TVM's CUDA ones.

    TuneContext imports the package tvm.s_tir.tensor_intrin, whose __init__ imports its CUDA
    module: ~500 TVMScript functions, each parsed with inspect.stack(), 30-50 s on a busy 2-core
    host, for intrinsics no CPU schedule uses. The package is entered in sys.modules without
    running that __init__, and its x86 and AArch64 modules (what llvm targets use, ~2 s) are
    imported; any other submodule still imports on demand through the package path."""
    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        package = types.ModuleType(name)
        package.__spec__, package.__file__, package.__package__ = spec, spec.origin, name
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules[name] = package
    for module in ("x86", "arm_cpu"):
        importlib.import_module(f"{name}.{module}")


def _preflight(target, rpc, tracker, key, local):
    """Check the board before any compile work; returns the runner's connect function."""
    if local:
        if target.isa != platform.machine():
            raise InputError(
                f"--local measures on this {platform.machine()} machine; target '{target.name}' is "
                f"{target.isa}: use --rpc/--tracker with the board, or --target host"
            )
        return None
    with rpc_util.open_device(rpc, tracker, key) as device:
        device.check_isa(target.isa, f"target {target.name}")
    gc.collect()  # close the session now: TVM's Python server serves one client at a time
    if rpc:
        return functools.partial(rpc_util.connect, *rpc_util.parse_address(rpc, "--rpc"))
    return functools.partial(rpc_util.request, *rpc_util.parse_address(tracker, "--tracker"), key)


def _space(task, kernel_config):
    from tvm.s_tir import meta_schedule as ms

    if task.kind == "bconv":  # the hand-written schedule with sampled tiles, applied as is
        return ms.space_generator.ScheduleFn(
            lambda sch: kernel_config.schedule_bconv(sch, tunable=True), sch_rules=[], postprocs=[], mutator_probs={}
        )
    return ms.space_generator.PostOrderApply()


def _baseline_schedule(task, tvm_target, kernel_config):
    """The schedule `bimatting compile` applies without a database (traced, so it can be stored)."""
    from bimatting.deploy.compiler.schedules import fp_rules, schedule_kernel  # noqa: PLC0415 - TVM loads on use

    func = task.mod["main"]
    if task.kind == "bconv":
        return schedule_kernel(func, kernel_config)
    for rule in fp_rules(tvm_target):
        try:
            sch = rule.apply(func, tvm_target, False)
        except Exception:  # noqa: BLE001 - as fp.apply_rules: try the next rule
            sch = None
        if sch is not None:
            return sch
    return None


def _measure_baselines(tasks, builder, runner, database, tvm_target, kernel_config):
    """Build and time the hand-written schedule of each task; commit it as a record. {name: ms}."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import remove_build_dir

    planned = [(t, _baseline_schedule(t, tvm_target, kernel_config)) for t in tasks]
    planned = [(t, sch) for t, sch in planned if sch is not None]
    if not planned:
        return {}
    built = builder.build([ms.builder.BuilderInput(sch.mod, tvm_target) for _, sch in planned])
    times = {}
    for (task, sch), result in zip(planned, built):
        if result.error_msg is not None:
            continue
        args_info = ms.arg_info.ArgInfo.from_prim_func(task.mod["main"])
        (future,) = runner.run([ms.runner.RunnerInput(result.artifact_path, "cpu", args_info)])
        measured = future.result()
        remove_build_dir(result.artifact_path)
        if measured.error_msg is None and measured.run_secs:
            secs = [float(s) for s in measured.run_secs]
            database.commit_tuning_record(
                ms.database.TuningRecord(sch.trace, database.commit_workload(task.mod), secs, tvm_target, args_info)
            )
            times[task.name] = float(np.mean(secs)) * 1e3
    return times


def _record_count(database, task):
    if not database.has_workload(task.mod):
        return 0
    return len(database.get_top_k(database.commit_workload(task.mod), 1 << 30))


def _best_ms(database, task):
    best = database.get_top_k(database.commit_workload(task.mod), 1)
    return float(np.mean([float(s) for s in best[0].run_secs])) * 1e3 if best else None


def _entry(manifest, task):
    return manifest.setdefault("tasks", {}).setdefault(task.name, {})


def _open_manifest(database_dir, model_path, target, resolution, downsample_ratio):
    """The existing manifest (checked against this model/target/resolution) or a new one."""
    path = Path(database_dir)
    if not Path(model_path).is_file():
        raise InputError(f"model '{model_path}' does not exist; export one with `bimatting export`")
    pinned = {
        "format": tuning.FORMAT,
        "version": 1,
        "model": {"file": Path(model_path).name, "sha256": sha256_file(model_path)},
        "target": {"name": target.name, "llvm": target.llvm},
        "resolution": list(resolution) if resolution else None,
        "downsample_ratio": downsample_ratio,
    }
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        manifest = tuning.read_manifest(path)
        for field in ("model", "target", "resolution", "downsample_ratio"):
            if manifest.get(field) != pinned[field]:
                raise InputError(
                    f"tuning database '{path}' holds another {field.replace('_', ' ')} "
                    f"({manifest.get(field)!r}, not {pinned[field]!r}); resume only with the same "
                    "model, target and resolution, or choose a new -o"
                )
        return manifest
    check_writable_parent(path)
    return dict(pinned, trials=0, tasks={})


def _snapshot(scratch, database_dir, manifest):
    """Replace the database folder with the scratch records and the manifest, atomically."""
    with atomic_dir(database_dir) as tmp:
        for name in (tuning.WORKLOADS, tuning.RECORDS):
            source = Path(scratch) / name
            if source.is_file():
                shutil.copyfile(source, Path(tmp) / name)
            else:
                (Path(tmp) / name).write_text("")
        (Path(tmp) / tuning.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
