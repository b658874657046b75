"""BiMatting variants go torch -> ONNX -> host artifact with nothing under export/ or deploy/
knowing their sizes or structure: every module emits its own nodes (`emit_onnx`, beside its
forward) and the exporter only calls the model's.

One variant halves every width of the packaged network (encoder, ASPP, decoder); another also
has a shallower encoder (one dense triple per stage: 11 binary blocks instead of 17, so other
stride-2 positions, dense skips and taps). Their sign thresholds are calibrated off near ties on
the clip they are run on (tests/bench_models.py), so the three engines must agree to float
precision and the checks are enforced outright.
"""

import numpy as np
import onnx
import onnxruntime as ort
import torch

from bench_models import tie_free_bimatting
from bimatting.deploy.compiler.build import compile_model
from bimatting.deploy.device.runtime import CompiledModel, RecurrentRunner
from bimatting.export import exporter, verify
from bimatting.export.graph import block_outputs
from bimatting.matting.frames import to_nchw
from bimatting.matting.samples import sample_frames
from bimatting.models import build_model
from bimatting.weights.checkpoints import load_model, save_checkpoint

HALF_WIDTHS = dict(
    widths=[8] + [16, 32, 16] + [32, 64, 32] * 2 + [64, 128, 64] * 2 + [128] + [512],
    aspp_channels=64,
    decoder_channels=(40, 20, 16, 8),
)
SIZE = (64, 48)  # (W, H): small, the whole test compiles in well under a minute
FRAMES = 3
STATES = {"r1o": 8, "r2o": 10, "r3o": 20, "r4o": 32}  # decoder_channels[2::-1] / 2, aspp_channels / 2


SHALLOW = dict(
    encoder_triples=(1, 1, 1),  # stride 2 at blocks 2, 5, 8; taps f2 = block 3, f3 = 6, f4 = 11
    widths=[8] + [16, 32, 16] + [32, 64, 32] + [64, 128, 64] + [128] + [512],
    aspp_channels=64,
    decoder_channels=(40, 20, 16, 8),
)


def _variant(config):
    frames = sample_frames(FRAMES, SIZE)
    clip = torch.from_numpy(np.stack([to_nchw(f)[0] for f in frames])[None])
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the host is shared
    try:
        network, margin = tie_free_bimatting(clip, config=config)
    finally:
        torch.set_num_threads(previous)
    assert margin > 2e-5, f"calibration left a near tie ({margin:.1e})"
    return network, frames


def _exports_compiles_and_verifies(network, frames, tmp_path):
    """The ONNX of `network` against PyTorch, then the host artifact against onnxruntime."""
    model = exporter.build_onnx(network, "bimatting")
    outputs = {o.name: o.type.tensor_type.shape.dim[1].dim_value for o in model.graph.output}
    assert {name: outputs[name] for name in STATES} == STATES

    # ONNX against PyTorch (what `bimatting export --verify` runs), states fed back. The network is
    # calibrated tie-free (every pre-sign value >= 2e-5 from 0, float drift ~1e-6), so no sign may
    # differ between the engines: verify's own float tolerance holds without aligning any tie.
    report = verify.compare(model, network, frames, 1.0, threads=1)
    assert report["passed"], report["worst"]
    assert report["aligned_near_ties"] == 0  # calibrated: no tie to align

    # The host artifact against onnxruntime (optimizations off: the graph's own float order).
    path = tmp_path / "variant.onnx"
    onnx.save(model, str(path))
    compile_model(path, "host", tmp_path / "variant.tar", resolution=SIZE)
    runner = RecurrentRunner(CompiledModel(tmp_path / "variant.tar"))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    states = {f"r{k}i": np.zeros((1, 1, 1, 1), np.float32) for k in range(1, 5)}
    for index, frame in enumerate(frames):
        src = to_nchw(frame)
        step = runner.step(src, fetch=["fgr", "pha"])
        fgr, pha, *rs = session.run(None, {"src": src, **states, "downsample_ratio": np.array([1.0], np.float32)})
        states = dict(zip(states, rs))
        for name, got, want in (("fgr", step["fgr"], fgr), ("pha", step["pha"], pha)):
            error = np.abs(got - want)
            # tolerances of the network checks in test_compile.py: mean 1e-4, max 1e-2 per frame
            assert error.mean() <= 1e-4 and error.max() <= 1e-2, (index, name, float(error.mean()), float(error.max()))
    return model


def test_bimatting_with_other_widths_exports_compiles_and_verifies(tmp_path):
    network, frames = _variant(HALF_WIDTHS)
    assert network.backbone.feature[-1].out_channels == 512 and network.aspp.aspp1[2].out_channels == 64
    _exports_compiles_and_verifies(network, frames, tmp_path)


def test_bimatting_with_a_shallower_encoder_exports_compiles_and_verifies(tmp_path):
    network, frames = _variant(SHALLOW)
    assert len(network.backbone.feature) == 12 and network.backbone.taps == {0: "f1", 3: "f2", 6: "f3", 11: "f4"}
    model = _exports_compiles_and_verifies(network, frames, tmp_path)
    blocks = [name for name in block_outputs(model) if name.startswith("backbone.feature.")]
    assert blocks == [f"backbone.feature.{i}" for i in range(12)]  # one emit per block, no more
    dense = [n for n in model.graph.node if n.op_type == "AveragePool" and n.name.startswith("backbone.")]
    # stride-2 shortcuts of blocks 2, 5, 8 plus the three dense skips (each triple halves the size),
    # each a pair of 2-tap AveragePools (fixed_order.average_pool2)
    assert len(dense) == 12, [n.name for n in dense]


def test_a_shallower_variant_checkpoint_rebuilds_its_structure(tmp_path):
    network = build_model("bimatting", **SHALLOW).eval()
    assert network.config["encoder_triples"] == [1, 1, 1]
    save_checkpoint(tmp_path / "shallow.pth", network, "bimatting")
    loaded = load_model(tmp_path / "shallow.pth")
    assert loaded.config == network.config and len(loaded.backbone.feature) == 12


def test_a_variant_checkpoint_rebuilds_its_widths(tmp_path):
    network = build_model("bimatting", **HALF_WIDTHS).eval()
    assert network.config == {"widths": HALF_WIDTHS["widths"], "aspp_channels": 64, "decoder_channels": [40, 20, 16, 8]}
    assert build_model("bimatting").config == {}  # the official widths: checkpoints as before
    save_checkpoint(tmp_path / "half.pth", network, "bimatting")
    loaded = load_model(tmp_path / "half.pth")
    assert loaded.config == network.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), network.state_dict().values()))
