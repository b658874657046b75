"""x86-64 schedules of the bitserial kernels: uint64 words, vectors over output columns.

Eight uint64 lanes (one 512-bit `vpopcntq` with AVX-512 VPOPCNTDQ, two 256-bit `vpshufb`
popcounts on AVX2) of output columns, 16 output channels unrolled: per weight word one
`vpxorq` with an embedded broadcast, one `vpopcntq`, one `vpaddq` into a 64-bit accumulator (a
32-bit one costs a `vpmovqd` per word). Measured on a 2-core AMD EPYC (znver4), one thread,
3x3 conv, conv alone: 64->64 at 64x64 290 us (vectors over 8 output channels, 8-column tiles,
int32 accumulators, table lookups of the border correction) -> 166 us; 128->128 at 36x64
382 -> 310 us.
"""
from dataclasses import dataclass

from bimatting.deploy.compiler.schedules import bitserial


@dataclass(frozen=True)
class X86Bitserial:
    word_dtype: str = "uint64"
    out_granule: int = 8  # output channels are padded to a multiple of this
    column_candidates: tuple = (8, 16)
    default_columns: int = 8  # one 512-bit vector of uint64 words
    otile_candidates: tuple = (16, 8)
    default_otile: int = 16
    pack_lanes: int = 16

    def schedule_bconv(self, sch, tunable=False):
        return bitserial.schedule_bconv_columns(sch, self, tunable)


KERNEL_CONFIG = X86Bitserial()
