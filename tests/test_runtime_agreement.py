"""The shipped BiMatting computes the same matte in PyTorch (eval), onnxruntime, TVM on this machine
and TVM on the emulated rpi4, on real footage of people the project never trained on
(facenet_arcade_pedestrians, 1080p street pedestrians; held out), with the recurrent states fed
back on every side.

Bounds per frame (the runtime-agreement issue's): pha and fgr mean |diff| <= 1e-3 and at most
0.1 % of pixels differing by more than 0.05, at 512x288 (s = 1) and 1920x1080 (s = 0.25). What
holds is much tighter, and the test asserts it too: the values before every sign are the same
bits in all runtimes (tests/test_fixed_order.py, tests/test_fixed_point.py), so no decision parts
anywhere, the refiner's included, and the mattes differ by float rounding in the full-precision
layers after the last sign (~1e-7): every frame passes `bench`'s own check (mean <= 1e-4 and
max <= 1e-2 per frame) between onnxruntime and TVM.

Default suite: 6 frames per size on the host, 3 per size on the emulated rpi4 (`bimatting bench
--input` on the clip: its own verification against onnxruntime). Slow set (python -m pytest -m
slow): 100 frames per size, host and emulated rpi4.
"""

import importlib.resources
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

import bench_models
from bimatting.cli import cli
from bimatting.deploy.compiler.build import compile_model
from bimatting.deploy.device.runtime import CompiledModel, RecurrentRunner
from bimatting.export import exporter, verify
from bimatting.matting.frames import read_frames, to_nchw

CLIP = ("people", "clips", "facenet_arcade_pedestrians", "video.mp4")
SIZES = {"512x288": ((512, 288), 1.0), "1920x1080": ((1920, 1080), 0.25)}
MEAN_BOUND, PIXEL_DIFF, PIXEL_SHARE = 1e-3, 0.05, 1e-3
BENCH_TOLERANCE = {"mean": 1e-4, "max": 1e-2}  # bench's and export --verify's per-frame check


@pytest.fixture(scope="module")
def clip(shared_dir):
    path = shared_dir.joinpath("data", *CLIP)
    if not path.is_file():
        pytest.skip(f"held-out clip {path} is absent")
    if not (importlib.resources.files("bimatting") / "assets" / "bimatting_default.npz").is_file():
        pytest.skip("no packaged default model in this install")
    return path


@pytest.fixture(scope="module")
def shipped():
    network, arch = exporter.load_network(None, "bimatting")
    return network.eval(), exporter.build_onnx(network, arch)


def within_bounds(ours, theirs):
    """Per-frame check of the issue's bounds on fgr and pha, and of bench's: (passed, figures)."""
    figures = {}
    for key in ("pha", "fgr"):
        diff = np.abs(ours[key] - theirs[key])
        figures[f"{key}_mean"] = float(diff.mean())
        figures[f"{key}_max"] = float(diff.max())
        figures[f"{key}_share_over"] = float((diff > PIXEL_DIFF).mean())
    passed = all(
        figures[f"{k}_mean"] <= MEAN_BOUND
        and figures[f"{k}_share_over"] <= PIXEL_SHARE
        and figures[f"{k}_mean"] <= BENCH_TOLERANCE["mean"]
        and figures[f"{k}_max"] <= BENCH_TOLERANCE["max"]
        for k in ("pha", "fgr")
    )
    return passed, figures


class OnnxRunner:
    """onnxruntime (default optimizations, as a user runs it) with its own states."""

    def __init__(self, model, ratio, threads=1):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.states = {
            i.name: np.zeros([1, 1, 1, 1], np.float32) for i in self.session.get_inputs() if i.name.startswith("r")
        }
        self.ratio = np.array([ratio], np.float32)

    def step(self, src):
        outputs = self.session.run(None, {"src": src, "downsample_ratio": self.ratio, **self.states})
        self.states = dict(zip(self.states, outputs[2:6]))
        return {"fgr": outputs[0], "pha": outputs[1]}


def agreement(shipped, clip, size_name, frames, tmp_path):
    """Per-frame figures of PyTorch vs onnxruntime and onnxruntime vs TVM host; the verify report."""
    network, model = shipped
    size, ratio = SIZES[size_name]
    images = read_frames(clip, size=size, limit=frames)
    assert len(images) == frames
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # PyTorch against onnxruntime, no near-tie alignment: as two deployed runtimes
        report = verify.compare(model, network, images, ratio, threads=1, align_ties=False)
    finally:
        torch.set_num_threads(previous)
    path = tmp_path / "shipped.onnx"
    onnx.save(model, str(path))
    compile_model(path, "host", tmp_path / "host.tar", resolution=size, downsample_ratio=ratio)
    compiled = RecurrentRunner(CompiledModel(tmp_path / "host.tar"))
    reference = OnnxRunner(model, ratio)
    host = []
    for image in images:
        src = to_nchw(image)
        host.append(within_bounds(compiled.step(src, fetch=["fgr", "pha"]), reference.step(src)))
    return report, host


