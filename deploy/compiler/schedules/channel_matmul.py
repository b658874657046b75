"""A 1x1 projection written as a matmul over the channel axis, scheduled pixels-outer.

The exact projection heads (fixed_point.wide_conv1x1) are `out[n, o, p] = sum_k W[o, k] * x[n, k, p]`
in float64, then `+ bias` and a cast to float32: O = 4 outputs, K = 16 channels, P = H * W pixels.
The generic reduction schedule (fp.py) ran the O loop outermost, so each output channel read the
whole feature map again (4 x 18.9 MB of float64 at 512x288, 4.3 ms) and the epilogue read the
float64 result back from memory. Here a tile of pixels is the parallel unit: every output channel
of the tile is summed from the same K x tile inputs while they are in cache, and its epilogue runs
right after. Each output still sums over k in order 0..K-1, so the float64 values are the same.
"""

import tvm
from tvm import s_tir

from bimatting.deploy.compiler.schedules.fp import divisor_tile, loop_extent, root_blocks, vector_lanes

MAX_OUTPUTS = 8  # at least one vector of accumulators per output in half of AVX2's registers


class ChannelMatmul(s_tir.dlight.base.ScheduleRule):
    """[N, O, P] <- sum over K (block iterators S S S R), O <= MAX_OUTPUTS, injective producers
    and epilogue."""

    def apply(self, func, target, tunable):
        sch = s_tir.Schedule(func)
        infos = root_blocks(sch)
        reductions = [i for i, info in enumerate(infos or []) if not info.is_injective()]
        if len(reductions) != 1 or infos[reductions[0]].dom_kind() != "SSSR":
            return None
        producers, block, epilogue = infos[: reductions[0]], infos[reductions[0]].block_rv, infos[reductions[0] + 1 :]
        try:
            # what fuse_producers.py merged in (a reshape and a cast to float64) is read in place:
            # K x tile loads per tile, as the inputs it replaces
            for info in reversed(producers):
                sch.compute_inline(info.block_rv)
            for info in epilogue[:-1]:
                sch.compute_inline(info.block_rv)
        except s_tir.ScheduleError:
            return None
        n, o, p, k = sch.get_loops(block)
        outputs, pixels = loop_extent(sch, o), loop_extent(sch, p)
        if outputs is None or pixels is None or outputs > MAX_OUTPUTS:
            return None
        bits = tvm.DataType(str(sch.get(block).body.buffer.dtype)).bits
        lanes = vector_lanes(target, bits)
        # accumulators (outputs x tile / lanes vectors) in half the register file: 16 of AVX-512's
        # 32, 8 of AVX2's 16
        accumulators = 16 if lanes * bits >= 512 else 8
        tile = divisor_tile(pixels, max(1, min(4, accumulators // outputs)) * lanes, lanes)
        if pixels % tile or tile % lanes:
            return None
        po, pi = sch.split(p, [None, tile])
        # k outside o: each input vector is loaded (and widened) once for every output; each
        # output still sums k in order (4 x 16 -> 16 x 16 at 512x288: 1.23 -> 0.58 ms with the
        # tile of 4 vectors)
        sch.reorder(n, po, k, o, pi)
        if epilogue:
            sch.set_scope(block, 0, "local")
            tail = epilogue[-1].block_rv
        else:
            tail = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(tail, po)
        sch.parallel(sch.fuse(n, po))
        sch.unroll(o)
        pv, pl = sch.split(pi, [None, lanes])
        sch.unroll(pv)
        sch.vectorize(pl)
        init = sch.decompose_reduction(block, k)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.vectorize(sch.get_loops(tail)[-1])
        return sch
