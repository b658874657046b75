"""Distillation of BiMatting from a teacher (RVM) on unlabelled footage, resumable bit for bit.

Per step k (the recipe is bimatting.train.recipe; every piece is a switch recorded in the run):
    lr_g(k), binary or real weights      from the recipe's schedule (a function of k only)
    batch                                B clips x T frames with the teacher's precomputed
                                         whole-frame outputs as targets: plain crops of the
                                         footage at its own scale (data="crops", the default),
                                         or the moving views of bimatting.train.bank with
                                         recomposites and procedural figures (data="views")
    loss = the recipe's terms of the matting loss vs the targets (the L1 terms first; Laplacian and
           coherence join at recipe.laplacian_from / coherence_from), full size and coarse
         + feature distillation vs the live teacher on the same crops (bimatting.train.features)
         + every `hr_every` steps the same at downsample ratio `hr_ratio` (trains the refiner)
    one Adam step, then the weight average  a <- a + (1 - ema_decay) (w - a)
Step 0 first sets the float heads from the teacher and every sign threshold from the first batch.

Why an average: at a constant latent rate the held-out figure of the live weights swings by
hundreds (x1e-3 pha MAD) between evaluations; each evaluation scores both the live and the averaged
weights, and the better one is what the run ships.

"Better" is the mean over held-out clips of IoU(alpha > 0.5) with the teacher. Not pha MAD: an
empty matte scores the mean of the teacher's alpha, which beats every matte that marks the person
and some background (measured: at step 250 the average of this run, nearly empty, had the lowest
MAD relative to the empty matte's and an IoU of 0.01).

The run folder holds resume.pth (fp32 weights and their average, Adam state, step, RNG states,
history), log.csv, heldout.jsonl, health.jsonl, curve.png, and the best held-out figure so far as
bimatting_default.npz (packed, with its training record) and snapshot.npz (a compact warm restart).
`resume=True` continues exactly where it stopped.
"""

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bimatting.data.procedural import soft_shapes_clip
from bimatting.errors import InputError
from bimatting.eval.agreement import agreement, totals
from bimatting.models import build_model
from bimatting.train import losses, passes, recipe as recipes
from bimatting.train.bank import Bank
from bimatting.train.batch_grid import write_batch_grid
from bimatting.train.curve import write_curve
from bimatting.train.features import EncoderAdapters, FeatureTaps, feature_distillation
from bimatting.train.footage import load_heldout, load_training_items
from bimatting.train.logbook import CsvLog
from bimatting.train.settings import DistillOptions, with_new_defaults  # noqa: F401 - DistillOptions re-exported
from bimatting.train.sign_health import SignHealth, summarize
from bimatting.train.snapshot import is_snapshot, read_snapshot, save_snapshot
from bimatting.train.teacher import Teacher
from bimatting.weights.checkpoints import load_checkpoint, load_model, save_checkpoint
from bimatting.weights.packed import read_packed, save_packed

RESUME = "resume.pth"
PACKED = "bimatting_default.npz"
SNAPSHOT = "snapshot.npz"  # compact warm-restart weights of the best evaluation (bimatting.train.snapshot)
LOG_COLUMNS = (
    "step",
    "seconds",
    "loss",
    "lr_latent",
    "lr_float",
    "heldout_pha_mad",
    "heldout_iou",
    "heldout_rel_mad",
    "averaged_pha_mad",
    "averaged_iou",
    "averaged_rel_mad",
)


