"""MetaSchedule tuning of the bitserial kernels (the `--tuning-db` of `bimatting compile`).

The design space of a binary convolution is its manual schedule with the tile sizes sampled
(`schedules.bitserial.schedule_bconv(tunable=True)`: vector width over output channels,
register tile over columns), so tuning searches what the manual schedule fixes by hand.

    db_dir = tune("bimatting.onnx", "rpi4", "tuning/rpi4", trials=64, runner=rpc_runner)
    compile_model("bimatting.onnx", "rpi4", "out.tar", tuning_db=db_dir)

Records are keyed by the kernel's TIR (shapes, layout, epilogue): `compile` looks every kernel
up with `workload(func)` and falls back to the manual schedule when a kernel was not tuned.
Tune on the board (an `RPCRunner` to its tracker) or on a machine with its CPU: emulated
timings mean nothing.
"""
import functools
import logging
from pathlib import Path

from bimatting.errors import InputError

log = logging.getLogger(__name__)
WORKLOAD_FILE, RECORD_FILE = "database_workload.json", "database_tuning_record.json"


def workload(func):
    """The IRModule a tuning record of this PrimFunc is stored under."""
    import tvm

    from bimatting.deploy.schedules import fresh

    return tvm.IRModule({"main": fresh(func).with_attr("global_symbol", "main")})  # as MetaSchedule stores it


def open_database(folder, create=False):
    """The JSON database in `folder` (InputError if it has none and `create` is False)."""
    from tvm.s_tir import meta_schedule as ms

    folder = Path(folder)
    if not create and not (folder / WORKLOAD_FILE).is_file():
        raise InputError(f"'{folder}' holds no tuning database ({WORKLOAD_FILE}); run `bimatting tune` first")
    folder.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(str(folder / WORKLOAD_FILE), str(folder / RECORD_FILE))


def design_space(arch):
    """MetaSchedule space function of a binary convolution for `arch` (schedules/x86|aarch64)."""

    def space(sch):
        arch.schedule_bconv(sch, tunable=True)
        return sch

    return space


def _export_with(compiler, mod):
    """Builder export: link with `compiler` (cloudpickled into MetaSchedule's builder workers)."""
    import os
    import tempfile

    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="bimatting-tune-"), "kernel.so")
    mod.export_library(path, fcompile=cc.cross_compiler(compiler) if compiler else None)
    return path


def builder_for(target, timeout_sec=120):
    """A LocalBuilder that links for `target` (cross compiler for boards)."""
    from tvm.s_tir import meta_schedule as ms

    from bimatting.deploy.target import check_compiler

    compiler = check_compiler(target) if target.cross_compiler else None
    return ms.builder.LocalBuilder(f_export=functools.partial(_export_with, compiler), timeout_sec=timeout_sec)


def kernel_tasks(mod):
    """[(name, PrimFunc)] of the binary convolutions of a legalized Relax module."""
    from tvm import tirx

    from bimatting.deploy.schedules import KERNEL_ATTR

    return [(gvar.name_hint, func) for gvar, func in mod.functions_items()
            if isinstance(func, tirx.PrimFunc) and func.attrs.get(KERNEL_ATTR, "") == "bconv"]


def tune_func(func, resolved_target, folder, trials, runner="local", builder=None, seed=0):
    """Tune one bitserial PrimFunc; records go to the JSON database in `folder`."""
    from tvm.s_tir import meta_schedule as ms

    from bimatting.deploy.schedules import arch_for

    tvm_target = resolved_target.tvm_target
    database = open_database(folder, create=True)
    ms.tune_tir(workload(func), tvm_target, str(Path(folder) / "logs"), max_trials_global=trials,
                num_trials_per_iter=min(trials, 16), space=design_space(arch_for(tvm_target)),
                builder=builder or builder_for(resolved_target), runner=runner, database=database,
                cost_model="random", num_tuning_cores=1, seed=seed)
    return database


def tune(source, target_name, folder, trials, resolution=None, downsample_ratio=None, runner="local",
         progress=None):
    """Tune every binary convolution of an ONNX model for a target; returns `folder`."""
    from bimatting.deploy import build
    from bimatting.deploy.schedules import arch_for
    from bimatting.deploy.target import resolve

    target = resolve(target_name)
    tvm_target = target.tvm_target
    mod, _ = build.import_model(build.load_onnx(source), arch_for(tvm_target), resolution, downsample_ratio)
    with tvm_target:
        mod = build.pipeline_front(tvm_target)(mod)
    tasks = kernel_tasks(mod)
    builder = builder_for(target)
    for index, (name, func) in enumerate(tasks):
        if progress:
            progress(index, len(tasks), name)
        tune_func(func, target, folder, max(2, trials // max(len(tasks), 1)), runner, builder)
    return folder
