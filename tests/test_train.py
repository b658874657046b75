"""`bimatting train` on a tiny evaluation-layout set: learning, exact resume, DDP, bad input.

Sizes are the smallest the losses accept (128 px LR crops: the 5-level Laplacian needs >= 64 px
after the random crop), T = 2, a few steps: every test here runs in seconds on 2 cores.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bimatting.cli import cli
from bimatting.models import build_model
from bimatting.train import passes, process_state
from bimatting.train.sampling import seeded_rngs
from bimatting.train.sources import CompositeClips, find_eval_clips
from bimatting.train.trainer import fingerprint
from bimatting.weights.checkpoints import load_checkpoint
from bimatting.weights.packed import load_packed

TINY = ["--seq-lr", "2", "--size-lr", "128", "--no-progress", "--seed", "7"]


def write_eval_set(root, clips=2, frames=4, size=(112, 96)):
    """<root>/videomatte_motion/<clip>/{com,fgr,pha}/NNNN.png: a moving soft disc over noise."""
    rng = np.random.default_rng(0)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for c in range(clips):
        clip = root / "videomatte_motion" / f"{c:04d}"
        for layer in ("com", "fgr", "pha"):
            (clip / layer).mkdir(parents=True)
        colour = rng.uniform(0.5, 1.0, 3).astype(np.float32)
        background = rng.uniform(0.0, 0.4, (height, width, 3)).astype(np.float32)
        for t in range(frames):
            radius = np.hypot((xx - width * 0.4 - 3 * t) / (width * 0.25), (yy - height / 2) / (height * 0.35))
            pha = np.clip((1.0 - radius) * 4.0, 0.0, 1.0)
            fgr = np.broadcast_to(colour, (height, width, 3))
            com = fgr * pha[..., None] + background * (1 - pha[..., None])
            for layer, image in (("com", com), ("fgr", fgr)):
                cv2.imwrite(
                    str(clip / layer / f"{t:04d}.png"), cv2.cvtColor(np.uint8(image * 255 + 0.5), cv2.COLOR_RGB2BGR)
                )
            cv2.imwrite(str(clip / "pha" / f"{t:04d}.png"), np.uint8(pha * 255 + 0.5))
    return root


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    return write_eval_set(tmp_path_factory.mktemp("evalset"))


@pytest.fixture(scope="module")
def straight_run(eval_set, tmp_path_factory):
    """4 uninterrupted steps of stage 1, checkpoints every 2."""
    out = tmp_path_factory.mktemp("straight")
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--stage",
            "1",
            "--data-root",
            str(eval_set),
            "--out",
            str(out),
            "--steps",
            "4",
            "--checkpoint-every",
            "2",
            "--json",
            *TINY,
        ],
    )
    assert result.exit_code == 0, result.output
    return out / "stage1"


def fixed_batch_loss(model, eval_set):
    """Matting loss (train-mode BN, no grad) on one fixed window of the set, no crop."""
    dataset = CompositeClips(find_eval_clips(eval_set), 2, 128)
    with seeded_rngs(123):
        batch = {key: value[None] for key, value in dataset[0].items()}
    with torch.no_grad():
        return float(passes.matting_pass(model.train(), batch, 1.0)["total"])


def test_loss_decreases(straight_run, eval_set):
    process_state.seed_everything(7)  # the trainer's initial weights (--seed 7)
    initial = build_model("bimatting")
    trained = build_model("bimatting")
    trained.load_state_dict(load_checkpoint(straight_run / "step-0000004.pth")["state_dict"])
    before, after = fixed_batch_loss(initial, eval_set), fixed_batch_loss(trained, eval_set)
    assert after < 0.95 * before, (before, after)  # measured: 2.686 -> 2.433 (-9%)
    rows = list(csv.DictReader(open(straight_run / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3] and {r["pass"] for r in rows} == {"lr"}
    assert all(float(r["coarse_total"]) > 0 for r in rows)  # BiMatting's 1/16 term is on


def test_resume_is_bit_identical(straight_run, eval_set, tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--stage",
            "1",
            "--data-root",
            str(eval_set),
            "--out",
            str(tmp_path),
            "--steps",
            "4",
            "--checkpoint-every",
            "2",
            "--resume",
            str(straight_run / "step-0000002.pth"),
            *TINY,
        ],
    )
    assert result.exit_code == 0, result.output
    straight = load_checkpoint(straight_run / "step-0000004.pth")
    resumed = load_checkpoint(tmp_path / "stage1" / "step-0000004.pth")
    assert resumed["extra"]["step"] == 4
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    for index, state in straight["extra"]["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, resumed["extra"]["optimizer"]["state"][index][name]), (index, name)
    # ... and the resumed half really trained: step 2 differs from step 4
    half = load_checkpoint(straight_run / "step-0000002.pth")["state_dict"]
    assert not all(torch.equal(half[k], v) for k, v in straight["state_dict"].items())


def test_torchrun_two_ranks_hold_equal_weights(eval_set, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "bimatting",
        "train",
        "--stage",
        "1",
        "--data-root",
        str(eval_set),
        "--out",
        str(tmp_path),
        "--steps",
        "2",
        "--checkpoint-every",
        "0",
        *TINY,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "stage1" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    prints = summary["rank_fingerprints"]
    assert len(prints) == 2 and prints[0] == prints[1]
    process_state.seed_everything(7)
    assert prints[0] != fingerprint(build_model("bimatting")), "the weights did not move"


def test_wrong_layout_names_first_missing_folder(eval_set, tmp_path):
    broken = write_eval_set(tmp_path / "broken", clips=1, frames=2)

    shutil.rmtree(broken / "videomatte_motion" / "0000" / "fgr")
    result = CliRunner().invoke(cli, ["train", "--stage", "1", "--data-root", str(broken), *TINY])
    assert result.exit_code == 2
    assert str(broken / "videomatte_motion" / "0000" / "fgr") in result.output
    assert "Traceback" not in result.output

    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["train", "--stage", "1", "--data-root", str(empty), *TINY])
    assert result.exit_code == 2 and "Traceback" not in result.output
    named = re.search(r"missing folder '([^']+)'", result.output)  # RVM's training layout
    assert named and named.group(1).startswith(str(empty)) and not os.path.exists(named.group(1)), result.output

    result = CliRunner().invoke(cli, ["train", "--stage", "1", "--data-root", str(tmp_path / "absent"), *TINY])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_unlabelled_needs_teacher_and_small_sizes_are_refused(eval_set, tmp_path):
    result = CliRunner().invoke(
        cli, ["train", "--stage", "1", "--data-root", str(eval_set), "--unlabelled", str(eval_set), *TINY]
    )
    assert result.exit_code == 2 and "--teacher" in result.output
    result = CliRunner().invoke(
        cli, ["train", "--stage", "1", "--data-root", str(eval_set), "--seq-lr", "2", "--size-lr", "64"]
    )
    assert result.exit_code == 2 and "--size-lr 128" in result.output


def test_stage3_hr_pass_and_distillation_from_rvm(eval_set, tmp_path):
    """Stage 3 (LR + HR pass at s = 0.25) with the official RVM as teacher, plus unlabelled footage."""
    footage = tmp_path / "footage"
    footage.mkdir()
    for t in range(3):  # a numbered frame sequence = one unlabelled clip
        frame = cv2.imread(str(eval_set / "videomatte_motion" / "0001" / "com" / f"{t:04d}.png"))
        cv2.imwrite(str(footage / f"{t:05d}.jpg"), frame)
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--stage",
            "3",
            "--data-root",
            str(eval_set),
            "--out",
            str(tmp_path),
            "--steps",
            "1",
            "--checkpoint-every",
            "1",
            "--seq-hr",
            "1",
            "--size-hr",
            "512",
            "--teacher",
            "rvm",
            "--unlabelled",
            str(footage),
            *TINY,
        ],
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "stage3" / "train_log.csv")))
    assert [r["pass"] for r in rows] == ["lr", "hr", "unlabelled"]
    assert all(float(r["distill_total"]) > 0 for r in rows)
    extra = load_checkpoint(tmp_path / "stage3" / "step-0000001.pth")["extra"]
    lrs = {group["name"]: group["lr"] for group in extra["optimizer"]["param_groups"]}
    # the stage's per-module rates, and the recipe's latent binary weights apart at 10x the backbone's
    assert lrs == {"latent": 1e-4, "backbone": 1e-5, "aspp": 1e-5, "decoder": 1e-5, "refiner": 2e-4}
    assert extra["recipe"]["threshold_init"] is True


def write_rvm_layout(root, clips=2, frames=3, size=(144, 128)):
    """RVM's training layout, tiny: VideoMatte240K_JPEG_SD/train/{fgr,pha}/<clip>/ + BackgroundVideos."""
    rng = np.random.default_rng(1)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for c in range(clips):
        for t in range(frames):
            name = f"{t:05d}.jpg"
            pha = np.clip((1.0 - np.hypot((xx - width / 2 - 4 * t) / 40, (yy - height / 2) / 50)) * 4, 0, 1)
            fgr = np.full((height, width, 3), rng.integers(100, 255, 3), np.uint8)
            background = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            for folder, image in (
                ("VideoMatte240K_JPEG_SD/train/fgr", fgr),
                ("VideoMatte240K_JPEG_SD/train/pha", np.uint8(pha * 255)),
                ("BackgroundVideos/train", background),
            ):
                path = root / folder / f"{c:04d}"
                path.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path / name), image)
    return root


def test_rvm_training_layout_through_the_data_readers(tmp_path):
    """Stage 1 on RVM's own layout: fgr/pha clips + background videos, composited after the crop."""
    root = write_rvm_layout(tmp_path / "matting-data")
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--stage",
            "1",
            "--data-root",
            str(root),
            "--out",
            str(tmp_path / "out"),
            "--steps",
            "1",
            "--checkpoint-every",
            "1",
            *TINY,
        ],
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "out" / "stage1" / "train_log.csv")))
    assert [r["pass"] for r in rows] == ["lr"] and float(rows[0]["total"]) > 0
    assert "segmentation" in result.output  # the absent seg sets are noted, not fatal


def test_distill_cli_smoke(eval_set, tmp_path):
    """`bimatting distill` end to end on CPU: two steps at 128 px with the RVM teacher, a held-out
    clip, the packed model (<= 1 MB) with its training record, the curve and the resume state."""
    footage = tmp_path / "clip"
    footage.mkdir()
    for t in range(4):
        frame = cv2.imread(str(eval_set / "videomatte_motion" / "0000" / "com" / f"{t:04d}.png"))
        cv2.imwrite(str(footage / f"{t:04d}.jpg"), frame)
    stills = tmp_path / "stills"
    stills.mkdir()
    cv2.imwrite(str(stills / "0000.jpg"), cv2.imread(str(eval_set / "videomatte_motion" / "0001" / "com" / "0000.png")))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        [
            "distill",
            str(footage),
            "--images",
            str(stills),
            "--heldout",
            f"{footage}@2:4",
            "--out",
            str(out),
            "--steps",
            "2",
            "--batch",
            "1",
            "--eval-every",
            "2",
            "--threads",
            "2",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["steps"] == 2 and 0 < summary["heldout"]["pha_mad_mean"] < 1
    assert summary["heldout"]["clips"][0]["frames"] == 2

    packed = load_packed(out / "bimatting_default.npz")
    record = packed.packed_meta["provenance"]
    assert record["steps"] == 2 and record["data"]["clips_and_stills"] == 2 and record["recipe"]["latent_lr"] == 5e-3
    assert (out / "bimatting_default.npz").stat().st_size <= 1_000_000
    assert (out / "curve.png").is_file() and (out / "resume.pth").is_file()
    assert load_checkpoint(out / "resume.pth")["state_dict"]["project_mat.conv.weight"].dtype == torch.float32
