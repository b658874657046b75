"""Distillation of BiMatting from a teacher (RVM) on unlabelled footage, resumable bit for bit.

Per step k (the recipe is bimatting.train.recipe; every piece is a switch recorded in the run):
    lr_g(k), binary or real weights      from the recipe's schedule (a function of k only)
    batch                                B clips x T frames of moving crops (bimatting.train.bank):
                                         footage with the teacher's precomputed whole-frame
                                         outputs, teacher-matted people recomposited over other
                                         footage, procedural figures
    loss = matting loss vs the targets (+ BiMatting's coarse term)
         + feature distillation vs the live teacher on the same crops (bimatting.train.features)
         + every `hr_every` steps the same at downsample ratio `hr_ratio` (trains the refiner)
    one Adam step
Step 0 first sets the float heads from the teacher and every sign threshold from the first batch.

The run folder holds resume.pth (fp32 weights, Adam state, step, schedule position, RNG states,
history), log.csv, health.jsonl, curve.png, and bimatting_default.npz (packed, with its training
record) written at each held-out evaluation. `resume=True` continues exactly where it stopped.
"""
import dataclasses
import json
import time
from pathlib import Path

import torch

from bimatting.errors import InputError
from bimatting.train import losses, passes, recipe as recipes
from bimatting.train.bank import Bank
from bimatting.train.features import FeatureTaps, feature_distillation
from bimatting.train.sign_health import SignHealth, summarize

RESUME = "resume.pth"
# 2: recomposites keep the teacher's matte of the people in the background footage in the target
# 3: crops zoom out past the frame, stills weigh 2 frames, recomposite backgrounds are the least
#    covered of 3 views (version 2's batches were 59 % foreground, held-out footage is ~30 %: the
#    model learnt to call everything foreground)
DATA_VERSION = 3
PACKED = "bimatting_default.npz"


@dataclasses.dataclass
class DistillOptions:
    footage: tuple
    out: Path
    heldout: tuple = ()
    images: tuple = ()
    teacher: str = "rvm"
    stop_at: int = None              # stop this invocation at this step (default: recipe.total_steps)
    size: tuple = (128, 128)         # crop W, H
    batch: int = 4
    frames: int = 2
    zoom: tuple = (0.5, 1.6)         # crop scale range, as a fraction of the frame-covering scale
    still_weight: int = 2            # a still is drawn as often as a clip of this many frames
    background_tries: int = 3        # recomposites go over the least covered of this many views
    hr_every: int = 4
    hr_ratio: float = 0.5
    mix: tuple = (0.6, 0.25, 0.15)   # footage, recomposite, procedural
    procedural: int = 24
    max_frames: int = 150
    short_side: int = 288
    eval_every: int = 250
    eval_frames: int = 32
    eval_long_side: int = 512
    save_every: int = 100
    diagnose_every: int = 500
    seed: int = 0
    threads: int = None
    init: str = None                 # start from these weights (the recipe's inits are then skipped)
    resume: bool = False
    progress: bool = True
    recipe: recipes.Recipe = recipes.Recipe()

    def identity(self):
        """What a resumed run must share with the run it continues."""
        keep = ("size", "batch", "frames", "zoom", "still_weight", "background_tries", "hr_every", "hr_ratio",
                "mix", "procedural", "max_frames", "short_side", "seed")
        recipe = {f"recipe.{k}": v for k, v in self.recipe.as_dict().items()}
        data = {"data_version": DATA_VERSION}
        return json.loads(json.dumps({**{k: getattr(self, k) for k in keep}, **recipe, **data}))


