"""Tuning the compiler's kernels on a device (installed as bimatting.deploy.tuning).

    session    `bimatting tune`: extract the kernels, measure candidates on the board, keep the best
    measure    MetaSchedule runners over RPC (interruptible)

It uses both sides: the compiler to build candidates, the device side to measure them; the
records it writes are read back by the compiler (compiler/tuning_database.py).
"""
