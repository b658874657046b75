"""AArch64 (NEON) schedules of the bitserial kernels: uint32 lanes, vectors over output channels.

uint32 lanes make LLVM emit the ideal NEON sequence per 128-bit vector of weight words:
`eor v.16b` (XOR), `cnt v.16b` (byte popcount), `uaddlp v.8h` + `uadalp v.4s` (widen and
accumulate), or `udot v.4s` against ones where the core has dotprod (Cortex-A76/A78). uint64
words widen through an extra `uaddlp v.2d` (TVM_0.27 notes, section 4). 16 channels x 4 columns
keep 16 accumulator registers of the 32 NEON registers busy.
"""

from dataclasses import dataclass

from bimatting.deploy.compiler.schedules import bitserial


@dataclass(frozen=True)
class AArch64Bitserial:
    word_dtype: str = "uint32"
    out_granule: int = 4  # one 128-bit vector of uint32 accumulators
    vec_candidates: tuple = (16, 8, 4)
    owt_candidates: tuple = (4, 2, 8)
    default_vec: int = 16
    default_owt: int = 4
    pack_lanes: int = 8

    def schedule_bconv(self, sch, tunable=False):
        return bitserial.schedule_bconv(sch, self, tunable)


KERNEL_CONFIG = AArch64Bitserial()
