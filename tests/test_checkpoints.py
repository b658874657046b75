"""load_model / save_checkpoint: official RVM .pth and ONNX weights, project checkpoints,
BiMatting official state_dicts, and every kind of bad or hostile input."""

import importlib.resources
import os
import pickle

import cv2
import numpy as np
import onnx
import pytest
import torch

import bimatting
from bimatting.errors import InputError
from bimatting.models import build_model
from bimatting.weights.checkpoints import FORMAT, load_checkpoint, save_checkpoint
from bimatting.weights.rvm_onnx import conv_targets, official_onnx_path

OUTPUTS = ("fgr", "pha", "r1", "r2", "r3", "r4")


@pytest.fixture(scope="module")
def official():
    return bimatting.load_model("rvm")


def clip(seed=0, height=96, width=160):
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(2, 3, height // 8, width // 8, generator=generator)
    return torch.nn.functional.interpolate(coarse, (height, width), mode="bilinear", align_corners=False)


def run_two_steps(model, ratio):
    """Two recurrent single-frame steps; returns all 12 outputs."""
    frames = clip()
    with torch.inference_mode():
        first = model(frames[:1], downsample_ratio=ratio)
        second = model(frames[1:], *first[2:], downsample_ratio=ratio)
    return list(first) + list(second)


def official_style_state_dict(model, seed=0):
    """Un-fold the ONNX-loaded network into an equivalent state_dict with non-trivial BN
    statistics (what a trained .pth looks like): for k = g / sqrt(v + eps) per channel,
    W = W' / k and beta = b' + m * k give BN(conv_W(x)) = conv_W'(x) + b'. BN counters dropped."""
    generator = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    names = {module: name for name, module in model.named_modules()}
    for conv, bn in {(c, b) for _, c, b in conv_targets(model) if b is not None}:
        channels = bn.num_features
        gamma = 0.5 + torch.rand(channels, generator=generator)
        var = 0.5 + 1.5 * torch.rand(channels, generator=generator)
        mean = torch.rand(channels, generator=generator) - 0.5
        k = gamma / torch.sqrt(var + bn.eps)
        conv_name, bn_name = names[conv], names[bn]
        state[f"{conv_name}.weight"] = state[f"{conv_name}.weight"] / k.view(-1, 1, 1, 1)
        state[f"{bn_name}.bias"] = state[f"{bn_name}.bias"] + mean * k
        state[f"{bn_name}.weight"], state[f"{bn_name}.running_var"], state[f"{bn_name}.running_mean"] = gamma, var, mean
    return state


def test_official_rvm_pth_loads_and_equals_onnx_weights(official, tmp_path):
    state = official_style_state_dict(official)
    assert not any(k.endswith("num_batches_tracked") for k in state)  # tolerated when absent
    path = tmp_path / "rvm_mobilenetv3.pth"
    torch.save(state, path)
    loaded = bimatting.load_model(path)
    assert type(loaded).__name__ == "RVM" and not loaded.training
    assert loaded.refine_at_unit_ratio is False  # PyTorch RVM behaviour
    # Same function, other parametrisation: float32 rounding of W'/k and b' + m*k through ~60
    # layers and two recurrent steps stays far below 1e-4 (a wrong BN gives >1e-2). The reference
    # skips the refiner at s=1 like the .pth network does.
    reference = bimatting.load_model("rvm")
    reference.refine_at_unit_ratio = False
    for ratio in (0.5, 1.0):
        for name, a, b in zip(OUTPUTS * 2, run_two_steps(loaded, ratio), run_two_steps(reference, ratio)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=f"{name} at s={ratio}")


def test_save_checkpoint_round_trip(official, tmp_path):
    path = tmp_path / "run" / "epoch-3.pth"
    path.parent.mkdir()
    tiny = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(tiny.parameters())
    tiny(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    save_checkpoint(path, official, "rvm", extra={"epoch": 3, "optimizer": optimizer.state_dict()})
    assert [p.name for p in path.parent.iterdir()] == ["epoch-3.pth"]  # no temporary left behind

    checkpoint = load_checkpoint(path)
    assert checkpoint["format"] == FORMAT and checkpoint["format_version"] == 1
    assert checkpoint["arch"] == "rvm" and checkpoint["config"] == {"refine_at_unit_ratio": True}
    assert checkpoint["bimatting_version"] == bimatting.__version__
    assert checkpoint["extra"]["epoch"] == 3
    restored = torch.optim.Adam(tiny.parameters())
    restored.load_state_dict(checkpoint["extra"]["optimizer"])
    torch.testing.assert_close(
        restored.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )

    loaded = bimatting.load_model(str(path), arch="rvm")
    assert not loaded.training and loaded.refine_at_unit_ratio is True
    for key, value in official.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    for a, b in zip(run_two_steps(loaded, 1.0), run_two_steps(official, 1.0)):
        assert torch.equal(a, b)


def test_save_checkpoint_refuses_objects_that_would_need_pickle(official, tmp_path):
    path = tmp_path / "bad.pth"
    with pytest.raises(InputError, match=r"extra\['schedule'\] is a function"):
        save_checkpoint(path, official, "rvm", extra={"schedule": lambda epoch: 0.1})
    with pytest.raises(InputError, match="cannot save a RVM as arch 'bimatting'"):
        save_checkpoint(path, official, "bimatting")
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_onnx_path_and_keyword_give_the_same_network(official):
    with official_onnx_path() as path:
        loaded = bimatting.load_model(path)
    for key, value in official.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def add_dead_thresholds(model):
    """Official BiMatting state_dict: every BiConv2d also has an unused channel_threshold."""
    state = dict(model.state_dict())
    for name, conv in model.binary_convs():
        state[f"{name}.channel_threshold"] = torch.zeros(1, conv.in_channels, 1, 1)
    return state


def test_official_bimatting_state_dict_loads(tmp_path):
    torch.manual_seed(0)
    reference = build_model("bimatting").eval()
    state = add_dead_thresholds(reference)
    assert sum(k.endswith("channel_threshold") for k in state) == 73  # as in the official model
    path = tmp_path / "epoch-27.pth"
    torch.save(state, path)
    loaded = bimatting.load_model(path)
    assert type(loaded).__name__ == "BiMatting" and not loaded.training
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(InputError, match="holds bimatting weights, but arch='rvm'"):
        bimatting.load_model(path, arch="rvm")


def test_unsafe_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch '{marker}'",)

    zipped = tmp_path / "evil.pth"
    torch.save({"backbone.features.0.0.weight": Payload()}, zipped)
    raw = tmp_path / "evil_raw.pth"
    raw.write_bytes(pickle.dumps({"weights": Payload()}, protocol=2))
    for path in (zipped, raw):
        with pytest.raises(InputError, match="refused to load .*could run arbitrary code") as error:
            bimatting.load_model(path)
        assert "posix.system" in str(error.value) or "os.system" in str(error.value)
        with pytest.raises(InputError, match="refused"):
            load_checkpoint(path)
    assert not marker.exists()
    pickle.loads(raw.read_bytes())  # the payload is real: plain unpickling does run it
    assert marker.exists()


def write_bad_inputs(tmp_path, official):
    """name -> (path, arch, expected message fragment)."""
    cases = {}

    def case(name, data, arch=None, fragment=""):
        path = tmp_path / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        elif data is not None:
            torch.save(data, path)
        cases[name] = (path, arch, fragment)

    state = {k: v for k, v in official.state_dict().items()}
    case("missing.pth", None, fragment="does not exist")
    case("text.pth", b"epoch 3, loss 0.12\n" * 20, fragment="not a torch checkpoint")
    ok, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    case("image.pth", png.tobytes(), fragment="not a torch checkpoint")
    case("empty.pth", b"", fragment="is empty")
    torch.save(state, tmp_path / "whole.pth")
    whole = (tmp_path / "whole.pth").read_bytes()
    case("truncated.pth", whole[: len(whole) // 2], fragment="truncated")
    np.savez(tmp_path / "arrays.npz", a=np.zeros(3))
    case("arrays.pth", (tmp_path / "arrays.npz").read_bytes(), fragment="not a torch checkpoint (no data.pkl)")
    case("tensor.pth", torch.zeros(3), fragment="holds a Tensor, not a state_dict")
    case("random_keys.pth", {"encoder.w": torch.zeros(2), "head.b": torch.zeros(1)}, fragment="unknown network")
    case("random_keys_as_rvm.pth", {"encoder.w": torch.zeros(2)}, "rvm", "does not fit the rvm network: 326 missing")
    case("rvm_as_bimatting.pth", state, "bimatting", "holds rvm weights, but arch='bimatting'")
    fewer = {k: v for k, v in state.items() if not k.startswith("decoder.decode0")}
    case("missing_keys.pth", fewer, fragment="missing (decoder.decode0.conv.0.weight")
    case(
        "unexpected_keys.pth",
        {**state, "decoder.decode5.weight": torch.zeros(1)},
        fragment="1 unexpected (decoder.decode5.weight)",
    )
    case(
        "wrong_shape.pth",
        {**state, "project_mat.conv.weight": torch.zeros(5, 16, 1, 1)},
        fragment="wrong shape (project_mat.conv.weight [5, 16, 1, 1] != [4, 16, 1, 1])",
    )
    checkpoint = {"format": FORMAT, "format_version": 1, "arch": "rvm", "config": {}, "state_dict": state}
    case("future.pth", {**checkpoint, "format_version": 2}, fragment="format_version 2")
    case("alien_arch.pth", {**checkpoint, "arch": "resnet"}, fragment="architecture 'resnet'")
    case(
        "bad_config.pth",
        {**checkpoint, "config": {"width": 2}},
        fragment="config {'width': 2} that rvm does not accept",
    )
    case("arch_mismatch.pth", checkpoint, "bimatting", "holds rvm weights, but arch='bimatting'")
    case("unknown_arch.pth", state, "resnet", "unknown architecture 'resnet'")
    tiny = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "tiny",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )
    case("other.onnx", tiny.SerializeToString(), fragment="has 0 Conv nodes")
    case("garbage.onnx", b"\xff\x00 not protobuf" * 8, fragment="not a readable ONNX model")
    return cases


def test_bad_inputs_raise_one_clear_line(official, tmp_path):
    for name, (path, arch, fragment) in write_bad_inputs(tmp_path, official).items():
        with pytest.raises(InputError) as error:
            bimatting.load_model(path, arch=arch)
        message = str(error.value)
        assert fragment in message, f"{name}: {message}"
        assert "\n" not in message, name
        if arch != "resnet":  # the arch name is checked before the file is read
            assert path.name in message, f"{name}: {message}"


def test_folder_and_wrong_source_type(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        bimatting.load_model(tmp_path)
    with pytest.raises(InputError, match="must be a path, 'rvm' or 'default'"):
        bimatting.load_model(3)
    with pytest.raises(InputError, match="holds rvm weights, but arch='bimatting'"):
        bimatting.load_model("rvm", arch="bimatting")


def test_default_model():
    asset = importlib.resources.files("bimatting") / "assets" / "bimatting_default.npz"
    if asset.is_file():
        model = bimatting.load_model("default")
        assert isinstance(model, torch.nn.Module) and not model.training
    else:
        with pytest.raises(
            InputError, match="no packaged default model in this install; pass a checkpoint path or 'rvm'"
        ):
            bimatting.load_model("default")