def check(report, host):
    per_frame = report["per_frame"]
    for i, (mean, share) in enumerate(zip(per_frame["pha_mean"], per_frame["pha_pixels_over"])):
        assert mean <= MEAN_BOUND and share <= PIXEL_SHARE, (i, mean, share)
    assert max(per_frame["fgr_mean"]) <= MEAN_BOUND, per_frame["fgr_mean"]
    assert report["passed"], report  # export --verify --exact's own check (mean <= 1e-4, max <= 1e-2)
    assert not report["parted_by_site"], report["parted_by_site"]  # no sign decided differently
    for i, (passed, figures) in enumerate(host):
        assert passed, (i, figures)
    worst = {key: max(f[key] for _, f in host) for key in host[0][1]}
    print(
        f"{len(host)} frames. PyTorch vs onnxruntime, worst frame: pha mean {max(per_frame['pha_mean']):.3g}, "
        f"fgr mean {max(per_frame['fgr_mean']):.3g}, pha share > 0.05 {max(per_frame['pha_pixels_over']):.3g}. "
        f"onnxruntime vs TVM host, worst frame: " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items())
    )


@pytest.mark.parametrize("size_name", list(SIZES))
def test_pytorch_onnxruntime_and_tvm_host_agree_on_held_out_footage(shipped, clip, size_name, tmp_path):
    check(*agreement(shipped, clip, size_name, 6, tmp_path))


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("size_name", list(SIZES))
def test_a_hundred_held_out_frames_agree(shipped, clip, size_name, tmp_path):
    check(*agreement(shipped, clip, size_name, 100, tmp_path))


def bench_on_the_emulated_rpi4(shipped, clip, emulated_board, size_name, tmp_path, frames):
    """`bimatting bench --input` of the shipped model's rpi4 artifact on the emulated board: its report."""
    bench_models.needs_cross_compiler()

    path = tmp_path / "shipped.onnx"
    onnx.save(shipped[1], str(path))
    size, ratio = SIZES[size_name]
    compile_model(path, "rpi4", tmp_path / "rpi4.tar", resolution=size, downsample_ratio=ratio)
    host, port = emulated_board("rpi4")
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            str(tmp_path / "rpi4.tar"),
            "--rpc",
            f"{host}:{port}",
            "--input",
            str(clip),
            "--frames",
            str(frames),
            "--warmup",
            "0",
            "--timeout",
            "0",
            "--json",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    check_report = json.loads(result.stdout)["verify"]
    assert check_report["passed"] and check_report["frames"] == frames, check_report
    per_frame = check_report["per_frame"]
    # The same decisions: float rounding only. A frame's max under 0.05 means no pixel over the 0.05.
    assert max(per_frame["pha_mean_abs"]) <= 1e-6 and max(per_frame["fgr_mean_abs"]) <= 1e-6, check_report
    assert max(per_frame["pha_max_abs"]) < 0.05 and max(per_frame["fgr_max_abs"]) < 0.05, check_report
    print(
        f"rpi4 {size_name} {frames} frames vs onnxruntime: worst frame pha mean {max(per_frame['pha_mean_abs']):.3g}"
        f" max {max(per_frame['pha_max_abs']):.3g}, fgr mean {max(per_frame['fgr_mean_abs']):.3g}"
        f" max {max(per_frame['fgr_max_abs']):.3g}"
    )
    return check_report


@pytest.mark.emulated
@pytest.mark.parametrize("size_name", list(SIZES))
def test_bench_on_the_emulated_rpi4_verifies_on_held_out_footage(shipped, clip, emulated_board, size_name, tmp_path):
    bench_on_the_emulated_rpi4(shipped, clip, emulated_board, size_name, tmp_path, 3)


@pytest.mark.slow
@pytest.mark.emulated
@pytest.mark.timeout(7200)
@pytest.mark.parametrize("size_name", list(SIZES))
def test_a_hundred_held_out_frames_verify_on_the_emulated_rpi4(shipped, clip, emulated_board, size_name, tmp_path):
    bench_on_the_emulated_rpi4(shipped, clip, emulated_board, size_name, tmp_path, 100)