class Distillation:
    def __init__(self, options):
        self.options, self.out = options, Path(options.out)
        if options.threads:
            torch.set_num_threads(options.threads)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(options.seed)
        self.teacher = Teacher(options.teacher).model
        cache = self.out / "cache"
        items = load_training_items(
            options.footage,
            options.images,
            options.heldout + options.excluded,
            self.teacher,
            short_side=options.short_side,
            max_frames=options.max_frames,
            cache_dir=cache,
        )
        if not items:
            raise InputError("no training footage left after the held-out clips; add --footage")
        if options.still_share and options.data == "crops" and not any(len(item) == 1 for item in items):
            raise InputError(f"--still-share {options.still_share} needs stills; add --images FOLDER")
        if options.data == "crops" and not any(len(item) >= options.frames for item in items):
            raise InputError(
                f"no training clip has {options.frames} frames for plain crops; add clips or use "
                "--data views (which also animates stills)"
            )
        self.heldout = (
            load_heldout(options.heldout, self.teacher, options.eval_long_side, options.eval_frames, cache)
            if options.heldout
            else ([], [])
        )
        procedural = self._procedural()
        self.bank = Bank(
            items,
            procedural,
            options.mix,
            seed=options.seed,
            zoom=options.zoom,
            still_weight=options.still_weight,
            background_tries=options.background_tries,
        )
        self.data_record = {
            "clips_and_stills": len(items),
            "frames": sum(len(i) for i in items),
            "procedural": len(procedural),
            "heldout": [n for n, _ in self.heldout[0]],
        }
        self.model, init_record = _initial_model(options.init)
        self.model.straight_through_clamp = True  # a plain clamp let alpha die at 0 from random weights
        r = options.recipe
        recipes.set_ste_window(self.model, r.ste_window)
        if r.latent_init and not options.init:
            recipes.init_latent_weights(self.model, r.latent_init, torch.Generator().manual_seed(options.seed))
        self.model.train()
        self.optimizer = torch.optim.Adam(recipes.parameter_groups(self.model, r))
        if options.compiled and not _cxx_compiler():
            raise InputError(
                "--compile needs a C++ compiler (g++ or clang++ on PATH, or $CXX); install one or drop --compile"
            )
        # one graph per crop size (dynamic=False: each specialised); compiled once per process
        self._student_loss = torch.compile(student_loss, dynamic=False) if options.compiled else student_loss
        self.adapters = EncoderAdapters.between(self.model, self.teacher) if r.adapter_weight else None
        self.health = SignHealth(self.model)
        self.average = (
            {name: value.detach().clone() for name, value in _averaged(self.model)} if options.ema_decay else None
        )
        self.step, self.seconds, self.history, self.record = 0, 0.0, [], {}
        if options.resume and (self.out / RESUME).is_file():
            self._add_adapter_group()
            self._load()
        elif options.branch_from:
            self._branch(Path(options.branch_from))
        else:
            self._add_adapter_group()
            if options.init:
                self.record["started_from"] = _origin(options.init, init_record)

    def _add_adapter_group(self):
        """The adapters' Adam group, last, so that a run without adapters can be branched into one
        with them (its saved groups are the first ones)."""
        if self.adapters is not None and all(g["name"] != "adapters" for g in self.optimizer.param_groups):
            rate = self.options.recipe.float_lr
            self.optimizer.add_param_group(
                {"params": list(self.adapters.parameters()), "lr": rate, "base_lr": rate, "name": "adapters"}
            )

    def _procedural(self):
        w, h = self.options.sizes[0]
        made = []
        for index in range(self.options.procedural):
            fgr, pha = soft_shapes_clip(np.random.default_rng([self.options.seed, index]), self.options.frames, h, w)
            made.append(
                (
                    torch.from_numpy(np.ascontiguousarray(np.uint8(fgr * 255 + 0.5).transpose(0, 3, 1, 2))),
                    torch.from_numpy(np.ascontiguousarray(np.uint8(pha * 255 + 0.5)[:, None])),
                )
            )
        return made

    # -- state ------------------------------------------------------------------------------
    def _save(self):
        extra = {
            "distill": True,
            "step": self.step,
            "seconds": self.seconds,
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "bank_rng": _plain_rng(self.bank.rng.getstate()),
            "identity": self.options.identity(),
            "history": self.history,
            "record": self.record,
            "average": self.average,
            "adapters": self.adapters.state_dict() if self.adapters else None,
        }
        save_checkpoint(self.out / RESUME, self.model, "bimatting", extra=extra)

    def _load(self, path=None, checkpoint=None):
        checkpoint = checkpoint or load_checkpoint(path or self.out / RESUME)
        extra = checkpoint["extra"]
        saved, now = with_new_defaults(extra.get("identity", {})), self.options.identity()
        if path is None and saved != now:
            changed = sorted(k for k in now if saved.get(k) != now[k])
            raise InputError(
                f"cannot resume '{self.out / RESUME}' exactly: "
                f"{', '.join(f'{k} {saved.get(k)} -> {now[k]}' for k in changed)}; "
                "rerun with the original settings or use a new --out"
            )
        self.model.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(extra["optimizer"])
        torch.set_rng_state(extra["torch_rng"])
        self.bank.rng.setstate(_tuple_rng(extra["bank_rng"]))
        self.step, self.seconds = int(extra["step"]), float(extra["seconds"])
        self.history, self.record = list(extra["history"]), dict(extra["record"])
        self.average = extra.get("average")
        if self.adapters is not None and extra.get("adapters"):
            self.adapters.load_state_dict(extra["adapters"])
        return saved, now

    def _branch(self, source):
        """Continue another run's full state under this run's settings: a comparison of recipes from
        the same step (the other run's folder is left untouched). The rates come from this run's
        recipe; what changed is recorded."""
        path = source / RESUME if source.is_dir() else source
        if not path.is_file():
            raise InputError(f"--branch-from '{source}' holds no {RESUME}; give a run folder or its {RESUME}")
        checkpoint = load_checkpoint(path)
        if checkpoint["extra"].get("adapters"):  # the source trained adapters: its Adam state holds their group
            if self.adapters is None:
                _drop_group(checkpoint["extra"]["optimizer"], "adapters")
            self._add_adapter_group()
        rates = [group["base_lr"] for group in self.optimizer.param_groups]  # this run's, from parameter_groups
        saved, now = self._load(path, checkpoint)  # loading the Adam state brings the other run's rates: put ours back
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["base_lr"] = rate
        self._add_adapter_group()  # adapters new to this branch start fresh, their Adam moments at zero
        changed = {k: [saved.get(k), now[k]] for k in now if saved.get(k) != now[k]}
        self.record["branched_from"] = {"run": str(path), "step": self.step, "changed": changed}

    # -- one step ---------------------------------------------------------------------------
    def _first_step_inits(self, batch):
        if not self.options.init:
            self.record.update(
                recipes.first_step_inits(
                    self.model, self.options.recipe, self.teacher, lambda: self.model(batch["src"])
                )
            )

    def _losses(self, batch, ratio, with_features):
        r = self.options.recipe
        encoder = bool(r.attention_weight or r.adapter_weight)
        terms = recipes.loss_terms_at(r, self.step)
        if r.feature_weight or encoder:  # the taps' hooks need the eager forward
            with FeatureTaps(self.model, direct=bool(r.feature_weight), attention=encoder) as mine:
                total = student_loss(self.model, batch["src"], batch["fgr"], batch["pha"], ratio, terms)
        else:
            total = self._student_loss(self.model, batch["src"], batch["fgr"], batch["pha"], ratio, terms)
        if with_features and (r.feature_weight or encoder):
            with torch.no_grad(), FeatureTaps(self.teacher, direct=bool(r.feature_weight), attention=encoder) as theirs:
                self.teacher(batch["src"], downsample_ratio=ratio)
            features = feature_distillation(mine.features, theirs.features, r.feature_weight, r.attention_weight)
            total = total + features["feature_total"]
            if self.adapters is not None:
                total = total + r.adapter_weight * self.adapters.loss(mine.features, theirs.features)
        return total

    def _batch(self):
        o = self.options
        w, h = o.sizes[self.step % len(o.sizes)]
        if o.data == "crops":
            return self.bank.crops(
                o.batch, o.frames, h, w, o.still_share, o.colour_share, tuple(o.crop_scale), o.recomposite_share
            )
        return self.bank.batch(o.batch, o.frames, h, w)

    def train_step(self):
        o, r = self.options, self.options.recipe
        batch = self._batch()
        if self.step == 0:
            self._first_step_inits(batch)
        recipes.apply_schedule(self.optimizer, r, self.step)
        recipes.set_binary_weights(self.model, recipes.binary_weights_at(r, self.step))
        self.optimizer.zero_grad(set_to_none=True)
        # bf16: convolutions and matmuls in bfloat16 (AVX-512 BF16 where the CPU has it), the rest
        # float32; the weights, their gradients and Adam stay float32 (bench/train_speed.py: 1.23x)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=o.precision == "bf16"):
            total = self._losses(batch, 1.0, True)
            if o.hr_every and self.step % o.hr_every == 0:
                total = total + self._losses(batch, o.hr_ratio, False)
        if not torch.isfinite(total):
            raise RuntimeError(f"training diverged: loss {float(total)} at step {self.step}")
        total.backward()
        self.optimizer.step()
        if self.average is not None:
            with torch.no_grad():
                for name, value in _averaged(self.model):
                    self.average[name].lerp_(value, 1.0 - o.ema_decay)
        self.step += 1
        self._last_batch = batch
        return float(total.detach())

    # -- evaluation and diagnostics ---------------------------------------------------------
    @contextlib.contextmanager
    def _deployed(self, averaged=False):
        """The model as it would be deployed (binary weights), holding the live weights or their
        average (`averaged`) inside the block; the training state is restored after it."""
        live = {name: value.clone() for name, value in _averaged(self.model)} if averaged else None
        recipes.set_binary_weights(self.model, True)
        try:
            if averaged:
                _assign(self.model, self.average)
            yield self.model
        finally:
            if averaged:
                _assign(self.model, live)
            recipes.set_binary_weights(self.model, recipes.binary_weights_at(self.options.recipe, self.step))

    def evaluate(self, averaged=False):
        """Held-out agreement of the live weights, or of their average (`averaged`)."""
        clips, teacher = self.heldout
        with self._deployed(averaged) as model:
            return totals(agreement(model, teacher, clips))

    def diagnose(self, batch):
        """Sign health on `batch` (train-mode statistics; BN buffers restored after)."""
        report = self.health.measure(lambda: self.model(batch["src"]))
        return report, self.health.latent_flips(self.step)

    def dump_batches(self, folder, count=4):
        """PNG grids of the next `count` batches in `folder` (the run's state is not saved, so
        training later draws the same batches). Returns [{'path', 'step', 'foreground_share'}]."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written, step = [], self.step
        for k in range(count):
            self.step = step + k
            path = folder / f"batch_{self.step:06d}.png"
            written.append(
                {"path": str(path), "step": self.step, "foreground_share": write_batch_grid(self._batch(), path)}
            )
        self.step = step
        return written

    def diagnose_report(self):
        """Sign health of the current weights on one batch: {'step', 'sites', 'text'}."""
        batch = self._batch()
        if self.step == 0:
            self._first_step_inits(batch)
        report, _ = self.diagnose(batch)
        lines = [f"{'site':44s} {'in |x|<=1':>9s} {'|x|<1e-3':>9s} {'dead ch':>8s}"]
        lines += [
            f"{name:44s} {e['in_window']:9.1%} {e['near_zero']:9.2%} {e['dead_channels']:8.1%}"
            + ("  DEAD" if e["dead"] else "")
            for name, e in report.items()
        ]
        lines.append(summarize(report))
        return {"step": self.step, "sites": report, "text": "\n".join(lines)}

    def _write_health(self, report, flips):
        line = {"step": self.step, "sites": report, "latent_flips_per_1k": flips}
        with open(self.out / "health.jsonl", "a") as handle:
            handle.write(json.dumps(line) + "\n")

    def _write_heldout(self, live, averaged):
        line = {"step": self.step, "seconds": round(self.seconds, 1), "live": live, "averaged": averaged}
        with open(self.out / "heldout.jsonl", "a") as handle:
            handle.write(json.dumps(line) + "\n")

    def _ship(self, figures, averaged=False):
        """Write the packed model (the live weights or their average) with its training record."""
        provenance = {
            "trainer": "bimatting.train.distill",
            "teacher": self.options.teacher,
            "steps": self.step,
            "train_seconds": round(self.seconds, 1),
            "threads": torch.get_num_threads(),
            "recipe": self.options.recipe.as_dict(),
            "run": self.options.identity(),
            "data": self.data_record,
            "heldout": figures,
            "curve": self.history[-200:],
        }
        # where the weights came from before this run's steps (--init, --branch-from): a warm
        # restart's step count and seconds are its own, the origin's are added there
        provenance.update({k: self.record[k] for k in ("started_from", "branched_from") if k in self.record})
        provenance["weights"] = "average" if averaged else "live"
        with self._deployed(averaged) as model:
            save_packed(self.out / PACKED, model, provenance=provenance)
            save_snapshot(self.out / SNAPSHOT, model, record=provenance)

    # -- the loop ---------------------------------------------------------------------------
    def run(self):
        o = self.options
        stop = min(o.stop_at or o.recipe.total_steps, o.recipe.total_steps)
        bar = _bar(self.step, stop, o.progress)
        log = CsvLog(self.out / "log.csv", LOG_COLUMNS, self.step + 1)
        window, figures = [], None
        try:
            while self.step < stop:
                started = time.perf_counter()
                window.append(self.train_step())
                self.seconds += time.perf_counter() - started
                row = None
                if self.step % 10 == 0 or self.step == stop:
                    row = {"step": self.step, "seconds": round(self.seconds, 1), "loss": sum(window) / len(window)}
                    window = []
                if o.diagnose_every and self.step % o.diagnose_every == 0:
                    report, flips = self.diagnose(self._last_batch)
                    self._write_health(report, flips)
                    bar.write(f"step {self.step}: {summarize(report, flips)}")
                if self.heldout[0] and (self.step % o.eval_every == 0 or self.step == stop):
                    figures, averaged = self.evaluate(), self.evaluate(averaged=True) if self.average else None
                    row = dict(
                        row or {"step": self.step, "seconds": round(self.seconds, 1), "loss": None},
                        heldout_pha_mad=figures["pha_mad_mean"],
                        heldout_iou=figures["iou_mean"],
                        heldout_rel_mad=relative_mad(figures),
                    )
                    if averaged:
                        row.update(
                            averaged_pha_mad=averaged["pha_mad_mean"],
                            averaged_iou=averaged["iou_mean"],
                            averaged_rel_mad=relative_mad(averaged),
                        )
                    self._write_heldout(figures, averaged)
                    use_average = averaged is not None and averaged["iou_mean"] > figures["iou_mean"]
                    figures = averaged if use_average else figures
                    bar.set_postfix_str(
                        f"held-out MAD {figures['pha_mad_mean'] * 1e3:.1f}e-3 "
                        f"(empty {figures['zero_pha_mad_mean'] * 1e3:.0f}e-3) IoU {figures['iou_mean']:.2f}"
                    )
                if row is not None:
                    lrs = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
                    row.update(lr_latent=lrs.get("latent"), lr_float=lrs.get("float"))
                    self.history.append(row)
                    log.write(row)
                if self.step % o.save_every == 0 or self.step == stop or "heldout_pha_mad" in (row or {}):
                    self._save()
                if row is not None and "heldout_pha_mad" in row:
                    if figures["iou_mean"] > self.record.get("best_iou", -1.0):
                        self.record.update(
                            best_iou=figures["iou_mean"],
                            best_rel_mad=relative_mad(figures),
                            best_step=self.step,
                            best_weights="average" if use_average else "live",
                        )
                        self._ship(figures, use_average)
                        self._save()
                    write_curve(self.out / "curve.png", self.history)
                bar.update(1)
        finally:
            bar.close()
            log.close()
        return {"steps": self.step, "seconds": round(self.seconds, 1), "heldout": figures, "out": str(self.out)}


def _initial_model(init):
    """(model, training record): a fresh BiMatting, or one holding the weights of `init` (a
    checkpoint, a packed model or a compact snapshot of an earlier run, bimatting.train.snapshot)
    with the training record it carries ({} for a fresh model or a PyTorch checkpoint)."""
    if init and is_snapshot(init):
        state, record = read_snapshot(init)
        model = build_model("bimatting")
        model.load_state_dict(state)
        return model, record
    if init:
        packed = Path(init).suffix.lower() == ".npz"  # load_model's rule for a packed file
        record = read_packed(init)[0].get("provenance", {}) if packed else {}
        return load_model(init, "bimatting"), record
    return build_model("bimatting"), {}


def _origin(init, record):
    """What a run started from (--init): the file's name and that file's training record's steps,
    training seconds, weights and its own origin, so a packed model's record adds up across warm
    restarts."""
    keep = ("steps", "train_seconds", "weights", "started_from")
    return {"file": Path(init).name, **{k: record[k] for k in keep if k in record}}


def _averaged(model):
    """(name, tensor) of what the weight average follows: every float parameter and buffer."""
    return [(name, value) for name, value in model.state_dict(keep_vars=True).items() if value.is_floating_point()]


@torch.no_grad()
def _assign(model, values):
    for name, value in _averaged(model):
        value.copy_(values[name])


def relative_mad(figures):
    """Mean over held-out clips of pha MAD / the empty matte's: below 1 beats an empty matte, and a
    clip with little foreground counts as much as one with much."""
    clips = figures["clips"]
    return sum(c["pha_mad"] / max(c["zero_pha_mad"], 1e-9) for c in clips) / len(clips)


def _bar(initial, total, enabled):
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


def _cxx_compiler():
    """The C++ compiler torch.compile's CPU backend would call, or None."""
    names = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    return next((shutil.which(n) for n in names if n and shutil.which(n)), None)


def student_loss(model, src, fgr, pha, ratio, terms):
    """The matting loss (`terms` of losses.student_matting_loss) of the student's forward on `src`:
    the part of a step that --compile hands to torch.compile."""
    pred = passes.student_outputs(model, src, ratio)
    return losses.student_matting_loss(pred, fgr, pha, terms)["total"]


def _drop_group(optimizer_state, name):
    """An optimizer state dict without the parameter group `name` (and its parameters' moments)."""
    group = next(g for g in optimizer_state["param_groups"] if g["name"] == name)
    optimizer_state["param_groups"].remove(group)
    for index in group["params"]:
        optimizer_state["state"].pop(index, None)


def _plain_rng(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _tuple_rng(state):
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def distill(options):
    """Run (or continue) a distillation; returns its summary."""
    return Distillation(options).run()
