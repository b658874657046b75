"""x86-64 schedules of the bitserial kernels: uint64 words, vectors over output columns.

Eight uint64 lanes (one 512-bit `vpopcntq` with AVX-512 VPOPCNTDQ, two 256-bit `vpshufb`
popcounts on AVX2) per vector of output columns, two vectors (16 columns: one 512-bit vector
of float32 outputs to store) x 8 output channels unrolled: per weight word one `vpxorq` with an
embedded broadcast, one `vpopcntq`, one `vpaddq` into a 64-bit accumulator (a 32-bit one costs
a `vpmovqd` per word). Measured on a 2-core AMD EPYC (znver4), one thread, conv alone:
3x3 64->64 at 64x64 290 us (vectors over 8 output channels, 8-column tiles, int32 accumulators,
table lookups of the border correction) -> 166 us; 128->128 at 36x64 382 -> 310 us.
16 columns x 8 channels against 8 x 16: equal on 3x3 convs, twice as fast on the 1x1 convs
(16->16 at 288x512: 0.93 -> 0.47 ms; 32->32 at 72x128: 0.27 -> 0.14 ms), whose time is the
output transform's.
"""

from dataclasses import dataclass

from bimatting.deploy.compiler.schedules import bitserial


@dataclass(frozen=True)
class X86Bitserial:
    word_dtype: str = "uint64"
    out_granule: int = 8  # output channels are padded to a multiple of this
    column_candidates: tuple = (16, 8)
    default_columns: int = 16  # two 512-bit vectors of uint64 words: one of float32 outputs
    otile_candidates: tuple = (8, 16)
    default_otile: int = 8
    pack_lanes: int = 16
    pair_dot: bool = False  # int16 pair dot products (AVX-512 VNNI) for exact float convs: integer_pairs.py

    def schedule_bconv(self, sch, tunable=False):
        return bitserial.schedule_bconv_columns(sch, self, tunable)


KERNEL_CONFIG = X86Bitserial()
