"""Schedule rule for a bit-packing kernel with its float producer fused in (fuse_producers.py).

The decoder's last block packs concat(upsample2(features), src) (35 channels at full resolution):
written out as floats and read back by the pack, that tensor was the largest moved per frame
(20.6 MB each way at 512x288). Fused, the pack's bit loop reads the producer's expression in
place of the tensor: the producer blocks are inlined into the packed words where
fp.py's Injective rule would inline them (a block read several times stays a buffer, e.g. the
upsample's width pass, scheduled like the Injective rule's), and the words are scheduled as the
pack alone is (bitserial.schedule_pack). The same operations on the same elements: the same bits.
"""

from tvm import s_tir
from tvm.s_tir.dlight.base import ScheduleRule

from bimatting.deploy.compiler.schedules import bitserial
from bimatting.deploy.compiler.schedules.fp import flat_parallel_vector, root_blocks, try_inline_all, vector_lanes

PACK_BLOCK = "bpack"  # kernels/bitserial.pack_activations: "bpack_image" then "bpack"


class PackWithProducers(ScheduleRule):
    def __init__(self, pack_lanes):
        self.pack_lanes = pack_lanes

    def apply(self, func, target, tunable):
        sch = s_tir.Schedule(func)
        infos = root_blocks(sch)
        names = [sch.get(info.block_rv).name_hint for info in infos or []]
        if f"{PACK_BLOCK}_image" not in names or names[-1] != PACK_BLOCK:
            return None
        image = names.index(f"{PACK_BLOCK}_image")
        producers = infos[:image]
        if not producers or not all(info.is_injective() for info in producers):
            return None
        remaining = try_inline_all(sch, producers + [infos[image]])[:-1]
        for info in remaining:
            flat_parallel_vector(sch, info.block_rv, vector_lanes(target))
        bitserial.schedule_pack(sch, PACK_BLOCK, self.pack_lanes)
        return sch
