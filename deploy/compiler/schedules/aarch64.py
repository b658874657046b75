"""AArch64 (NEON) schedules of the bitserial kernels: vectors over output channels.

Per 128-bit vector of weight words the work is `eor v.16b` (XOR) and `cnt v.16b` (byte
popcounts); what sums the bytes into the accumulators decides the loop's speed:
- cores without dotprod (Cortex-A72, A57): uint16 words and int16 accumulators, so LLVM folds
  the popcount's one pairwise widening into the accumulation, `uadalp v.8h`: 3 instructions per
  vector. uint32 words took `uaddlp v.8h` + `uadalp v.4s` (4 instructions, both on the A72's one
  F1 pipe for uadalp); llvm-mca (Cortex-A72, 3x3 64->64): 15.0x -> 19.8x the float conv's loop.
  An int16 sum holds up to 2^15 - 1 bits of a window (3x3 kernels up to 3,640 input channels);
  wider layers accumulate in int32 (kernels/bitserial.popcount_accumulator).
- cores with dotprod (Cortex-A76/A78): uint32 words and `udot v.4s` against ones sums the four
  byte counts of a lane in one instruction, also 3 per vector.
16 output channels (dotprod) or 32 (uint16 lanes) x 4 columns keep 16 accumulator registers of
the 32 NEON registers busy.
"""

from dataclasses import dataclass

from bimatting.deploy.compiler.schedules import bitserial


@dataclass(frozen=True)
class AArch64Bitserial:
    word_dtype: str = "uint16"
    out_granule: int = 8  # one 128-bit vector of accumulators
    vec_candidates: tuple = (32, 16, 8)
    owt_candidates: tuple = (4, 2, 8)
    default_vec: int = 32
    default_owt: int = 4
    pack_lanes: int = 8

    def schedule_bconv(self, sch, tunable=False):
        return bitserial.schedule_bconv(sch, self, tunable)


KERNEL_CONFIG = AArch64Bitserial()
DOTPROD_KERNEL_CONFIG = AArch64Bitserial(word_dtype="uint32", out_granule=4, vec_candidates=(16, 8, 4), default_vec=16)
