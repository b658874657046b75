"""PyTorch networks -> ONNX with the binary structure explicit (installed as `bimatting.export`).

    ops        the ai.bimatting operators: schema, FunctionProto bodies, numpy execution
    graph      a small ONNX graph builder (names, initializers, opset-aware helpers)
    layers     torch layers -> nodes (BN folding, packed binary convs, Sequential walker)
    matting    RVM's graph interface and the pieces both networks share
    rvm        the full-precision RVM emitter (standard ops only)
    bimatting  the BiMatting emitter (BinarizePack / BinaryConv2d / BinaryConv2dMasked)
    exporter   build_onnx(network, arch, ...) and export(checkpoint, output, ...)
    verify     onnxruntime against PyTorch on real frames

See docs/onnx-ops.md for the operators and how the exporter uses them.
"""
