"""Compute definitions (TE) of the compiler's own kernels; schedules live in ../schedules."""

from tvm import tirx


def int64_shape(dims):
    """dims as int64 IntImms: the index type of a legalized Relax op's buffers, which FuseTIR needs
    on both sides to map a producer's output and a consumer's input onto one tensor."""
    return tuple(tirx.IntImm("int64", int(d)) for d in dims)
