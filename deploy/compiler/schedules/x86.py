"""x86-64 schedules of the bitserial kernels: uint64 words, vectors over output channels.

Measured on a 2-core AMD EPYC (znver5), 64->64 ch 3x3 at 64x64 (bench/ has the script): eight
uint64 lanes (one 512-bit `vpopcntq` with AVX-512 VPOPCNTDQ, two 256-bit `vpshufb` popcounts on
AVX2) and 4-column register tiles were best; uint64 beat uint32 on x86 (TVM_0.27 notes). Since
the output transform is vectorized along the tile's columns, 8 columns (one AVX2 float vector) win
on a 2-core znver3 (AVX2): 1x1 35->16 at 288x512 2.4 -> 1.8 ms, 3x3 7.9 -> 7.4 ms.
"""
from dataclasses import dataclass

from bimatting.deploy.compiler.schedules import bitserial


@dataclass(frozen=True)
class X86Bitserial:
    word_dtype: str = "uint64"
    out_granule: int = 8  # output channels are padded to a multiple of this
    vec_candidates: tuple = (8, 16)
    owt_candidates: tuple = (2, 4, 8)
    default_vec: int = 8
    default_owt: int = 8
    pack_lanes: int = 16

    def schedule_bconv(self, sch, tunable=False):
        return bitserial.schedule_bconv(sch, self, tunable)


KERNEL_CONFIG = X86Bitserial()
