"""The binary-op contract, written once and torch-free: every other part of the toolchain imports it.

    schema     the `ai.bimatting` domain, its op schemas (attributes, defaults) as data, node helpers
    functions  the ONNX FunctionProto body of each op (what onnxruntime runs)
    layout     sign(0) = +1, the bit encoding and the channel packing (ceil(C/8) uint8 words)
    geometry   one binary convolution's geometry: from a node, output size, taps, border taps
    reference  numpy execution of every op: the exact integer conv and the border correction

The PyTorch model (bimatting.models), the exporter (bimatting.export), the checks on untrusted files
(bimatting.weights.onnx_check) and the compiler (bimatting.deploy) all follow these definitions; docs/onnx-ops.md
is their prose form. All of it is torch-free (numpy and onnx); `layout` needs numpy alone.
"""
