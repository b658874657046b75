"""`bimatting demo`: the real chain (profile, export, compile host + rpi4, bench with verification,
matte) on the packaged default model and sample clip, run as a user runs it: a fresh process."""

import os
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from bimatting.export.verify import compare
from bimatting.matting.frames import read_frames
from bimatting.matting.runner import open_matter
from bimatting.weights.checkpoints import load_model

# The export issue's bounds for the same network on two backends (pha in [0, 1]).
PHA_MEAN_TOLERANCE = 1e-4
PHA_MAX_TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`bimatting demo --workdir DIR` in a fresh interpreter; (completed process, workdir, seconds)."""
    workdir = tmp_path_factory.mktemp("demo") / "out"
    began = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "bimatting", "demo", "--workdir", str(workdir), "--quiet"],
        capture_output=True,
        text=True,
        timeout=1800,
        env=dict(os.environ),
    )
    seconds = time.perf_counter() - began
    print(f"\nbimatting demo took {seconds:.0f} s")
    return result, workdir, seconds


def test_demo_exits_0_and_prints_the_table(demo_run, record_property):
    result, workdir, seconds = demo_run
    record_property("demo_seconds", round(seconds, 1))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout
    for heading in (
        "storage",
        "OPs, dense",
        "OPs, SAB-sparse",
        "latency/frame",
        "verification",
        "bimatting-host.tar",
        "files:",
    ):
        assert heading in table, (heading, table)
    host_row = next(line for line in table.splitlines() if line.startswith("bimatting-host.tar"))
    assert " ms " in host_row and "pass" in host_row, host_row
    for name in (
        "bimatting.onnx",
        "bimatting-host.tar",
        "sample.mp4",
        "matte.mp4",
        "matte_alpha.mp4",
        "report/matte.png",
        "report/host/alpha_preview.png",
    ):
        assert (workdir / name).is_file(), name
        assert str(workdir / name) in table or name == "sample.mp4", name
    capture = cv2.VideoCapture(str(workdir / "matte.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert (
        frames == 24 and capture.get(cv2.CAP_PROP_FRAME_WIDTH) == 512 and capture.get(cv2.CAP_PROP_FRAME_HEIGHT) == 288
    )


def test_default_model_agrees_on_three_backends(demo_run):
    """The packaged model, states carried over the sample clip, on onnxruntime (the demo's ONNX),
    TVM (the demo's host artifact) and PyTorch, within the export issue's tolerances.

    onnxruntime and TVM evaluate the graph as written and must agree outright. PyTorch orders some
    float operations differently (BN after the conv, not folded into it), so a few pre-sign values
    within float rounding of zero take the other sign and the flip cascades (measured on this
    clip: pha mean |diff| ~8e-3 from the second frame). The export issue's verification
    (bimatting.export.verify) aligns exactly those near-ties (|x| <= 1e-4) and counts them; a wrong
    graph flips decisions far from zero and fails.
    """
    result, workdir, _ = demo_run
    built = [workdir / "sample.mp4", workdir / "bimatting.onnx", workdir / "bimatting-host.tar"]
    assert all(path.is_file() for path in built), result.stderr[-3000:]
    frames = read_frames(workdir / "sample.mp4", limit=4)
    onnx_pha, tvm_pha = (
        np.stack([m.step(f)[1] for f in frames])
        for m in (
            open_matter(artifact=workdir / "bimatting.onnx", backend="onnxruntime"),
            open_matter(artifact=workdir / "bimatting-host.tar", backend="tvm"),
        )
    )
    diff = np.abs(onnx_pha - tvm_pha)
    assert diff.mean() <= PHA_MEAN_TOLERANCE and diff.max() <= PHA_MAX_TOLERANCE, (
        float(diff.mean()),
        float(diff.max()),
    )
    assert np.std(onnx_pha) > 0.01  # the packaged model's matte depends on the frame
    report = compare(workdir / "bimatting.onnx", load_model("default"), frames[:3], downsample_ratio=1.0)
    assert report["passed"], (report["worst"], report["aligned_near_ties"])
