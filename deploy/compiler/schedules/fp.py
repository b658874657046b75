"""Manual schedules for the full-precision layers Relax legalizes to TIR (stem, heads, guided
filter, pools, resizes, gate arithmetic): untuned, TVM 0.27 emits naive serial loop nests for
them, so every PrimFunc left unscheduled by the bitserial pass gets one of these rules
(dlight-style `ScheduleRule`s, MetaSchedule-free):

* `ConvNCHW` (conv_nchw.py): convolutions and pools in NCHW with their producers and consumers.
* `ChannelMatmul` (channel_matmul.py): the projection heads' matmul over channels.
* `Injective`: element-wise / layout / resize functions: producers inlined, flattened loop split
  into a parallel outer part and a vectorized inner part.
* `ElementwiseWithReductions`: element-wise chains holding small reductions (pools, means):
  producers inlined, each remaining block parallel outside and vectorized inside.
* `ParallelOuter`: anything else: outer spatial loops in parallel.

The list, in the order tried, is schedules.fp_rules (the package): conv_nchw.py and
channel_matmul.py use this file's helpers, so this file does not import them.
"""

from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target.codegen import llvm_get_vector_width, target_has_features

from bimatting.deploy.compiler.resize import KEEP_BUFFER, VECTOR_AXIS
from bimatting.deploy.compiler.schedules.primfunc import fresh, target_triple

PARALLEL_MIN = 4096  # elements: below this the thread pool costs more than it saves


@dataclass
class _Block:
    block_rv: object
    kinds: str  # one letter per block iterator: S spatial, R reduction, O other

    def is_injective(self):
        return set(self.kinds) <= {"S"}

    def dom_kind(self):
        return self.kinds


def root_blocks(sch):
    """The root-level blocks of a freshly legalized PrimFunc with their iterator kinds, in order;
    None when the loop nest is not one loop per block iterator (already transformed)."""
    kind = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}
    blocks = []
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        iters = sch.get(block).iter_vars
        if len(sch.get_loops(block)) != len(iters):
            return None
        blocks.append(_Block(block, "".join(kind.get(i.iter_type, "O") for i in iters)))
    return blocks


def _vector_bits(target):
    """The widest vector register of `target` in bits. TVM's llvm_get_vector_width answers 512
    for CPUs without AVX-512 (znver3), so x86 is read from its features."""
    if target_triple(target).startswith(("x86_64", "i686", "i386")):
        if target_has_features("avx512f", target):
            return 512
        if target_has_features("avx", target):
            return 256
        return 128
    width = llvm_get_vector_width(target)
    return width if width > 0 else 128


