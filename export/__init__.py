"""PyTorch networks -> ONNX with the binary structure explicit (installed as `bimatting.export`).

    graph         a small ONNX graph builder (names, initializers, opset-aware helpers)
    layers        torch layers -> nodes (BN folding, packed binary convs, Sequential walker)
    shared_graph  RVM's graph interface and the pieces both networks share
    rvm           the full-precision RVM emitter (standard ops only)
    bimatting     the BiMatting emitter (BinarizePack / BinaryConv2d / BinaryConv2dMasked)
    exporter      build_onnx(network, arch, ...) and export(checkpoint, output, ...)
    verify        onnxruntime against PyTorch on real frames

Every width is read from the modules, so a network built with other widths
(build_model("bimatting", widths=..., ...)) exports with no change here.

The ai.bimatting operators themselves (schema, function bodies, numpy execution) are
bimatting.binops; docs/onnx-ops.md describes them and how the exporter uses them.
"""
