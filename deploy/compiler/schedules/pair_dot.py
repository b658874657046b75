"""16 output columns of kernels/pair_dot.py's conv as one AVX-512 VNNI `vpdpwssd`.

    acc[x] += dot2(words[x], w)   for x in 0..15      (w one weight word, the same for all x)

is `vpdpwssd acc, words[0:16], broadcast(w)`: per 32-bit lane, the two signed int16 products of
the lane's halves summed into the int32 accumulator (Intel SDM, VPDPWSSD; wraps, never
saturates: integer_pairs.py bounds every sum below 2^24). The description below is the same
expression as the kernel's, so `tensorize` matches it structurally; the accumulator is the
conv's register tile (scope "local", schedules/conv_nchw.py).
"""

from tvm import s_tir
from tvm.script import tirx as T
from tvm.target import codegen

INTRIN = "bimatting_pair_dot_16_vnni"
LANES = 16
FEATURE = "avx512vnni"


@T.prim_func(s_tir=True)
def _description(
    A: T.Buffer((16,), "int32", offset_factor=1),
    B: T.Buffer((1,), "int32", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:16], B[0:1])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            with T.sblock("update"):
                vi = T.axis.remap("S", [i])
                C[vi] = C[vi] + (((A[vi] << 16) >> 16) * ((B[0] << 16) >> 16) + (A[vi] >> 16) * (B[0] >> 16))


@T.prim_func(s_tir=True)
def _vnni(
    A: T.Buffer((16,), "int32", offset_factor=1),
    B: T.Buffer((1,), "int32", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:16], B[0:1])
        T.writes(C[0:16])
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            "int32x16",
            "llvm.x86.avx512.vpdpwssd.512",
            C.vload([0], "int32x16"),
            T.reinterpret(A.vload([0], "int32x16"), dtype="int16x32"),
            T.reinterpret(T.broadcast(B[0], 16), dtype="int16x32"),
        )


s_tir.TensorIntrin.register(INTRIN, _description, _vnni, override=True)


def available(target):
    """Whether `target` (a tvm.target.Target) has AVX-512 VNNI."""
    return str(target.kind.name) == "llvm" and bool(codegen.target_has_features(FEATURE, target))


def tensorize_columns(sch, column_loop, target):
    """Tensorize a 16-column loop of the pair conv into `vpdpwssd` where the target has VNNI;
    False (the loop untouched, for plain vectorization) otherwise or where it does not match."""
    if not available(target):
        return False
    try:
        sch.tensorize(column_loop, INTRIN)
    except s_tir.ScheduleError:
        return False
    return True
