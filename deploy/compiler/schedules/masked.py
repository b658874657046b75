"""Sparse execution of the SAB's masked binary convolutions: tiles the mask switches off skip the
XNOR/popcount loop.

A masked convolution's output is exactly 0 wherever the mask is 0 (the output transform selects
0 there, kernels/bitserial.py). After the schedule (bitserial.schedule_bconv) one register tile
is `owt` output columns of one row x `vec` output channels:

    for n*y (parallel) / x tile / o tile:
        acc = 0                                   # init
        for ry, rx, rc: acc += popcount(...)      # the work
        out[tile] = mask ? transform(acc) : 0     # output transform

This pass wraps the work in `if any(mask[n, 0, y, x tile] != 0)`: a tile whose columns are all
masked out keeps acc = 0 and its transform writes the zeros it always wrote, so the result is
bit for bit the dense kernel's, and the popcount loop only runs on the mask's band (about half
of the positions on footage of people, `bimatting profile --frames`). Kernels of any other
structure (a tuned schedule of another shape) are returned unchanged.
"""
import tvm
import tvm_ffi
from tvm import tirx

MASK_PARAM = "mask"


def _loads_of(expr, name):
    found = []
    tvm_ffi.structural_walk(expr, [(tvm.ir.expr.TensorLoad,
                                    lambda n: found.append(n) if n.source.name == name else None)])
    return found


def _substituted(expr, var, value):
    return tvm_ffi.structural_mutate(expr, [(tvm.ir.expr.Var, lambda v, _m: value if v.same_as(var) else v)])


def _tile_is_active(epilogue, mask_load):
    """`any(mask != 0)` over the tile's columns, from the output transform's own loop nest
    (For o -> For x -> the output block) and bindings [n, o, y, x]."""
    columns = epilogue.body
    realize = columns.body
    if not (isinstance(columns, tirx.For) and hasattr(realize, "iter_values")):
        return None
    n, _, y, x = realize.iter_values
    width = int(mask_load.source.shape[3])
    tests = []
    for column in range(int(columns.extent)):
        x_at = _substituted(x, columns.loop_var, tirx.const(column, str(columns.loop_var.ty)))
        x_at = tirx.min(x_at, tirx.const(width - 1, str(x_at.ty)))  # a partial last tile reads in bounds
        index = [n, tirx.const(0, str(n.ty)), y, x_at]
        tests.append(tirx.BufferLoad(mask_load.source, index) != tirx.const(0, str(mask_load.ty)))
    active = tests[0]
    for test in tests[1:]:
        active = tirx.Or(active, test)
    return active


def skip_masked_out_tiles(func):
    """A scheduled masked bconv PrimFunc with its popcount loop guarded per tile (module doc)."""
    if not any(p.name == MASK_PARAM for p in func.params):
        return func
    changed = []

    def on_for(loop, mutator):
        body = loop.body
        if changed or not (isinstance(body, tirx.SeqStmt) and len(body.seq) == 3):
            return mutator.default_mutate(loop)
        init, work, epilogue = body.seq
        if not (isinstance(work, tirx.For) and isinstance(epilogue, tirx.For)):
            return mutator.default_mutate(loop)
        loads = _loads_of(epilogue, MASK_PARAM)
        active = _tile_is_active(epilogue, loads[0]) if loads else None
        if active is None:
            return mutator.default_mutate(loop)
        changed.append(loop)
        guarded = tirx.SeqStmt([init, tirx.IfThenElse(active, work, None), epilogue])
        return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, guarded, loop.thread_binding,
                        loop.annotations)

    return tvm_ffi.structural_mutate(func, [(tirx.For, on_for)])
