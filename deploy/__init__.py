"""ONNX -> TVM -> device, never importing torch (installed as bimatting.deploy).

    compiler/   ONNX file -> TVM artifact for one target (rewrite, import, kernels, schedules, build)
    tuning/     MetaSchedule tuning of the compiler's kernels, measured on a device
    device/     run, bench and verify artifacts, locally or on a board over RPC (+ the C++ server)
    artifact    the artifact file: written by the compiler, read by the device side
    target      target descriptors (targets/*.toml) resolved for both sides

The binary-op contract both sides follow is bimatting.binops.
"""
