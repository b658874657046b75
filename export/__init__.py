"""PyTorch networks -> ONNX with the binary structure explicit (installed as `bimatting.export`).

    graph      a small ONNX graph builder (names, initializers, opset-aware helpers)
    layers     `Builder`: graph + torch layers -> nodes (BN folding, packed binary convs,
               Sequential walker, resizes); what every module's `emit_onnx(b, ...)` receives
    interface  RVM's graph interface (src, r1i..r4i, downsample_ratio -> fgr, pha, r1o..r4o)
    exporter   build_onnx(network, arch, ...) and export(checkpoint, output, ...)
    verify     onnxruntime against PyTorch on real frames

Nothing here knows a network: each module type in bimatting/models emits its own nodes beside
its forward (`emit_onnx`), and a model composes its children's emits. So a network built with
other widths or another block arrangement (build_model("bimatting", ...)) exports with no change
here.

The ai.bimatting operators themselves (schema, function bodies, numpy execution) are
bimatting.binops; docs/onnx-ops.md describes them and how the exporter uses them.
"""
