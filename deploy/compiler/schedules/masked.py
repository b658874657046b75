"""Sparse execution of the SAB's masked convolutions: tiles the mask switches off skip the
reduction loop (the binary convs' XNOR/popcount, and the float 3x3 conv of decode0's masked branch).

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

The float conv of the masked branch (fixed_point.IntegerChain, then `* mask` in the SAB) is a
schedules/fp.py ConvNCHW kernel of the same shape (or the integer pair conv, integer_pairs.py,
whose f starts with float32(acc)), whose output transform is

    out[tile] = cast?(f(acc) * mask + g)          f: + bias, relu; g: the dense 1x1 branch

Where the mask is 0 across a tile, f(acc) * 0 is a zero whatever acc holds, as long as acc is
finite (its inputs are exact integers, fixed_point.py), so `out` is g there, skipped or not:
`skip_zero_scaled_tiles` guards the multiply-add loop the same way (0.46 of decode0's positions
active on the held-out footage of people at 512x288, 0.42 at 1920x1080 s = 0.25). The one value
that can differ is the sign of a zero where g is -0 (+0 + -0 = +0): equal as a number, and no
later operation tells them apart.
"""

import tvm
import tvm_ffi
from tvm import s_tir, tirx

MASK_PARAM = "mask"


def _loads_of(expr, name):
    found = []
    tvm_ffi.structural_walk(
        expr, [(tvm.ir.expr.TensorLoad, lambda n: found.append(n) if n.source.name == name else None)]
    )
    return found


def _substituted(expr, var, value):
    return tvm_ffi.structural_mutate(expr, [(tvm.ir.expr.Var, lambda v, _m: value if v.same_as(var) else v)])


def _uses(expr, var):
    found = []
    tvm_ffi.structural_walk(expr, [(tvm.ir.expr.Var, lambda v: found.append(v) if v.same_as(var) else None)])
    return bool(found)


def _tile_is_active(epilogue, mask_load):
    """`any(mask != 0)` over the tile's columns, from the output transform's own loop nest
    (For o -> For x -> the output block) and bindings [n, o, y, x]."""
    columns = epilogue.body
    realize = columns.body
    if not (isinstance(columns, tirx.For) and hasattr(realize, "iter_values")):
        return None
    n, _, y, x = realize.iter_values
    if not _uses(x, columns.loop_var) or any(_uses(e, epilogue.loop_var) for e in (n, y, x)):
        return None  # not the (o outer, x inner) nest this test enumerates
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
    return _guard_tiles(func, lambda _work, epilogue: next(iter(_loads_of(epilogue, MASK_PARAM)), None))


def skip_zero_scaled_tiles(func):
    """A scheduled conv PrimFunc whose output is `f(acc) * m + g` with m a [1, 1, H, W] input,
    its multiply-add loop guarded per tile by any(m != 0) (module doc); else `func` unchanged."""
    return _guard_tiles(func, _zero_scaling_load)


def _written_buffers(stmt):
    """Buffers stmt stores to, and those its blocks declare written (a tensorized block stores
    through a match_buffer view of its accumulator, schedules/pair_dot.py)."""
    found = []
    tvm_ffi.structural_walk(
        stmt,
        [
            (tirx.BufferStore, lambda n: found.append(n.buffer)),
            (s_tir.SBlock, lambda n: found.extend(region.source for region in n.writes)),
        ],
    )
    return found


def _zero_scaling_load(work, epilogue):
    """m's load in the epilogue's `cast?(f(acc) * m + g)`: acc written by `work`, read by f only,
    f made of +, -, *, max, min (finite for a finite acc), m indexed [n, 0, y, x] like the output;
    None for any other output transform."""
    realize = getattr(epilogue.body, "body", None)
    store = getattr(getattr(realize, "block", None), "body", None)
    if not isinstance(store, tirx.BufferStore):
        return None
    accumulators = _written_buffers(work)
    reads_acc = lambda expr: any(_loads_of(expr, buffer.name) for buffer in accumulators)  # noqa: E731
    value = store.value.value if isinstance(store.value, tirx.Cast) else store.value
    terms = [(value.a, value.b), (value.b, value.a)] if isinstance(value, tirx.Add) else [(value, None)]
    for scaled, rest in terms:
        if not isinstance(scaled, tirx.Mul) or (rest is not None and reads_acc(rest)):
            continue
        for f, m in ((scaled.a, scaled.b), (scaled.b, scaled.a)):
            if (
                isinstance(m, tvm.ir.expr.TensorLoad)
                and reads_acc(f)
                and not reads_acc(m)
                and _finite_arithmetic(f)
                and _indexed_like_a_mask(m, store)
            ):
                return m
    return None


_FINITE_OPS = (
    tirx.Add,
    tirx.Sub,
    tirx.Mul,
    tirx.Max,
    tirx.Min,
    tvm.ir.expr.TensorLoad,
    tvm.ir.expr.Constant,
    tvm.ir.expr.Var,
)


def _finite_arithmetic(expr):
    """expr is made of _FINITE_OPS and casts from integers (the pair conv's float32(acc))."""
    others = []

    def finite(n):
        return isinstance(n, _FINITE_OPS) or (isinstance(n, tirx.Cast) and "int" in str(n.value.ty))

    tvm_ffi.structural_walk(expr, [(tvm.ir.expr.Expr, lambda n: None if finite(n) else others.append(n))])
    return not others


def _indexed_like_a_mask(load, store):
    """load is m[n, 0, y, x] of a [1, 1, H, W] buffer where the store writes out[n, c, y, x]."""
    shape, index, out = load.source.shape, load.indices, store.indices
    return (
        len(shape) == 4
        and len(out) == 4
        and int(shape[1]) == 1
        and all(index[k].same_as(out[k]) for k in (0, 2, 3))
        and hasattr(index[1], "value")
        and int(index[1].value) == 0
    )


def _guard_tiles(func, find_mask_load):
    """func with its first `init; work; epilogue` loop body guarded as `if active: work`, active
    = any(mask != 0) over the epilogue's tile, the mask load given by find_mask_load(work, epilogue)."""
    changed = []

    def on_for(loop, mutator):
        body = loop.body
        if changed or not (isinstance(body, tirx.SeqStmt) and len(body.seq) == 3):
            return mutator.default_mutate(loop)
        init, work, epilogue = body.seq
        if not (isinstance(work, tirx.For) and isinstance(epilogue, tirx.For)):
            return mutator.default_mutate(loop)
        mask_load = find_mask_load(work, epilogue)
        active = _tile_is_active(epilogue, mask_load) if mask_load is not None else None
        if active is None:
            return mutator.default_mutate(loop)
        changed.append(loop)
        guarded = tirx.SeqStmt([init, tirx.IfThenElse(active, work, None), epilogue])
        return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, guarded, loop.thread_binding, loop.annotations)

    return tvm_ffi.structural_mutate(func, [(tirx.For, on_for)])
