"""Schedule rule for convolutions and pools in NCHW (Relax's conv2d, depthwise conv, pooling).

One reduction block with 4 spatial loops [n, o, y, x] plus injective producers (padding, and what
fuse_producers.py merged in) and consumers (bias, activations). Register tile of `ob` output
channels x `xb` columns accumulated locally, vectorized along x (contiguous in NCHW), reduction
loops outside the tile, consumers computed per tile, groups of output rows in parallel; the input
rows a group reads are built just before it (padding, a concat's rows), with even and odd columns
apart for a stride-2 conv. The integer pair conv (kernels/pair_dot.py) gets the same schedule, its
16-column vectors tensorized into `vpdpwssd` (schedules/pair_dot.py) where the target has it.
"""

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.sym.pattern import detect_linear_equation

from bimatting.deploy.compiler.schedules import pair_dot
from bimatting.deploy.compiler.schedules.fp import (
    count_nodes,
    divisor_tile,
    loop_extent,
    root_blocks,
    static_int,
    vector_lanes,
)

PAIR_CONV_BLOCK = "pair_conv"  # kernels/pair_dot.py's reduction: its column tile becomes vpdpwssd


class ConvNCHW(ScheduleRule):
    """conv2d / depthwise conv / pooling in NCHW with injective producers and consumers."""

    def apply(self, func, target, tunable):
        sch = s_tir.Schedule(func)
        infos = root_blocks(sch)
        if infos is None:
            return None
        reductions = [i for i, info in enumerate(infos) if not info.is_injective()]
        if len(reductions) != 1 or infos[reductions[0]].dom_kind() not in ("SSSSRRR", "SSSSRR"):
            return None
        index = reductions[0]
        conv = infos[index].block_rv
        epilogue = infos[index + 1 :]
        try:
            for info in epilogue[:-1]:
                sch.compute_inline(info.block_rv)
        except s_tir.ScheduleError:  # an epilogue block that cannot be inlined: not this rule's case
            return None
        lanes = vector_lanes(target)
        loops = sch.get_loops(conv)
        n, o, y, x = loops[:4]
        reduce = loops[4:]
        width, channels = loop_extent(sch, x), loop_extent(sch, o)
        producers = []
        for info in infos[:index]:
            if isinstance(sch.get(info.block_rv).body.value, tvm.ir.expr.TensorLoad):
                sch.compute_inline(info.block_rv)  # a copy (a 1x1 conv's zero padding) is read in place
                continue
            if not _feeds(sch, info.block_rv, conv) and not _selects(sch, info.block_rv):
                # element-wise work on what the conv's rows read (fuse_producers.py): done as they
                # are built. A block that selects (a concat) keeps rows of its own: inlined into the
                # padding's select, LLVM scalarized the nest (decode0's 3x3: 12.7 -> 18 ms).
                try:
                    sch.compute_inline(info.block_rv)
                    continue
                except s_tir.ScheduleError:
                    pass
            producers.append(info)
        # ob x (xb / lanes) accumulator registers, half the register file: 16 of 32 (AVX-512, NEON),
        # 8 of AVX2's 16. Output channel groups inside the row, so a row's inputs stay in cache
        # across them (decode0's 32->16 convs at 512x288 on AVX2, one thread: 3x3 41 -> 24 ms,
        # onnxruntime 21 ms; 1x1 10 -> 4.2 ms).
        xb = divisor_tile(width, 2 * lanes, max(4, lanes // 2))
        ob = divisor_tile(channels, 4 if lanes == 8 else 8, 1) if len(reduce) == 3 else 1
        xo, xi = sch.split(x, [None, xb])
        oo, oi = sch.split(o, [None, ob])
        rows = _row_group(loop_extent(sch, y), loop_extent(sch, reduce[1]) if len(reduce) == 3 and producers else None)
        yo, yi = sch.split(y, [None, rows])
        sch.reorder(n, yo, yi, oo, xo, *reduce, oi, xi)
        if epilogue:
            sch.set_scope(conv, 0, "local")
            tail = epilogue[-1].block_rv
        else:
            tail = sch.cache_write(conv, 0, "local")
        sch.reverse_compute_at(tail, xo)
        row = sch.fuse(n, yo)
        sch.parallel(row)
        sch.unroll(oi)
        if xb > lanes and xb % lanes == 0:
            # One machine vector per statement: LLVM keeps a wider vector's accumulators in memory
            # (the same conv at 16 lanes of AVX2's 8 took 2.5x as long).
            xv, xi = sch.split(xi, [None, lanes])
            sch.unroll(xv)
        pairs = sch.get(conv).name_hint.startswith(PAIR_CONV_BLOCK) and loop_extent(sch, xi) == pair_dot.LANES
        if not pairs:
            sch.vectorize(xi)
        for r in reduce[1:]:
            if (loop_extent(sch, r) or 99) <= 7:
                sch.unroll(r)
        init = sch.decompose_reduction(conv, reduce[0])
        sch.vectorize(sch.get_loops(init)[-1])
        tail_loops = sch.get_loops(tail)
        sch.vectorize(tail_loops[-1])
        # Padding: the rows a group of output rows reads, written just before it (cache-warm), not a
        # padded copy of the whole input (decode0's 32->16 3x3 at 512x288: 22.0 -> 20.6 ms).
        for info in producers:
            if _feeds(sch, info.block_rv, conv) and _column_stride(sch, conv, info.block_rv) == 2:
                # even and odd columns apart: the stride-2 taps become contiguous loads
                # an odd padded width (a pool's 257 columns) leaves one unused slot, filled with 0
                sch.transform_layout(
                    info.block_rv, ("write", 0), lambda n, c, y, x: (n, c, y, x % 2, x // 2), pad_value=0.0
                )
        for info in reversed(producers):  # each one's readers already inside the row loop
            try:
                sch.compute_at(info.block_rv, row)
                sch.vectorize(_vector_tile(sch, sch.get_loops(info.block_rv)[-1], lanes))
            except s_tir.ScheduleError:  # already inlined or not a plain loop nest
                pass
        if pairs and not pair_dot.tensorize_columns(sch, xi, target):  # last: the conv block is replaced
            sch.vectorize(xi)
        return sch


# Output rows per parallel iteration of a conv whose rows overlap (kernel height > 1): their
# input rows are built once for the group, not once per output row that reads them (3 of a 3x3
# conv's input rows per output row -> 6 per 4). decode0's masked 32->16 3x3 at 512x288, one
# thread: 12.6 -> 10.0 ms (19.2 -> 16.8 ms with the mask all on; 8 rows: no better).
ROW_GROUP = 4
MIN_ROW_GROUPS = 16  # parallel iterations left to share among a board's 4 threads


def _row_group(height, kernel_height):
    """Output rows per parallel iteration: the largest divisor of height <= ROW_GROUP leaving
    MIN_ROW_GROUPS iterations; 1 when the kernel reads one row per output row."""
    if height is None or not kernel_height or kernel_height <= 1:
        return 1
    return next(
        (rows for rows in range(ROW_GROUP, 1, -1) if height % rows == 0 and height // rows >= MIN_ROW_GROUPS), 1
    )


def _column_stride(sch, reader_rv, writer_rv):
    """The step of the last index of reader's loads of writer's buffer along reader's last
    spatial iterator (2 for a stride-2 conv reading its padded input), or None."""
    buffer = sch.get(writer_rv).body.buffer
    reader = sch.get(reader_rv)
    column = [iv.var for iv in reader.iter_vars if iv.iter_type == tirx.IterVar.DataPar][-1]
    coefficients = set()

    def note(load):
        if load.source.same_as(buffer):
            linear = detect_linear_equation(load.indices[-1], [column])
            coefficients.add(static_int(linear[0]) if len(linear) == 2 else None)

    tvm_ffi.structural_walk(reader.body, [(tvm.ir.expr.TensorLoad, note)])
    return coefficients.pop() if len(coefficients) == 1 else None


def _selects(sch, block_rv):
    value = sch.get(block_rv).body.value
    return (
        count_nodes(value, (tirx.Select,))
        + count_nodes(value, tvm.ir.expr.Call, lambda c: getattr(c.op, "name", "") == "prim.if_then_else")
        > 0
    )


def _feeds(sch, block_rv, consumer_rv):
    consumer = sch.get(consumer_rv)
    return any(sch.get(c).same_as(consumer) for c in sch.get_consumers(block_rv))


def _vector_tile(sch, loop, lanes):
    """The inner `lanes` of `loop` (the loop itself when shorter), for vectorize."""
    extent = loop_extent(sch, loop)
    if extent is None or extent <= lanes:
        return loop
    return sch.split(loop, [None, lanes])[1]