def vector_lanes(target, bits=32):
    return max(4, _vector_bits(target) // bits)


def static_int(expr):
    """expr as an int where it is a constant, else None (a symbolic extent)."""
    return int(expr) if hasattr(expr, "value") or isinstance(expr, int) else None


def loop_extent(sch, loop):
    return static_int(sch.get(loop).extent)


def divisor_tile(extent, preferred, minimum):
    """Largest tile <= preferred dividing `extent` (>= minimum), or `extent` itself if small."""
    if extent <= preferred:
        return extent
    for tile in range(preferred, minimum - 1, -1):
        if extent % tile == 0:
            return tile
    return preferred  # leaves a predicated tail (loop partitioning splits it off)


def _annotation(sch, block_rv, key):
    value = sch.get(block_rv).annotations.get(key)
    return None if value is None else int(value)


def flat_parallel_vector(sch, block, lanes):
    """Injective block: vectorize a tile of the innermost loop (a divisor of its extent, so no
    tail), run the fused outer loops in parallel. A block annotated with VECTOR_AXIS k vectorizes
    axis k instead, the axes after it unrolled inside (resize.py's phases: contiguous loads along
    k, one vector per phase)."""
    axis = _annotation(sch, block, VECTOR_AXIS)
    if axis is not None:
        _parallel_vector_axis(sch, block, axis, lanes)
        return
    loops = sch.get_loops(block)
    extents = [loop_extent(sch, loop) for loop in loops]
    if not loops or None in extents:
        return
    inner = loops[-1]
    tile = divisor_tile(extents[-1], lanes, 2)
    if extents[-1] % tile:
        tile = 1
    outer = loops[:-1]
    if 1 < tile < extents[-1]:
        outer_inner, inner = sch.split(inner, [None, tile])
        outer = outer or [outer_inner]
    if tile > 1:
        sch.vectorize(inner)
    total = 1
    for extent in extents:
        total *= extent
    if outer and total >= PARALLEL_MIN:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _parallel_vector_axis(sch, block, axis, lanes):
    loops = sch.get_loops(block)
    outer, vector, inner = loops[:axis], loops[axis], loops[axis + 1 :]
    extent = loop_extent(sch, vector)
    tile = divisor_tile(extent, lanes, 2) if extent else 1
    if extent and extent % tile == 0 and tile > 1:
        vector_outer, vector = sch.split(vector, [None, tile])
        sch.reorder(vector_outer, *inner, vector)
        sch.vectorize(vector)
    for loop in inner:
        sch.unroll(loop)
    if outer:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


class Injective(ScheduleRule):
    def apply(self, func, target, tunable):
        sch = s_tir.Schedule(func)
        infos = root_blocks(sch)
        if infos is None or not all(info.is_injective() for info in infos):
            return None
        remaining = try_inline_all(sch, infos)
        for info in remaining:
            flat_parallel_vector(sch, info.block_rv, vector_lanes(target))
        return sch


# A block read more than once (by one consumer or several) is copied into each read when inlined; chains of
# such blocks (polynomials, averages of averages) grow exponentially. Above this many expression
# nodes a block read more than once stays a buffer.
INLINE_COPY_LIMIT = 12


_ARITHMETIC = (tirx.Add, tirx.Sub, tirx.Mul, tirx.Div, tirx.Max, tirx.Min, tirx.Select, tvm.ir.expr.TensorLoad)


def count_nodes(node, kinds, where=lambda n: True):
    found = []
    tvm_ffi.structural_walk(node, [(kinds, lambda n: found.append(1) if where(n) else None)])
    return len(found)


def _copies_too_large(sch, block_rv):
    reads = _reads(sch, block_rv)
    if reads <= 1 or count_nodes(sch.get(block_rv).body.value, _ARITHMETIC) <= INLINE_COPY_LIMIT:
        return False
    # Inlined, the block is computed reads x (consumer's size) times instead of once per element:
    # cheaper when its consumers keep a subset of it (the input resize's width pass over all 1080
    # rows, read at one row in four by the height pass).
    computed = sum(_size(sch, consumer) for consumer in sch.get_consumers(block_rv))
    return reads * computed > _size(sch, block_rv)


def _size(sch, block_rv):
    size = 1
    for iter_var in sch.get(block_rv).iter_vars:
        extent = static_int(iter_var.dom.extent)
        size *= extent if extent is not None else 1 << 30  # symbolic: taken as large
    return size


def _stays_a_buffer(sch, block_rv):
    """Whether an injective block keeps its own buffer rather than being inlined into its readers:
    inlined it would be computed more often than stored (_copies_too_large), or a compiler pass
    asked for it (KEEP_BUFFER, e.g. resize.py's edge-repeated rows)."""
    return _copies_too_large(sch, block_rv) or _annotation(sch, block_rv, KEEP_BUFFER) is not None


def _reads(sch, block_rv):
    store = sch.get(block_rv).body
    return sum(
        count_nodes(sch.get(consumer).body, tvm.ir.expr.TensorLoad, lambda n: n.source.same_as(store.buffer))
        for consumer in sch.get_consumers(block_rv)
    )


def _padding_for_a_stencil(sch, block_rv):
    """Whether a block read several times (a stencil's taps) holds an if_then_else whose
    condition reads its innermost axis (zero padding of a row). Inlined into a consumer
    vectorized along that axis, it makes TVM scalarize the consumer's whole loop (the 3x3 box
    filter of the refiner at 512x288: 7.2 -> 2.5 ms kept as its own padded buffer). Read once
    (the interleaving concats of an upsample), it inlines better than it stays."""
    if _reads(sch, block_rv) <= 1:
        return False
    block = sch.get(block_rv)
    innermost = block.iter_vars[-1].var

    def on_innermost(call):
        if getattr(call.op, "name", "") != "prim.if_then_else":
            return False
        return count_nodes(call.args[0], tvm.ir.expr.Var, lambda v: v.same_as(innermost)) > 0

    return count_nodes(block.body.value, tvm.ir.expr.Call, on_innermost) > 0


def try_inline_all(sch, infos):
    """Inline injective blocks into their consumers where possible; the rest stay."""
    remaining = []
    for info in infos[:-1]:
        if _stays_a_buffer(sch, info.block_rv) or _padding_for_a_stencil(sch, info.block_rv):
            remaining.append(info)
            continue
        try:
            sch.compute_inline(info.block_rv)
        except s_tir.ScheduleError:  # not inlinable (e.g. several consumers): keep it
            remaining.append(info)
    return remaining + infos[-1:]


class ElementwiseWithReductions(ScheduleRule):
    """Element-wise chains that also hold small reductions (e.g. a block's residual adds, RPReLU
    and the next block's 2x2 average pool, fused by Relax): injective blocks are inlined where
    they can be, and every block left runs its outer spatial loops in parallel and its innermost
    spatial loop vectorized (a reduction's: unrolled below its own loops). Blocks whose
    iterators are not spatial-then-reduction stop the rule (the fallback takes them)."""

    def apply(self, func, target, tunable):
        sch = s_tir.Schedule(func)
        infos = root_blocks(sch)
        if infos is None or all(info.is_injective() for info in infos):
            return None
        if not all(_spatial_then_reduction(info.dom_kind()) for info in infos):
            return None
        lanes = vector_lanes(target)
        remaining = []
        for info in infos[:-1]:
            if not info.is_injective() or _stays_a_buffer(sch, info.block_rv):
                remaining.append(info)
                continue
            try:
                sch.compute_inline(info.block_rv)
            except s_tir.ScheduleError:  # several consumers or not inlinable: keep it
                remaining.append(info)
        for info in remaining + infos[-1:]:
            if info.is_injective():
                flat_parallel_vector(sch, info.block_rv, lanes)
            else:
                _reduction_parallel_vector(sch, info, lanes)
        return sch


def _spatial_then_reduction(kinds):
    spatial = len(kinds) - len(kinds.lstrip("S"))
    return spatial >= 1 and set(kinds[spatial:]) <= {"R"}


def _reduction_parallel_vector(sch, info, lanes):
    """[s0 .. sk, r0 .. rm] -> parallel(s0 .. s_k-1), sk split by the vector width with the
    reduction loops between its halves (the inner half unrolled), the initialisation vectorized."""
    block = info.block_rv
    loops = sch.get_loops(block)
    spatial = len(info.dom_kind()) - len(info.dom_kind().lstrip("S"))
    outer, last, reduce = loops[: spatial - 1], loops[spatial - 1], loops[spatial:]
    extent = loop_extent(sch, last)
    tile = divisor_tile(extent, lanes, 2) if extent else 1
    if not extent or extent % tile or tile < 2:
        raise s_tir.ScheduleError("no vector tile")
    xo, xi = sch.split(last, [None, tile])
    sch.reorder(*outer, xo, *reduce, xi)
    if outer:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    init = sch.decompose_reduction(block, reduce[0])
    sch.unroll(xi)  # TVM refuses to vectorize under reduction loops; LLVM's SLP pass packs the unrolled lanes
    sch.vectorize(sch.get_loops(init)[-1])


class ParallelOuter(ScheduleRule):
    """Fallback: inline what can be inlined, run the outer spatial loops of each block in parallel."""

    def apply(self, func, target, tunable):
        sch = s_tir.Schedule(func)
        infos = root_blocks(sch)
        if infos is None:
            return None
        for info in infos:
            loops = sch.get_loops(info.block_rv)
            kinds = info.dom_kind()
            lead = len(kinds) - len(kinds.lstrip("S"))
            if lead == 0 or not loops:
                continue
            outer = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
            if (loop_extent(sch, outer) or 0) > 1:
                sch.parallel(outer)
        return sch


def apply_rules(func, target, rule_list):
    """The first rule that applies, as a scheduled PrimFunc; None if none does."""
    for rule in rule_list:
        try:
            sch = rule.apply(fresh(func), target, False)  # a failed rule must not leave edits behind
        except s_tir.ScheduleError:
            # a schedule primitive refused this func (the rule's precondition held only in part):
            # try the next rule. Any other exception is a bug in the rule and propagates.
            sch = None
        if sch is not None:
            return sch.mod["main"]
    return None
