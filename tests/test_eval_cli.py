"""End to end: `bimatting data synth` -> `scripts/evaluate_model.sh` (= `bimatting test`) with the RVM
teacher -> predictions in RVM's layout + the 7 metrics; and clear errors on bad trees."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import bimatting
from bimatting.cli import cli
from bimatting.errors import InputError
from bimatting.eval.evaluate import evaluate
from bimatting.eval.metrics import LR_METRICS

REPO = Path(__file__).resolve().parents[1]
SIZE = (256, 144)
FRAMES = 4


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "synth_256x144"
    result = CliRunner().invoke(
        cli,
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--clips",
            "2",
            "--frames",
            str(FRAMES),
            "--size",
            f"{SIZE[0]}x{SIZE[1]}",
            "--seed",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def script_run(synth_set):
    """scripts/evaluate_model.sh on the synthetic set with the RVM teacher."""
    out = synth_set.parent / "pred"
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(
        ["bash", str(REPO / "scripts" / "evaluate_model.sh"), str(synth_set), "rvm", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return out, json.loads(run.stdout)


def test_script_writes_predictions_and_all_metrics(synth_set, script_run):
    out, summary = script_run
    assert set(summary) == set(LR_METRICS)
    assert all(isinstance(v, float) and math.isfinite(v) and v >= 0 for v in summary.values())
    for clip in sorted(synth_set.glob("*/*")):
        pred = out / clip.relative_to(synth_set)
        for kind in ("pha", "fgr"):
            names = sorted(p.name for p in (pred / kind).iterdir())
            assert names == sorted(p.name for p in (clip / kind).iterdir())
            image = cv2.imread(str(pred / kind / names[0]), cv2.IMREAD_UNCHANGED)
            assert image.shape[:2] == (SIZE[1], SIZE[0]) and image.dtype == np.uint8
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["evaluator"] == "lr" and saved["metrics"] == summary
    rows = (out / "clips.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("subset,clip,frames,pha_mad")
    # Scoring the written tree again gives the same summary.
    again = evaluate(out, synth_set, progress=False).summary
    assert again == pytest.approx(summary, rel=1e-12)


def test_predictions_follow_the_official_protocol(synth_set, script_run):
    """Independent rerun of RVM: zero states at each clip start, s = 1 at 256x144, x*255 truncated.
    The clip is the second one predicted, so it also shows that states were reset in between."""
    out, _ = script_run
    model = bimatting.load_model("rvm")
    for clip in ("videomatte_motion/0001",):
        states = [None] * 4
        with torch.inference_mode():
            for k in range(FRAMES):
                bgr = cv2.imread(str(synth_set / clip / "com" / f"{k:04d}.png"))
                src = torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)[None].float() / 255
                fgr, pha, *states = model(src, *states, downsample_ratio=1.0)
                expected = np.floor(pha[0, 0].numpy() * 255)
                written = cv2.imread(str(out / clip / "pha" / f"{k:04d}.png"), cv2.IMREAD_GRAYSCALE)
                # Same model and input; torch may differ in the last float bit across runs, which
                # can move a value across an integer boundary: allow 1 level on 0.1% of pixels.
                off = np.abs(written.astype(float) - expected)
                assert off.max() <= 1 and (off > 0).mean() < 1e-3, (clip, k)


def test_mismatched_prediction_tree_is_a_clear_error(synth_set, script_run, tmp_path):
    out, _ = script_run
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "videomatte_static" / "0001" / "pha" / "0002.png").unlink()
    result = CliRunner().invoke(cli, ["evaluate", "--pred", str(broken), "--true", str(synth_set), "--json"])
    assert result.exit_code == 2
    assert "videomatte_static/0001/pha/0002.png" in result.output and "Traceback" not in result.output
    run = subprocess.run(
        [sys.executable, "-m", "bimatting", "evaluate", "--pred", str(broken), "--true", str(synth_set)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stderr.startswith("Error: prediction")


def test_test_command_rejects_a_set_in_the_wrong_layout(tmp_path):
    (tmp_path / "frames").mkdir()
    cv2.imwrite(str(tmp_path / "frames" / "0000.png"), np.zeros((8, 8, 3), np.uint8))
    result = CliRunner().invoke(cli, ["test", "--data", str(tmp_path / "frames"), "--checkpoint", "rvm"])
    assert result.exit_code == 2 and "<subset>/<clip>/com/" in result.output and "Traceback" not in result.output


def test_test_command_never_replaces_its_input_or_foreign_folders(synth_set, tmp_path):
    before = sorted(p.relative_to(synth_set) for p in synth_set.rglob("*"))
    for out in (synth_set, synth_set / "videomatte_motion", synth_set.parent):
        result = CliRunner().invoke(cli, ["test", "--data", str(synth_set), "--checkpoint", "rvm", "--out", str(out)])
        assert result.exit_code == 2 and "overlaps the input" in result.output
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "draft.txt").write_text("keep")
    result = CliRunner().invoke(
        cli, ["test", "--data", str(synth_set), "--checkpoint", "rvm", "--out", str(tmp_path / "work")]
    )
    assert result.exit_code == 2 and "draft.txt" in result.output
    assert (tmp_path / "work" / "draft.txt").read_text() == "keep"
    assert sorted(p.relative_to(synth_set) for p in synth_set.rglob("*")) == before


def test_default_checkpoint_runs_or_says_why(synth_set, tmp_path):
    """`bimatting test` without --checkpoint uses load_model("default"): it scores the set when
    the packaged weights exist, else it exits 2 with load_model's own message."""
    try:
        bimatting.load_model("default")
        missing = None
    except InputError as error:
        missing = str(error)
    result = CliRunner().invoke(cli, ["test", "--data", str(synth_set), "--out", str(tmp_path / "p"), "--json"])
    if missing is None:
        assert result.exit_code == 0, result.output
        assert set(json.loads(result.stdout)) == set(LR_METRICS)
    else:
        assert result.exit_code == 2 and missing in result.output and "Traceback" not in result.output
        assert not (tmp_path / "p").exists()


def test_hr_set_with_jpg_truth(tmp_path):
    """A set larger than 512 px runs at s = 512/640 with the refiner and is scored by the HR
    evaluator; JPG ground truth gets JPG predictions under the same names."""
    data = tmp_path / "hd"
    result = CliRunner().invoke(
        cli, ["data", "synth", "--out", str(data), "--clips", "1", "--frames", "2", "--size", "640x360", "--seed", "2"]
    )
    assert result.exit_code == 0, result.output
    for png in list(data.glob("*/*/pha/*.png")) + list(data.glob("*/*/fgr/*.png")):
        cv2.imwrite(str(png.with_suffix(".jpg")), cv2.imread(str(png), cv2.IMREAD_UNCHANGED))
        png.unlink()
    out = tmp_path / "pred"
    result = CliRunner().invoke(cli, ["test", "--data", str(data), "--checkpoint", "rvm", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)) == {"pha_mad", "pha_mse", "pha_grad", "pha_dtssd", "fgr_mse"}
    assert json.loads((out / "metrics.json").read_text())["evaluator"] == "hr"
    assert sorted(p.name for p in (out / "videomatte_static/0000/pha").iterdir()) == ["0000.jpg", "0001.jpg"]
