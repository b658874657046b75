"""Schedules: bitserial kernels per architecture (x86.py, aarch64.py) and the full-precision rest
(fp.py). Compute definitions live in bimatting.deploy.compiler.kernels; nothing here changes results.

`kernel_config_for(target)` picks the bitserial configuration (word type, tiles) of a TVM target;
`schedule_kernel` schedules one bitserial PrimFunc (tagged by lowering.KERNEL_ATTR);
`ScheduleModule` is the pipeline pass that schedules every PrimFunc of a Relax module: tuned
records from a MetaSchedule database first, then the manual bitserial schedules, then the FP
rules.
"""

import dataclasses

import tvm
from tvm import s_tir, tirx
from tvm.target import codegen

from bimatting.deploy.compiler.schedules import aarch64, bitserial, fp, masked, pair_dot, x86
from bimatting.deploy.compiler.schedules.channel_matmul import ChannelMatmul
from bimatting.deploy.compiler.schedules.conv_nchw import ConvNCHW
from bimatting.deploy.compiler.schedules.pack_producers import PackWithProducers
from bimatting.deploy.compiler.schedules.primfunc import fresh, target_triple
from bimatting.deploy.compiler.tuning_database import workload

KERNEL_ATTR = "bimatting.kernel"


def kernel_config_for(target):
    """The bitserial configuration for a tvm.target.Target (by its triple; on AArch64, whether it
    has dotprod; on x86, whether it has AVX-512 VNNI for the int16 pair convs)."""
    triple = target_triple(target)
    if triple.startswith(("aarch64", "arm64")):
        return (
            aarch64.DOTPROD_KERNEL_CONFIG if codegen.target_has_features("dotprod", target) else aarch64.KERNEL_CONFIG
        )
    if triple.startswith(("x86_64", "i686", "x86")):
        return dataclasses.replace(x86.KERNEL_CONFIG, pair_dot=pair_dot.available(target))
    raise ValueError(f"no bitserial schedule for target triple '{triple}' (x86_64 and aarch64 are supported)")


def scheduled_kernel(func, kernel_config):
    """The scheduled PrimFunc of a bitserial kernel, masked convolutions skipping masked-out tiles."""
    return finish_kernel(func, schedule_kernel(func, kernel_config).mod["main"])


def finish_kernel(func, scheduled):
    """Passes after any schedule of a bitserial kernel (manual or tuned): masked.py's tile skip."""
    if str(func.attrs[KERNEL_ATTR]) == "bconv":
        return masked.skip_masked_out_tiles(scheduled)
    return scheduled


def schedule_kernel(func, kernel_config, tunable=False):
    """A scheduled copy of a bitserial PrimFunc (`s_tir.Schedule`), by its kernel kind."""
    kind = str(func.attrs[KERNEL_ATTR])
    sch = s_tir.Schedule(fresh(func))
    if kind == "bconv":
        kernel_config.schedule_bconv(sch, tunable)
    elif kind in ("bpack", "brepack"):
        bitserial.schedule_pack(sch, kind, kernel_config.pack_lanes)
    elif kind in ("binarize_pack", "unpack"):
        bitserial.schedule_bytes_op(sch, kind, kernel_config.pack_lanes)
    else:
        raise ValueError(f"unknown bitserial kernel kind '{kind}'")
    return sch


def fp_rules(target):
    """The full-precision rules in the order they are tried (fp.apply_rules): the specific ones
    (their own files; they share fp.py's helpers) before fp.py's general ones."""
    pack = PackWithProducers(kernel_config_for(target).pack_lanes)
    return [pack, ConvNCHW(), ChannelMatmul(), fp.Injective(), fp.ElementwiseWithReductions(), fp.ParallelOuter()]


def _mark(func):
    return func.with_attr("tirx.is_scheduled", True)


@tvm.transform.module_pass(opt_level=0, name="bimatting.ScheduleModule")
class ScheduleModule:
    """Schedule every unscheduled PrimFunc of a module for `target`."""

    def __init__(self, target, database=None):
        self.target = target
        self.kernel_config = kernel_config_for(target)
        self.database = database  # a MetaSchedule database (tuning records) or None
        self.fp_rules = fp_rules(target)

    def transform_module(self, mod, _ctx):
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", False):
                continue
            scheduled = self._from_database(func)
            if scheduled is None and KERNEL_ATTR in func.attrs:
                scheduled = schedule_kernel(func, self.kernel_config).mod["main"]
            if scheduled is not None and KERNEL_ATTR in func.attrs:
                scheduled = finish_kernel(func, scheduled)
            if scheduled is None:
                scheduled = fp.apply_rules(func, self.target, self.fp_rules)
            if scheduled is not None and KERNEL_ATTR not in func.attrs:
                scheduled = masked.skip_zero_scaled_tiles(scheduled)
            if scheduled is not None:
                updates[gvar] = _mark(
                    scheduled.with_attrs({k: v for k, v in func.attrs.items() if k not in scheduled.attrs})
                )
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    def _from_database(self, func):
        if self.database is None:
            return None
        sch = self.database.query_schedule(workload(fresh(func)), self.target, workload_name="main")
        return None if sch is None else sch.mod["main"].without_attr("global_symbol")
