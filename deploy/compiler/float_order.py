"""Keep every float rounding of the graph: no multiply fused into a later add.

LLVM, as TVM configures it, contracts `a * b + c` into one fused multiply-add, which rounds once
where the ONNX graph (and onnxruntime, and PyTorch) round twice. The results differ in the last
bit, and a binary network turns a last-bit difference before a sign into a flipped decision.
This pass wraps each float product that feeds an add or a subtraction in `llvm.arithmetic.fence`,
which LLVM may not optimise across, so the compiled code rounds as the graph does.

Reductions (float convolutions, pooling sums) are left alone: no runtime fixes their summation
order, so fusing there changes nothing that was the same before, and it keeps their speed.
"""

import tvm
import tvm_ffi
from tvm import s_tir, tirx


def _is_float(expr):
    return str(expr.ty).startswith("float")


def _fenced(expr):
    if isinstance(expr, tirx.Mul) and _is_float(expr):
        return tirx.call_llvm_pure_intrin(str(expr.ty), "llvm.arithmetic.fence", expr)
    return expr


def _on_add(expr, mutator):
    expr = mutator.default_mutate(expr)
    if not _is_float(expr):
        return expr
    a, b = _fenced(expr.a), _fenced(expr.b)
    return expr if a.same_as(expr.a) and b.same_as(expr.b) else type(expr)(a, b)


def _on_block(block, mutator):
    if any(iv.iter_type == tirx.IterVar.CommReduce for iv in block.iter_vars):
        return block
    return mutator.default_mutate(block)


def fence_products(func):
    """A PrimFunc with every float product that feeds an add/sub outside reductions fenced."""
    return tvm_ffi.structural_mutate(func, [(s_tir.SBlock, _on_block), ((tirx.Add, tirx.Sub), _on_add)])


@tvm.transform.module_pass(opt_level=0, name="bimatting.NoContraction")
def NoContraction(mod, _ctx):  # noqa: N802 (TVM pass naming)
    """fence_products on every PrimFunc of the module."""
    updates = {gvar: fence_products(func) for gvar, func in mod.functions_items() if isinstance(func, tirx.PrimFunc)}
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod
