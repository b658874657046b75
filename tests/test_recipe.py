"""The binary-network training recipe: each piece on its own, exact resume of a distillation run,
and a CPU smoke run whose held-out agreement with the teacher improves.

Footage is the packaged sample clip (written to a temporary folder), so nothing here needs the
shared data; the teacher is RVM with its official weights.
"""

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch._dynamo.utils import counters
from torch.nn import functional as F

from bimatting.cli import cli
from bimatting.errors import InputError
from bimatting.matting.samples import sample_frames
from bimatting.models import build_model
from bimatting.models.bimatting.binarize import BiConv2d, BinaryActivation
from bimatting.train import recipe as recipes, stages
from bimatting.train.batch_grid import GREY
from bimatting.train.distill import Distillation, DistillOptions
from bimatting.train.features import ADAPTER_TAPS, EncoderAdapters, FeatureTaps, feature_distillation
from bimatting.train.sign_health import SignHealth, summarize
from bimatting.train.snapshot import read_snapshot, save_snapshot
from bimatting.train.trainer import fingerprint
from bimatting.weights.checkpoints import load_model
from bimatting.weights.packed import read_packed


def _batch(seed=0, n=4, size=64):
    """[N, 3, size, size] frames of the sample clip (real content, values in [0, 1])."""
    frames = sample_frames(frames=n, size=(size, size))
    return torch.from_numpy(np.stack(frames).transpose(0, 3, 1, 2).astype(np.float32) / 255)


def test_threshold_init_centres_every_sign_input():
    torch.manual_seed(0)
    model = build_model("bimatting").train()
    src = _batch()
    recipes.init_thresholds(model, lambda: model(src))
    medians, seen = {}, set()

    def hook_for(name):
        def hook(module, args, output):
            if name not in seen:  # first call (a GRU calls its gates per frame)
                seen.add(name)
                medians[name] = output.detach().transpose(0, 1).flatten(1).median(dim=1).values

        return hook

    handles = [t.register_forward_hook(hook_for(n)) for n, t, _ in model.sign_sites()]
    with torch.no_grad():
        model(src)
    for h in handles:
        h.remove()
    assert len(medians) == len(model.sign_sites()) - 2  # the refiner's two run only at s < 1
    worst = max(float(m.abs().max()) for m in medians.values())
    assert worst < 1e-5, f"a sign input's per-channel median is {worst} after threshold init"


def test_thresholds_at_zero_leave_the_aspp_gate_dead_and_init_revives_it():
    torch.manual_seed(0)
    model = build_model("bimatting").train()
    src = _batch()
    before = SignHealth(model).measure(lambda: model(src))
    recipes.init_thresholds(model, lambda: model(src))
    after = SignHealth(model).measure(lambda: model(src))
    assert before["aspp.aspp2.1"]["dead"] and "aspp.aspp2.1" in summarize(before)
    assert not any(entry["dead"] for entry in after.values()), summarize(after)
    # the decoder's image input in [0, 1]: sign constant at threshold 0, balanced after init
    assert before["decoder.decode0.conv.0"]["dead_channels"] > after["decoder.decode0.conv.0"]["dead_channels"]


def test_dead_channels_count_every_frame_of_a_recurrent_site():
    """A GRU site is called once per frame; at the first frame the hidden half of its input is
    the zero state (constant by construction). A channel is dead only if its sign is the same at
    every position of every call: checked against the outputs of all calls gathered by hand."""
    torch.manual_seed(0)
    model = build_model("bimatting").train()
    src = _batch(n=4).view(2, 2, 3, 64, 64)  # 2 clips x 2 frames
    recipes.init_thresholds(model, lambda: model(src))
    site = "decoder.decode2.gru.ih.0"
    threshold = dict((n, t) for n, t, _ in model.sign_sites())[site]
    calls = []
    handle = threshold.register_forward_hook(lambda module, args, output: calls.append(output.detach()))
    report = SignHealth(model).measure(lambda: model(src))
    handle.remove()

    def constant_share(outputs):
        positive = torch.cat([o.transpose(0, 1).flatten(1) for o in outputs], dim=1) >= 0
        return float((positive.all(dim=1) | (~positive).all(dim=1)).float().mean())

    assert len(calls) == 2
    assert constant_share(calls[:1]) >= 0.45  # the first frame alone: the zero state's half
    assert report[site]["dead_channels"] == pytest.approx(constant_share(calls))
    assert report[site]["dead_channels"] < constant_share(calls[:1])


def test_per_group_learning_rates_reach_the_optimizer():
    model = build_model("bimatting")
    recipe = recipes.Recipe(latent_lr=7e-3, float_lr=3e-4, warmup_steps=10, total_steps=100)
    optimizer = torch.optim.Adam(recipes.parameter_groups(model, recipe))
    groups = {g["name"]: g for g in optimizer.param_groups}
    latent = {id(m.weight) for m in model.modules() if isinstance(m, BiConv2d)}
    assert {id(p) for p in groups["latent"]["params"]} == latent
    assert len(groups["float"]["params"]) + len(latent) == len(list(model.parameters()))
    recipes.apply_schedule(optimizer, recipe, 50)
    factor = recipe.final_lr_fraction + (1 - recipe.final_lr_fraction) * 0.5 * (1 + np.cos(np.pi * 0.5))
    assert groups["latent"]["lr"] == pytest.approx(7e-3 * factor)
    assert groups["float"]["lr"] == pytest.approx(3e-4 * factor)
    recipes.apply_schedule(optimizer, recipe, 0)
    assert groups["latent"]["lr"] == pytest.approx(7e-3 * 0.1)  # first warm-up step


def test_stage_rates_keep_module_groups_and_split_the_latent_weights():
    model = build_model("bimatting")
    config = stages.stage_config("bimatting", 1)
    groups = recipes.parameter_groups(model, recipes.Recipe(latent_lr=1e-3), config.lr, stages.module_group)
    rates = {g["name"]: g["lr"] for g in groups}
    assert rates == {"latent": 1e-3, "backbone": 1e-4, "aspp": 2e-4, "decoder": 2e-4, "refiner": 0.0}


def test_two_step_switch_real_then_binary_weights():
    torch.manual_seed(0)
    conv = BiConv2d(8, 4, 3, padding=1, bias=False)
    x = torch.randn(1, 8, 5, 5).sign()
    recipe = recipes.Recipe(binary_weights_from=5)
    model = torch.nn.Sequential(conv)
    recipes.set_binary_weights(model, recipes.binary_weights_at(recipe, 4))
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight, padding=1))
    recipes.set_binary_weights(model, recipes.binary_weights_at(recipe, 5))
    signs, alpha = conv.binary_weight()
    assert torch.allclose(conv(x), F.conv2d(x, signs * alpha.view(-1, 1, 1, 1), padding=1), atol=1e-6)
    # weight decay only in step 1
    optimizer = torch.optim.Adam(recipes.parameter_groups(model, recipe))
    recipes.apply_schedule(optimizer, recipe, 4)
    assert all(g["weight_decay"] == recipe.weight_decay_step1 for g in optimizer.param_groups)
    recipes.apply_schedule(optimizer, recipe, 5)
    assert all(g["weight_decay"] == 0 for g in optimizer.param_groups)


def test_heads_from_teacher_copy_where_shapes_match():
    teacher, student = load_model("rvm"), build_model("bimatting")
    copied = recipes.init_from_teacher(student, teacher)
    assert "project_mat.conv.weight" in copied and "refiner.conv.12.bias" in copied
    assert torch.equal(student.project_mat.conv.weight, teacher.project_mat.conv.weight)
    assert torch.equal(student.backbone.feature[0].conv1.weight, teacher.backbone.features[0][0].weight)


def test_feature_taps_match_shapes_and_vanish_on_identical_features():
    teacher, student = load_model("rvm").eval(), build_model("bimatting").train()
    src = _batch(n=2)[None]
    with FeatureTaps(student, attention=True) as mine:
        student(src)
    with torch.no_grad(), FeatureTaps(teacher, attention=True) as theirs:
        teacher(src)
    for name in ("aspp", "decoder.decode4", "decoder.decode3", "decoder.decode2", "decoder.decode1", "decoder.decode0"):
        assert mine.features[name].shape == theirs.features[name].shape, name
    terms = feature_distillation(mine.features, theirs.features, 1.0, 1.0)
    assert float(terms["feature_total"].detach()) > 0
    same = feature_distillation(theirs.features, theirs.features, 1.0, 1.0)
    assert float(same["feature_total"]) < 1e-6
    terms["feature_total"].backward()
    assert student.decoder.decode0.conv[5].weight.grad.abs().sum() > 0


# -- the distillation loop --------------------------------------------------------------------


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """Two frame folders made from the packaged sample clip: one to train on, one held out."""
    root = tmp_path_factory.mktemp("footage")
    frames = sample_frames(frames=24, size=(256, 144))
    for name, part in (("train", frames[:16]), ("heldout", frames[16:])):
        (root / name).mkdir()
        for k, frame in enumerate(part):
            cv2.imwrite(str(root / name / f"{k:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return root


def _options(footage, out, stop_at, total=8, **recipe):
    return DistillOptions(
        footage=(footage / "train",),
        heldout=(footage / "heldout",),
        out=out,
        stop_at=stop_at,
        sizes=((64, 64),),
        batch=2,
        frames=2,
        hr_every=0,
        procedural=2,
        short_side=144,
        eval_every=4,
        eval_frames=8,
        eval_long_side=128,
        save_every=2,
        diagnose_every=4,
        threads=1,
        resume=True,
        progress=False,
        recipe=recipes.Recipe(warmup_steps=2, total_steps=total, **recipe),
    )


def test_distillation_resumes_bit_identically(footage, tmp_path):
    pieces = dict(
        feature_weight=0.5, adapter_weight=0.5, heads_from_teacher=True, binary_weights_from=2
    )  # every path of a step
    straight = Distillation(_options(footage, tmp_path / "straight", 6, **pieces))
    straight.run()
    first = Distillation(_options(footage, tmp_path / "resumed", 3, **pieces))
    first.run()
    with open(tmp_path / "resumed" / "log.csv", "a") as handle:  # a row a stopped run wrote after its last save
        handle.write("5,9.9,0.5,,,,,,,,\n")
    second = Distillation(_options(footage, tmp_path / "resumed", 6, **pieces))
    assert second.step == 3
    second.run()
    assert fingerprint(second.model) == fingerprint(straight.model)
    steps = {
        name: [row.split(",")[0] for row in (tmp_path / name / "log.csv").read_text().splitlines()[1:]]
        for name in ("straight", "resumed")
    }
    resumed = [int(step) for step in steps["resumed"]]  # the stale row 5 is gone, each step once
    assert resumed == sorted(set(resumed)) and set(steps["straight"]) <= set(steps["resumed"])
    for a, b in zip(second.model.buffers(), straight.model.buffers()):
        assert torch.equal(a, b)
    for a, b in zip(second.adapters.parameters(), straight.adapters.parameters()):
        assert torch.equal(a, b)
    assert second.optimizer.state_dict()["state"][0]["exp_avg"].equal(
        straight.optimizer.state_dict()["state"][0]["exp_avg"]
    )
    # the training record travels with the packed model

    meta, _ = read_packed(tmp_path / "resumed" / "bimatting_default.npz")
    # the packed model is the best held-out figure so far, live weights or their average
    assert meta["provenance"]["steps"] == second.record["best_step"] and meta["provenance"]["recipe"]["threshold_init"]
    assert meta["provenance"]["weights"] == second.record["best_weights"]
    torch.testing.assert_close(
        second.average["project_mat.conv.weight"], straight.average["project_mat.conv.weight"], rtol=0, atol=0
    )
    assert (tmp_path / "resumed" / "curve.png").is_file()
    health = [json.loads(line) for line in (tmp_path / "resumed" / "health.jsonl").read_text().splitlines()]
    assert health[-1]["step"] == 4 and health[-1]["latent_flips_per_1k"] == {}


def test_resume_refuses_changed_settings(footage, tmp_path):
    Distillation(_options(footage, tmp_path / "run", 2)).run()
    with pytest.raises(InputError, match="latent_lr"):
        Distillation(_options(footage, tmp_path / "run", 4, latent_lr=1e-2))


def test_branch_continues_another_runs_state_under_new_settings(footage, tmp_path):
    """--branch-from: with the same settings a branch is the straight run bit for bit (weights,
    average, Adam moments, RNG streams all carried); with a new latent rate it starts at the source's
    step, Adam moments kept, at the new rate, the change recorded; the source run is untouched."""
    straight = Distillation(_options(footage, tmp_path / "straight", 6))
    straight.run()
    Distillation(_options(footage, tmp_path / "source", 3)).run()
    source_state = tmp_path / "source" / "resume.pth"
    digest = hashlib.sha256(source_state.read_bytes()).hexdigest()
    same = Distillation(
        dataclasses.replace(_options(footage, tmp_path / "same", 6), branch_from=str(tmp_path / "source"))
    )
    assert same.step == 3
    same.run()
    assert fingerprint(same.model) == fingerprint(straight.model)
    torch.testing.assert_close(
        same.average["project_mat.conv.weight"], straight.average["project_mat.conv.weight"], rtol=0, atol=0
    )
    faster = Distillation(
        dataclasses.replace(_options(footage, tmp_path / "faster", 4, latent_lr=2e-2), branch_from=str(source_state))
    )
    moments = {k: v["exp_avg"].clone() for k, v in faster.optimizer.state_dict()["state"].items()}
    assert faster.step == 3 and moments and all(m.abs().sum() > 0 for m in moments.values())
    assert {g["name"]: g["base_lr"] for g in faster.optimizer.param_groups}["latent"] == 2e-2
    assert faster.record["branched_from"]["changed"] == {"recipe.latent_lr": [5e-3, 2e-2]}
    faster.run()
    assert {g["name"]: g["lr"] for g in faster.optimizer.param_groups}["latent"] > 5e-3
    assert hashlib.sha256(source_state.read_bytes()).hexdigest() == digest


def test_a_branch_can_add_and_drop_the_encoder_adapters(footage, tmp_path):
    """--branch-from into a run with --adapter-weight: the source's Adam moments are kept for its
    groups and the adapters get a fresh group, last; the branch then resumes like any run; and a
    branch of it without adapters drops their group."""
    Distillation(_options(footage, tmp_path / "source", 2)).run()
    source_moments = torch.load(tmp_path / "source" / "resume.pth", weights_only=False)["extra"]["optimizer"]["state"]
    with_adapters = _options(footage, tmp_path / "adapters", 3, adapter_weight=0.5)
    branch = Distillation(dataclasses.replace(with_adapters, branch_from=str(tmp_path / "source")))
    assert branch.step == 2 and [g["name"] for g in branch.optimizer.param_groups][-1] == "adapters"
    assert branch.record["branched_from"]["changed"] == {"recipe.adapter_weight": [0.0, 0.5]}
    moments = branch.optimizer.state_dict()["state"]
    assert all(torch.equal(moments[k]["exp_avg"], v["exp_avg"]) for k, v in source_moments.items())
    branch.run()
    resumed = Distillation(dataclasses.replace(with_adapters, stop_at=4))
    assert resumed.step == 3 and resumed.run()["steps"] == 4
    plain = Distillation(
        dataclasses.replace(_options(footage, tmp_path / "plain", 5), branch_from=str(tmp_path / "adapters"))
    )
    assert plain.step == 4 and plain.adapters is None
    assert all(g["name"] != "adapters" for g in plain.optimizer.param_groups)
    assert plain.run()["steps"] == 5


def test_cpu_smoke_run_improves_heldout_agreement(footage, tmp_path):
    run = Distillation(_options(footage, tmp_path / "smoke", 40, total=40))
    before = run.evaluate()["pha_mad_mean"]
    summary = run.run()
    assert summary["steps"] == 40
    after = run.evaluate()["pha_mad_mean"]  # the live weights (the summary holds the better of live and average)
    assert after < 0.8 * before, f"held-out pha MAD {before:.4f} -> {after:.4f} after 40 steps"


def test_dump_batch_writes_what_training_would_see(footage, tmp_path):
    """`--dump-batch`: the grid holds the batch that training would draw next, crop by crop, and
    the printed foreground share is that crop's mean target alpha."""
    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        [
            "distill",
            str(footage / "train"),
            "--out",
            str(out),
            "--size",
            "64x64",
            "--batch",
            "2",
            "--threads",
            "1",
            "--dump-batch",
            str(tmp_path / "grids"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    written = json.loads(result.output[result.output.index("[") :])
    assert [entry["step"] for entry in written] == [0, 1, 2, 3]
    assert not (out / "resume.pth").exists()  # nothing trained, nothing saved
    # the same options draw the same first batch
    options = DistillOptions(
        footage=(footage / "train",), out=tmp_path / "again", sizes=((64, 64),), batch=2, threads=1, progress=False
    )
    batch = Distillation(options)._batch()
    shares = [float(batch["pha"][b].mean()) for b in range(2)]
    assert written[0]["foreground_share"] == pytest.approx(shares, abs=1e-6)
    grid = cv2.cvtColor(cv2.imread(written[0]["path"]), cv2.COLOR_BGR2RGB)
    header, rows = 18, [(b, t) for b in range(2) for t in range(2)]
    assert grid.shape == (header + len(rows) * (64 + 2), 3 * 64 + 4, 3)
    for k, (b, t) in enumerate(rows):
        top = header + k * 66
        pha = grid[top : top + 64, 66:130, 0].astype(int)
        expected = (batch["pha"][b, t, 0].numpy() * 255 + 0.5).astype(int)
        assert abs(pha - expected).max() <= 1
        fgr = grid[top : top + 64, 132:196].astype(int)
        outside = batch["pha"][b, t, 0].numpy() <= 0
        assert (abs(fgr[outside] - int(GREY * 255 + 0.5)) <= 1).all()


def test_snapshot_is_compact_and_warm_restarts(footage, tmp_path):
    """The committed snapshot: float state exact, latent weights within half a quantization step,
    almost every deployed sign kept, well under the 5 MB a tracked file may take; and a new run
    starts from it."""
    run = Distillation(_options(footage, tmp_path / "run", 6, total=6))
    run.run()
    size = save_snapshot(tmp_path / "snapshot.npz", run.model, record={"steps": run.step})
    assert size < 5_000_000
    state, record = read_snapshot(tmp_path / "snapshot.npz")
    assert record == {"steps": 6}
    latent = {id(p) for p in recipes.latent_parameters(run.model)}
    kept = total = 0
    for name, value in run.model.state_dict(keep_vars=True).items():
        restored = state[name]
        if id(value) not in latent:
            assert torch.equal(restored, value.detach()), name
            continue
        step = value.detach().flatten(1).abs().amax(dim=1) / 127
        assert ((restored - value.detach()).flatten(1).abs() <= step[:, None] / 2 * 1.001).all(), (
            name
        )  # float32 rounding of q * s
        centred = lambda w: w - w.mean(dim=(1, 2, 3), keepdim=True)  # noqa: E731 - what is deployed
        kept += int((centred(restored) >= 0).eq(centred(value.detach()) >= 0).sum())
        total += value.numel()
    assert kept / total > 0.99
    restart = Distillation(
        dataclasses.replace(_options(footage, tmp_path / "warm", 2, total=2), init=str(tmp_path / "snapshot.npz"))
    )
    assert torch.equal(restart.model.state_dict()["project_mat.conv.weight"], state["project_mat.conv.weight"])
    assert restart.run()["steps"] == 2
    # the packed model's training record names where the restart began, with that run's own steps
    provenance = read_packed(tmp_path / "warm" / "bimatting_default.npz")[0]["provenance"]
    assert provenance["steps"] == 2 and provenance["started_from"] == {"file": "snapshot.npz", "steps": 6}
    again = Distillation(
        dataclasses.replace(
            _options(footage, tmp_path / "warm2", 1, total=1), init=str(tmp_path / "warm" / "snapshot.npz")
        )
    )
    again.run()
    origin = read_packed(tmp_path / "warm2" / "bimatting_default.npz")[0]["provenance"]["started_from"]
    assert origin["steps"] == 2 and origin["started_from"] == {"file": "snapshot.npz", "steps": 6}
    assert origin["train_seconds"] == provenance["train_seconds"] and origin["weights"] == provenance["weights"]


def test_encoder_adapters_map_student_widths_to_the_teachers(footage, tmp_path):
    """The training-only adapters: sized from both networks, their loss the normalised MSE of
    numpy's arithmetic, trained with the rest, and absent from what is saved as the model."""
    student, teacher = build_model("bimatting"), build_model("rvm")
    adapters = EncoderAdapters.between(student, teacher)
    widths = {tap: (conv.in_channels, conv.out_channels) for tap, conv in adapters.convs.items()}
    assert widths == {"f2": (32, 24), "f3": (64, 40), "f4": (1024, 960)}
    g = torch.Generator().manual_seed(0)
    mine = {tap: torch.randn(2, widths[tap][0], 8, 8, generator=g) for tap in ADAPTER_TAPS}
    theirs = {tap: torch.randn(2, widths[tap][1], 8, 8, generator=g) for tap in ADAPTER_TAPS}
    expected = []
    for tap in ADAPTER_TAPS:
        w = adapters.convs[tap].weight.detach().numpy()[:, :, 0, 0]
        b = adapters.convs[tap].bias.detach().numpy()
        s = np.einsum("oc,nchw->nohw", w, mine[tap].numpy()) + b[None, :, None, None]
        t = theirs[tap].numpy()
        expected.append(((s - t) ** 2).mean() / ((t**2).mean() + 1e-6))
    assert float(adapters.loss(mine, theirs)) == pytest.approx(float(np.mean(expected)), rel=1e-4)
    run = Distillation(_options(footage, tmp_path / "run", 2, total=2, adapter_weight=1.0))
    before = [p.detach().clone() for p in run.adapters.parameters()]
    run.run()
    assert all(not torch.equal(a, b) for a, b in zip(before, run.adapters.parameters()))
    assert not any(key.startswith("adapters") for key in run.model.state_dict())


def test_warm_restart_from_the_committed_snapshot(footage, tmp_path):
    """training/default/snapshot.npz (what a new machine starts the default run from) loads and trains."""
    committed = Path(__file__).resolve().parent.parent / "training" / "default" / "snapshot.npz"
    assert committed.is_file(), "training/default/snapshot.npz is tracked: a new machine restarts the run from it"
    state, record = read_snapshot(committed)
    assert record["steps"] > 0 and record["heldout"]["iou_mean"] > 0
    run = Distillation(dataclasses.replace(_options(footage, tmp_path / "warm", 2, total=2), init=str(committed)))
    assert torch.equal(run.model.state_dict()["project_mat.conv.weight"], state["project_mat.conv.weight"])
    assert run.run()["steps"] == 2


def test_bfloat16_steps_follow_the_float32_steps_closely(footage, tmp_path):
    """--precision bf16 changes only the rounding of the step's convolutions: from the same weights
    on the same batch the student's first (float) convolution runs in bfloat16 and agrees with its
    float32 result to bfloat16's precision (8 bits of mantissa: 2^-8 of the largest output, plus
    the input's rounding; 2 % allowed), the first loss is finite and of the same size, the weights
    stay float32, and the setting is part of the run's identity. The whole network's loss is not
    compared tightly: a pre-sign value within rounding of zero flips, and the flip cascades
    (measured 3-29 % apart over six seeds on an Intel Xeon with AMX-BF16, ~1 % on one seed on an AMD
    EPYC)."""
    fp32 = Distillation(_options(footage, tmp_path / "fp32", 2))
    bf16 = Distillation(dataclasses.replace(_options(footage, tmp_path / "bf16", 2), precision="bf16"))
    seen = {}

    def tap(name, model):
        stem = dict(model.named_modules())["backbone.feature.0.conv1"]
        # the last call: step 0 first runs the threshold init's forward, outside autocast
        return stem.register_forward_hook(lambda module, args, out: seen.__setitem__(name, out.detach()))

    handles = [tap("fp32", fp32.model), tap("bf16", bf16.model)]
    full, half = fp32.train_step(), bf16.train_step()
    for handle in handles:
        handle.remove()
    assert seen["fp32"].dtype == torch.float32 and seen["bf16"].dtype == torch.bfloat16
    difference = (seen["bf16"].float() - seen["fp32"]).abs().max()
    assert 0 < difference <= 0.02 * seen["fp32"].abs().max(), float(difference)
    assert math.isfinite(half) and 0.5 * full <= half <= 2 * full, (full, half)
    assert math.isfinite(bf16.train_step())
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert bf16.options.identity()["precision"] == "bf16"


def test_compile_without_a_cxx_compiler_is_a_clear_error(footage, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(InputError, match="--compile needs a C\\+\\+ compiler"):
        Distillation(dataclasses.replace(_options(footage, tmp_path / "run", 1), compiled=True))


def test_compiled_steps_follow_the_eager_steps(footage, tmp_path):
    """--compile hands the student's forward and loss to torch.compile. Its fused kernels round in
    another order (BatchNorm's statistics, bias + PReLU), ~1e-5 on a block's outputs; a binary
    network turns such differences near 0 into flipped signs, so the whole first loss from random
    weights differs more (4.4 % measured at 64x64; 10 % allowed). Checked: one binary block's
    output and gradients agree to float32 rounding, a run's first loss to the flips' spread, a graph
    was compiled, training goes on, and the setting is part of the run's identity."""
    torch.manual_seed(0)
    block = build_model("bimatting").train().backbone.feature[7]  # 64 -> 64, stride 1
    x = torch.randn(2, block.in_channels, 16, 16, generator=torch.Generator().manual_seed(1))
    outputs = []
    for forward in (block, torch.compile(block)):
        block.zero_grad()
        x_eager = x.clone().requires_grad_(True)
        y = forward(x_eager)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outputs.append((y.detach(), x_eager.grad, block.move11.bias.grad.clone(), block.binary_pw.weight.grad.clone()))
    for eager_value, compiled_value in zip(*outputs):
        torch.testing.assert_close(compiled_value, eager_value, rtol=1e-4, atol=1e-4)

    counters.clear()
    eager = Distillation(_options(footage, tmp_path / "eager", 2))
    compiled = Distillation(dataclasses.replace(_options(footage, tmp_path / "compiled", 2), compiled=True))
    first_eager, first_compiled = eager.train_step(), compiled.train_step()
    assert abs(first_eager - first_compiled) <= 0.1 * abs(first_eager), (first_eager, first_compiled)
    assert counters["stats"]["unique_graphs"] >= 1
    assert math.isfinite(compiled.train_step())
    assert compiled.options.identity()["compiled"] is True


def test_the_spread_window_reaches_every_sign_of_a_run(footage, tmp_path):
    """--ste-window spread: every binary activation of the student trains with it, the forward is
    unchanged (the same eval output as a fixed-window model), and it is part of the run's identity."""
    spread = Distillation(_options(footage, tmp_path / "spread", 1, ste_window="spread"))
    fixed = Distillation(_options(footage, tmp_path / "fixed", 1))
    signs = [m for m in spread.model.modules() if isinstance(m, BinaryActivation)]
    assert len(signs) > 20 and all(m.window == "spread" for m in signs)
    assert all(m.window == "fixed" for m in fixed.model.modules() if isinstance(m, BinaryActivation))
    assert spread.options.identity()["recipe.ste_window"] == "spread"
    src = _batch(n=2).unsqueeze(0)
    spread.model.eval(), fixed.model.eval()
    fixed.model.load_state_dict(spread.model.state_dict())
    with torch.no_grad():
        assert torch.equal(spread.model(src)[1], fixed.model(src)[1])
    with pytest.raises(ValueError, match="ste_window"):
        recipes.set_ste_window(spread.model, "wide")
    spread.model.train()
    assert math.isfinite(spread.train_step())
