"""Helpers shared by the schedule modules (kept apart so none imports the package)."""

import tvm


def fresh(func):
    """A deep copy of a PrimFunc. TVM 0.27's s_tir.Schedule can edit the blocks of the PrimFunc it
    was given in place (seen with `IRModule({"main": func.with_attr(...)})`), so every schedule
    starts from a copy and the unscheduled original stays reusable."""
    return tvm.ir.load_json(tvm.ir.save_json(func))


def target_triple(target):
    """The LLVM triple of a tvm.target.Target: its `mtriple`, else this machine's (host targets)."""
    return str(target.attrs.get("mtriple", "")) or str(tvm.target.codegen.llvm_get_system_triple())
