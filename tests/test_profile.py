"""`bimatting profile`: sizes and OPs against the measured official numbers, and bad input."""

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from bimatting.cli import cli
from bimatting.models import build_model
from bimatting.models.profile import profile_model

# Measured on the official model classes (reference MODEL.md sections 1 and 2.5), at 512x288:
RVM_PARAMS = 3_748_633
RVM_CONV_MACS = 4.496e9
BIMATTING_BINARY_WEIGHTS = 4_217_584
BIMATTING_DENSE_RATIO = 8.8  # 4.496 G / (0.403 G FP + 6.934 G binary / 64)


def profile_json(*args):
    result = CliRunner().invoke(cli, ["profile", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_rvm_counts():
    report = profile_json("--arch", "rvm", "--resolution", "512x288")
    assert report["params_total"] == RVM_PARAMS and report["params_binary"] == 0
    assert report["storage_bytes"] == RVM_PARAMS * 4
    assert report["fp_macs"] == pytest.approx(RVM_CONV_MACS, rel=0.01)
    assert report["ops_dense"] == report["ops_sparse"] == report["fp_macs"]
    assert report["ops_ratio_vs_rvm_dense"] == 1.0 and report["mask_density"] is None


def test_bimatting_counts_and_ratios_vs_rvm():
    report = profile_json("--arch", "bimatting", "--resolution", "512x288", "--mask-density", "0.3")
    assert report["params_binary"] == BIMATTING_BINARY_WEIGHTS
    assert report["params_total"] == 4_256_109
    # 1 bit per binary weight + 32 per FP parameter; the paper states 21.6x, our count 22.0x.
    assert report["storage_bytes"] == (4_217_584 + 32 * 38_525) / 8
    assert 20 < report["storage_ratio_vs_rvm"] < 23
    assert report["ops_ratio_vs_rvm_dense"] == pytest.approx(BIMATTING_DENSE_RATIO, rel=0.03)
    assert report["fp_macs"] == pytest.approx(0.403e9, rel=0.01)
    assert report["binary_macs"] == pytest.approx(6.934e9, rel=0.01)
    assert report["masked_binary_macs"] == pytest.approx(2.982e9, rel=0.01)
    assert report["masked_fp_macs"] == pytest.approx(0.3397e9, rel=0.01)
    # MODEL.md 2.5: OPs(rho) = 0.0632 + 0.3397 rho + (3.952 + 2.982 rho) / 64 G = 0.241 G at 0.3 (18.7x).
    rho = 0.3
    assert report["ops_sparse"] == pytest.approx((0.0632 + 0.3397 * rho + (3.952 + 2.982 * rho) / 64) * 1e9, rel=0.01)
    assert report["ops_ratio_vs_rvm_sparse"] == pytest.approx(18.7, rel=0.02)
    assert report["weights"] == "packaged default model" or report["weights"].startswith("untrained network")


def test_human_table():
    result = CliRunner().invoke(cli, ["profile", "--resolution", "256x144", "--mask-density", "0.5"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    storage = next(line for line in lines if line.startswith("storage (MB)"))
    assert storage.split()[-1] == "22.0x"
    parameters = next(line for line in lines if line.startswith("parameters"))
    # Right-aligned columns: the model's parameter count and storage end at the same position.
    assert parameters.index("4,256,109") + len("4,256,109") == storage.index("0.681") + len("0.681")


def calibrated_bimatting():
    """A random BiMatting whose coarse alpha crosses 0, so the SAB mask has edges."""
    torch.manual_seed(0)
    net = build_model("bimatting").eval()
    hidden = []
    hook = net.decoder.decode4.register_forward_hook(lambda m, i, o: hidden.append(o[2]))
    with torch.inference_mode():
        net(torch.rand(1, 2, 3, 144, 256))
        net.project_mat.conv.bias[3] -= net.project_mat.conv(hidden[0])[:, 3].median()
    hook.remove()
    return net


def test_sparse_ops_bounds_and_measured_density():
    net = calibrated_bimatting()
    low = profile_model(net, (256, 144), mask_density=0.0)
    high = profile_model(net, (256, 144), mask_density=1.0)
    # rho = 0 removes exactly the masked layers, rho = 1 is the dense count.
    assert high["ops_sparse"] == high["ops_dense"] == low["ops_dense"]
    assert low["ops_sparse"] == pytest.approx(
        low["ops_dense"] - low["masked_fp_macs"] - low["masked_binary_macs"] / 64, rel=1e-9
    )
    auto = profile_model(net, (256, 144), mask_density="auto", frames=4)
    assert 0.0 < auto["mask_density"] < 1.0, auto["mask_density"]
    assert "4 frames" in auto["mask_density_source"]
    # Each masked layer runs where the bilinear-upsampled mask is non-zero: at least the coarse
    # density (the band only widens), never more than dense.
    at_rho = profile_model(net, (256, 144), mask_density=auto["mask_density"])
    assert at_rho["ops_sparse"] <= auto["ops_sparse"] < auto["ops_dense"]


def test_auto_density_on_real_footage(bedroom_frames_dir):
    report = profile_json("--resolution", "256x144", "--frames", str(bedroom_frames_dir), "--measure-frames", "3")
    assert 0.0 <= report["mask_density"] <= 1.0
    assert str(bedroom_frames_dir) in report["mask_density_source"]
    assert report["ops_sparse"] <= report["ops_dense"]


def write_bad_inputs(folder):
    """name -> (path, extra CLI args) of inputs `profile` must refuse."""
    text = folder / "notes.pth"
    text.write_text("these are not weights\n")
    whole = folder / "whole.pth"
    torch.save(build_model("bimatting").state_dict(), whole)
    truncated = folder / "truncated.pth"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    foreign = folder / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)}, foreign)
    rvm = folder / "rvm.pth"
    torch.save(build_model("rvm").state_dict(), rvm)
    return {
        "missing": (folder / "absent.pth", [], "does not exist"),
        "not torch": (text, [], "not a torch checkpoint"),
        "truncated": (truncated, [], "truncated"),
        "unknown network": (foreign, [], "unknown network"),
        "other architecture": (rvm, ["--arch", "bimatting"], "rvm"),
    }


def test_bad_checkpoints_fail_with_one_line(tmp_path):
    for name, (path, extra, expected) in write_bad_inputs(tmp_path).items():
        run = subprocess.run(
            [sys.executable, "-m", "bimatting", "profile", str(path), *extra, "--json"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 2, (name, run.stderr)
        assert run.stdout == "", name
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in run.stderr, (name, run.stderr)
        assert str(path.name) in lines[0] and expected in lines[0], (name, lines[0])


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--resolution", "512by288"], "WIDTHxHEIGHT"),
        (["--mask-density", "1.5"], "outside [0, 1]"),
        (["--downsample-ratio", "0"], "downsample ratio"),
    ],
)
def test_bad_options_fail_with_one_line(args, expected):
    result = CliRunner().invoke(cli, ["profile", "--arch", "rvm", *args])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and expected in result.stderr