class Distillation:
    def __init__(self, options):
        from bimatting.models import build_model
        from bimatting.train.footage import load_heldout, load_training_items
        from bimatting.train.teacher import Teacher

        self.options, self.out = options, Path(options.out)
        if options.threads:
            torch.set_num_threads(options.threads)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(options.seed)
        self.teacher = Teacher(options.teacher).model
        cache = self.out / "cache"
        items = load_training_items(options.footage, options.images, options.heldout, self.teacher,
                                    short_side=options.short_side, max_frames=options.max_frames, cache_dir=cache)
        if not items:
            raise InputError("no training footage left after the held-out clips; add --footage")
        self.heldout = load_heldout(options.heldout, self.teacher, options.eval_long_side, options.eval_frames,
                                    cache) if options.heldout else ([], [])
        procedural = self._procedural()
        self.bank = Bank(items, procedural, options.mix, seed=options.seed, zoom=options.zoom,
                         still_weight=options.still_weight, background_tries=options.background_tries)
        self.data_record = {"clips_and_stills": len(items), "frames": sum(len(i) for i in items),
                            "procedural": len(procedural), "heldout": [n for n, _ in self.heldout[0]]}
        self.model = build_model("bimatting") if not options.init else \
            __import__("bimatting").load_model(options.init, "bimatting")
        self.model.straight_through_clamp = True   # a plain clamp let alpha die at 0 from random weights
        r = options.recipe
        if r.latent_init and not options.init:
            recipes.init_latent_weights(self.model, r.latent_init, torch.Generator().manual_seed(options.seed))
        self.model.train()
        self.optimizer = torch.optim.Adam(recipes.parameter_groups(self.model, r))
        self.health = SignHealth(self.model)
        self.step, self.seconds, self.history, self.record = 0, 0.0, [], {}
        if options.resume and (self.out / RESUME).is_file():
            self._load()

    def _procedural(self):
        import numpy as np

        from bimatting.data.procedural import soft_shapes_clip

        w, h = self.options.size
        made = []
        for index in range(self.options.procedural):
            fgr, pha = soft_shapes_clip(np.random.default_rng([self.options.seed, index]), self.options.frames, h, w)
            made.append((torch.from_numpy(np.ascontiguousarray(np.uint8(fgr * 255 + 0.5).transpose(0, 3, 1, 2))),
                         torch.from_numpy(np.ascontiguousarray(np.uint8(pha * 255 + 0.5)[:, None]))))
        return made

    # -- state ------------------------------------------------------------------------------
    def _save(self):
        from bimatting.checkpoints import save_checkpoint

        extra = {"distill": True, "step": self.step, "seconds": self.seconds,
                 "optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                 "bank_rng": _plain_rng(self.bank.rng.getstate()), "identity": self.options.identity(),
                 "history": self.history, "record": self.record}
        save_checkpoint(self.out / RESUME, self.model, "bimatting", extra=extra)

    def _load(self):
        from bimatting.checkpoints import load_checkpoint

        checkpoint = load_checkpoint(self.out / RESUME)
        extra = checkpoint["extra"]
        if extra.get("identity") != self.options.identity():
            saved, now = extra.get("identity", {}), self.options.identity()
            changed = sorted(k for k in now if saved.get(k) != now[k])
            raise InputError(f"cannot resume '{self.out / RESUME}' exactly: "
                             f"{', '.join(f'{k} {saved.get(k)} -> {now[k]}' for k in changed)}; "
                             "rerun with the original settings or use a new --out")
        self.model.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(extra["optimizer"])
        torch.set_rng_state(extra["torch_rng"])
        self.bank.rng.setstate(_tuple_rng(extra["bank_rng"]))
        self.step, self.seconds = int(extra["step"]), float(extra["seconds"])
        self.history, self.record = list(extra["history"]), dict(extra["record"])

    # -- one step ---------------------------------------------------------------------------
    def _first_step_inits(self, batch):
        if not self.options.init:
            self.record.update(recipes.first_step_inits(self.model, self.options.recipe, self.teacher,
                                                        lambda: self.model(batch["src"])))

    def _losses(self, batch, ratio, with_features):
        r = self.options.recipe
        with FeatureTaps(self.model, direct=bool(r.feature_weight), attention=bool(r.attention_weight)) as mine:
            pred = passes.student_outputs(self.model, batch["src"], ratio)
        terms = losses.matting_loss(pred["fgr"], pred["pha"], batch["fgr"], batch["pha"])
        total = terms["total"] + losses.coarse_matting_loss(pred["fgr_s"], pred["pha_s"], batch["fgr"],
                                                            batch["pha"])["coarse_total"]
        if with_features and (r.feature_weight or r.attention_weight):
            with torch.no_grad(), FeatureTaps(self.teacher, direct=bool(r.feature_weight),
                                              attention=bool(r.attention_weight)) as theirs:
                self.teacher(batch["src"], downsample_ratio=ratio)
            features = feature_distillation(mine.features, theirs.features, r.feature_weight, r.attention_weight)
            total = total + features["feature_total"]
        return total

    def train_step(self):
        o, r = self.options, self.options.recipe
        w, h = o.size
        batch = self.bank.batch(o.batch, o.frames, h, w)
        if self.step == 0:
            self._first_step_inits(batch)
        recipes.apply_schedule(self.optimizer, r, self.step)
        recipes.set_binary_weights(self.model, recipes.binary_weights_at(r, self.step))
        self.optimizer.zero_grad(set_to_none=True)
        total = self._losses(batch, 1.0, True)
        if o.hr_every and self.step % o.hr_every == 0:
            total = total + self._losses(batch, o.hr_ratio, False)
        if not torch.isfinite(total):
            raise RuntimeError(f"training diverged: loss {float(total)} at step {self.step}")
        total.backward()
        self.optimizer.step()
        self.step += 1
        self._last_batch = batch
        return float(total.detach())

    # -- evaluation and diagnostics ---------------------------------------------------------
    def evaluate(self):
        from bimatting.eval.agreement import agreement, totals

        recipes.set_binary_weights(self.model, True)      # what is deployed: always binary
        clips, teacher = self.heldout
        figures = totals(agreement(self.model, teacher, clips))
        recipes.set_binary_weights(self.model, recipes.binary_weights_at(self.options.recipe, self.step))
        return figures

    def diagnose(self, batch):
        """Sign health on `batch` (train-mode statistics; BN buffers restored after)."""
        report = self.health.measure(lambda: self.model(batch["src"]))
        return report, self.health.latent_flips(self.step)

    def diagnose_report(self):
        """Sign health of the current weights on one batch: {'step', 'sites', 'text'}."""
        w, h = self.options.size
        batch = self.bank.batch(self.options.batch, self.options.frames, h, w)
        if self.step == 0:
            self._first_step_inits(batch)
        report, _ = self.diagnose(batch)
        lines = [f"{'site':44s} {'in |x|<=1':>9s} {'|x|<1e-3':>9s} {'dead ch':>8s}"]
        lines += [f"{name:44s} {e['in_window']:9.1%} {e['near_zero']:9.2%} {e['dead_channels']:8.1%}"
                  + ("  DEAD" if e["dead"] else "") for name, e in report.items()]
        lines.append(summarize(report))
        return {"step": self.step, "sites": report, "text": "\n".join(lines)}

    def _write_health(self, report, flips):
        line = {"step": self.step, "sites": report, "latent_flips_per_1k": flips}
        with open(self.out / "health.jsonl", "a") as handle:
            handle.write(json.dumps(line) + "\n")

    def _ship(self, figures):
        from bimatting.packed import save_packed

        provenance = {"trainer": "bimatting.train.distill", "teacher": self.options.teacher,
                      "steps": self.step, "train_seconds": round(self.seconds, 1), "threads": torch.get_num_threads(),
                      "recipe": self.options.recipe.as_dict(), "run": self.options.identity(), "data": self.data_record,
                      "heldout": figures, "curve": self.history[-200:]}
        save_packed(self.out / PACKED, self.model, provenance=provenance)

    # -- the loop ---------------------------------------------------------------------------
    def run(self):
        from bimatting.train.curve import write_curve

        o = self.options
        stop = min(o.stop_at or o.recipe.total_steps, o.recipe.total_steps)
        bar = _bar(self.step, stop, o.progress)
        log_path = self.out / "log.csv"
        if not log_path.exists():
            log_path.write_text("step,seconds,loss,lr_latent,lr_float,heldout_pha_mad,heldout_iou\n")
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
                    figures = self.evaluate()
                    row = dict(row or {"step": self.step, "seconds": round(self.seconds, 1), "loss": None},
                               heldout_pha_mad=figures["pha_mad_mean"], heldout_iou=figures["iou_mean"])
                    bar.set_postfix_str(f"held-out MAD {figures['pha_mad_mean'] * 1e3:.1f}e-3 "
                                        f"(empty {figures['zero_pha_mad_mean'] * 1e3:.0f}e-3) IoU {figures['iou_mean']:.2f}")
                if row is not None:
                    lrs = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
                    row.update(lr_latent=lrs.get("latent"), lr_float=lrs.get("float"))
                    self.history.append(row)
                    with open(log_path, "a") as handle:
                        handle.write(",".join("" if row.get(k) is None else f"{row[k]:.6g}" for k in
                                              ("step", "seconds", "loss", "lr_latent", "lr_float",
                                               "heldout_pha_mad", "heldout_iou")) + "\n")
                if self.step % o.save_every == 0 or self.step == stop or "heldout_pha_mad" in (row or {}):
                    self._save()
                if row is not None and "heldout_pha_mad" in row:
                    self._ship(figures)
                    write_curve(self.out / "curve.png", self.history)
                bar.update(1)
        finally:
            bar.close()
        return {"steps": self.step, "seconds": round(self.seconds, 1), "heldout": figures, "out": str(self.out)}


def _bar(initial, total, enabled):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


def _plain_rng(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _tuple_rng(state):
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def distill(options):
    """Run (or continue) a distillation; returns its summary."""
    return Distillation(options).run()

