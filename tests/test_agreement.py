"""Agreement with a teacher on unlabelled footage: the figures against numpy, and the CLI."""

import json

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bimatting.cli import cli
from bimatting.eval.agreement import compare, totals
from bimatting.matting.samples import sample_frames


def test_compare_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    fs, ft = rng.random((3, 3, 6, 5)), rng.random((3, 3, 6, 5))
    ps, pt = rng.random((3, 1, 6, 5)), rng.random((3, 1, 6, 5))
    pt[0] = 0.0  # a frame with no foreground: fgr figure 0
    result = compare("x", (torch.tensor(fs), torch.tensor(ps)), (torch.tensor(ft), torch.tensor(pt)))
    for k in range(3):
        assert result.pha_mad[k] == pytest.approx(np.abs(ps[k] - pt[k]).mean())
        mask = np.broadcast_to(pt[k] > 0, fs[k].shape)
        assert result.fgr_mad[k] == pytest.approx(np.abs(fs[k] - ft[k])[mask].mean() if mask.any() else 0.0)
    inter = np.logical_and(ps > 0.5, pt > 0.5).sum()
    union = np.logical_or(ps > 0.5, pt > 0.5).sum()
    assert result.iou == pytest.approx(inter / union)
    assert totals([result])["pha_mad_worst"] == pytest.approx(np.abs(ps - pt).mean(axis=(1, 2, 3)).mean())


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    for k, frame in enumerate(sample_frames(frames=6, size=(256, 144))):
        cv2.imwrite(str(folder / f"{k:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder


def test_teacher_against_itself_agrees_exactly(clip, tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--against",
            "rvm",
            "--checkpoint",
            "rvm",
            f"{clip}@1:5",
            "--long-side",
            "256",
            "--json",
            "--preview",
            str(tmp_path / "p.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["clips"][0]["frames"] == 4 and figures["clips"][0]["clip"].endswith("@1:5")
    assert figures["pha_mad_mean"] == 0.0 and figures["iou_mean"] == 1.0
    image = cv2.imread(str(tmp_path / "p.png"))
    assert image.shape[1] == 4 * 256  # frame | teacher | model | difference


def test_default_model_against_rvm_reports_a_real_difference(clip):
    result = CliRunner().invoke(cli, ["evaluate", "--against", "rvm", str(clip), "--long-side", "256", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert 0.0 < figures["pha_mad_mean"] < 1.0 and 0.0 <= figures["iou_mean"] <= 1.0


def test_bad_footage_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["evaluate", "--against", "rvm", str(tmp_path / "missing.mp4")])
    assert result.exit_code == 2 and "cannot read frames" in result.output
    result = CliRunner().invoke(cli, ["evaluate", "--against", "rvm"])
    assert result.exit_code == 2 and "needs FOOTAGE" in result.output
