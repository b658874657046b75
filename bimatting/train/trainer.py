"""The training loop: RVM's stage recipe for RVM or BiMatting, resumable bit for bit.

Per global step k (the plan is data: `step_plan`):
    lr          matting pass at s = 1 on a T = seq_lr batch (the epoch's main data)
    hr          matting pass at s = hr_downsample_ratio on a T = seq_hr batch (stages 3-4)
    seg_video / seg_image   segmentation pass, alternating by step (when those sets exist)
    unlabelled  teacher-only pass on unlabelled footage (when --unlabelled and --teacher)
each with its own Adam step (RVM), AMP on CUDA. The binary-network recipe (bimatting.train.recipe)
sets the Adam groups (latent binary weights apart from the stage's per-module rates), the
schedule, the two-step switch, the sign thresholds (from the first batch, step 0) and, with a
teacher, the float heads and the feature-distillation term; it is recorded in every checkpoint.
Checkpoints every `checkpoint_every` steps (`step-KKKKKKK.pth`) and after each epoch
(`epoch-E.pth`) hold the model, optimizer, grad scaler, step, epoch and every rank's RNG states;
sample data is a pure function of (seed, epoch/step, rank, position) (see sampling.py), so a
resumed run continues exactly as an uninterrupted one.
"""

import dataclasses
import hashlib
import math
import random
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bimatting.errors import InputError, RuntimeFailure
from bimatting.models import build_model
from bimatting.train import passes, process_state, recipe as recipes, sampling, sources, stages
from bimatting.train.features import FeatureTaps, feature_distillation
from bimatting.train.logbook import Logbook, write_summary
from bimatting.train.sign_health import SignHealth, summarize
from bimatting.train.teacher import Teacher
from bimatting.weights.checkpoints import load_checkpoint, load_model, save_checkpoint


@dataclasses.dataclass
class TrainOptions:
    stage: int
    data_root: Path
    arch: str = "bimatting"
    out: Path = Path("train_out")
    resume: str = None  # project checkpoint (full resume in the same stage) or weights to start from
    teacher: str = None  # "rvm" or a checkpoint: adds distillation terms
    unlabelled: tuple = ()  # footage for teacher-only passes
    steps: int = None  # stop at this global step (default: the stage's epochs)
    epochs: int = None  # override the stage's epoch count
    checkpoint_every: int = 1000
    device: str = "cpu"
    batch_size: int = 1
    seq_lr: int = None
    seq_hr: int = None
    size_lr: int = None
    size_hr: int = None
    num_workers: int = 0
    seed: int = 0
    precision: str = "fp16"  # AMP dtype on CUDA: fp16 (with GradScaler, as RVM), bf16, fp32
    distill_weight: float = 0.5  # teacher terms on labelled passes; unlabelled passes use unlabelled_weight
    unlabelled_weight: float = 1.0
    deterministic: bool = False  # CUDA: deterministic kernels (bit-identical resume on GPU too)
    progress: bool = True
    cache_frames: bool = False
    recipe: object = None  # bimatting.train.recipe.Recipe; None = Recipe.for_stage(...)
    recipe_changes: dict = None  # fields changed from Recipe.for_stage (when recipe is None)
    diagnose_every: int = 0  # steps between sign-health lines in the log (0 = never)


def step_plan(config, available, step):
    """Names of the passes of global step `step`, given which sources are available."""
    plan = ["lr"]
    if config.seq_hr > 0 and "hr" in available:
        plan.append("hr")
    seg = "seg_" + config.seg_cycle[step % len(config.seg_cycle)]
    if seg in available:
        plan.append(seg)
    if "unlabelled" in available:
        plan.append("unlabelled")
    return plan


MIN_CROP = 64  # a 5-level Laplacian pyramid needs >= 3 pixels (reflect pad 2) at its last level


def _check_sizes(config, arch):
    """The smallest random crop (size/2) must fit the 5-level Laplacian and, for BiMatting, leave
    >= 4 pixels at the coarse 1/16 scale of the downsampled input (its 1-level Laplacian crops to
    an even size, then reflect-pads by 2)."""
    checks = [("--size-lr", config.size_lr, 1.0)]
    if config.seq_hr > 0:
        checks.append(("--size-hr", config.size_hr, config.hr_downsample_ratio))
    for option, size, ratio in checks:
        need = max(2 * MIN_CROP, math.ceil(2 * 4 * 16 / ratio) if arch == "bimatting" else 0)
        if size < need:
            raise InputError(
                f"{option} {size} is too small: random crops go down to half of it and the "
                f"losses need >= {need // 2} pixels; use {option} {need} or more"
            )


def fingerprint(model):
    """sha256 of every parameter's bytes. (BN running statistics are left out: under DDP each
    rank updates its own from its own batch; rank 0's are broadcast at each forward and saved.)"""
    digest = hashlib.sha256()
    for key, value in model.named_parameters():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Trainer:
    def __init__(self, options):
        self.options = options
        overrides = dict(seq_lr=options.seq_lr, seq_hr=options.seq_hr, size_lr=options.size_lr, size_hr=options.size_hr)
        self.config = stages.stage_config(options.arch, options.stage, **overrides)
        if options.device == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda was given but torch sees no CUDA device; use --device cpu")
        if options.unlabelled and not options.teacher:
            raise InputError("--unlabelled footage has no true alpha and needs a teacher; add --teacher rvm")
        _check_sizes(self.config, options.arch)
        self.data = sources.build_sources(options, self.config)  # checks the data root first
        self.rt = process_state.start(options.device)
        self.out = Path(options.out) / f"stage{options.stage}"
        if self.rt.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.rt.barrier()
        self._build_model()

    # -- setup ------------------------------------------------------------------------------
    def _build_model(self):
        options, rt = self.options, self.rt
        if options.device == "cuda":
            torch.backends.cudnn.benchmark = not options.deterministic
            torch.backends.cudnn.deterministic = options.deterministic
        process_state.seed_everything(options.seed)  # the same initial weights on every rank and run
        self.model = build_model(options.arch)
        self.step, self.extra = 0, None
        self.recipe = options.recipe or recipes.Recipe.for_stage(
            self.config, self._planned_steps(), **(options.recipe_changes or {})
        )
        if options.resume:
            self._load_resume(options.resume)
        if rt.distributed and options.device == "cuda":
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(rt.device).train()
        self.optimizer = torch.optim.Adam(
            recipes.parameter_groups(self.model, self.recipe, self.config.lr, stages.module_group)
        )
        cuda = options.device == "cuda"
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(options.precision) if cuda else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if self.extra is not None:
            self.optimizer.load_state_dict(self.extra["optimizer"])
            self.scaler.load_state_dict(self.extra["scaler"])
        self.net = self.model
        if options.arch == "bimatting":
            self.health = SignHealth(self.model)
        if rt.distributed:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[rt.local_rank] if cuda else None, find_unused_parameters=True
            )
        self.teacher = None
        if options.teacher:
            self.teacher = Teacher(options.teacher, rt.device)

    def _planned_steps(self):
        steps_per_epoch = len(self._epoch_sampler(0)) // self.options.batch_size
        epochs = self.options.epochs if self.options.epochs is not None else self.config.epoch_count
        total = epochs * steps_per_epoch
        return total if self.options.steps is None else min(self.options.steps, total)

    def _first_step_inits(self, batch):
        """Step 0 of a fresh BiMatting run: the teacher's float heads, then sign thresholds from data."""
        if self.options.arch != "bimatting" or self.step != 0 or self.options.resume:
            return
        src = passes.composite({k: v.to(self.rt.device) for k, v in batch.items()})["src"]
        recipes.first_step_inits(
            self.model, self.recipe, self.teacher.model if self.teacher else None, lambda: self.model(src)
        )
        # each rank saw its own first batch: every rank takes rank 0's initial values
        self.rt.broadcast_(list(self.model.state_dict().values()))

    def _load_resume(self, source):
        """Full resume from a checkpoint of this stage; otherwise take its weights only."""
        try:
            checkpoint = load_checkpoint(source)
        except InputError:
            checkpoint = None
        if checkpoint is None:
            state = load_model(source, arch=self.options.arch).state_dict()
        else:
            if checkpoint["arch"] != self.options.arch:
                raise InputError(
                    f"--resume '{source}' holds {checkpoint['arch']} weights; training --arch {self.options.arch}"
                )
            state = checkpoint["state_dict"]
            extra = checkpoint["extra"]
            if extra.get("stage") == self.options.stage and "optimizer" in extra:
                self._check_same_run(extra, source)
                self.extra, self.step = extra, int(extra["step"])
        self.model.load_state_dict(state)

    def _check_same_run(self, extra, source):
        saved = extra.get("run", {})
        now = self._run_identity()
        changed = [key for key in now if key in saved and saved[key] != now[key]]
        if changed:
            raise InputError(
                f"cannot resume '{source}' exactly: {', '.join(changed)} changed "
                f"({', '.join(f'{k} {saved[k]} -> {now[k]}' for k in changed)}); "
                "rerun with the original settings"
            )

    def _run_identity(self):
        c, o = self.config, self.options
        identity = {
            "world_size": self.rt.world_size,
            "batch_size": o.batch_size,
            "seed": o.seed,
            "seq_lr": c.seq_lr,
            "seq_hr": c.seq_hr,
            "size_lr": c.size_lr,
            "size_hr": c.size_hr,
        }
        if getattr(self, "recipe", None) is not None:
            identity.update({f"recipe.{k}": v for k, v in self.recipe.as_dict().items()})
        return identity

    # -- data -------------------------------------------------------------------------------
    def _loader(self, dataset, sampler, batch=None):
        return DataLoader(
            sampling.SeededDataset(dataset),
            batch_size=batch or self.options.batch_size,
            sampler=sampler,
            num_workers=self.options.num_workers,
            pin_memory=self.options.device == "cuda",
        )

    def _epoch_sampler(self, epoch, start=0):
        return sampling.EpochSampler(
            len(self.data["lr"]),
            self.options.batch_size,
            self.options.seed,
            epoch,
            self.rt.rank,
            self.rt.world_size,
            start * self.options.batch_size,
        )

    def _side_loaders(self):
        available = set(self.data)
        loaders = {}
        for name in set(self.data) - {"lr"}:

            def uses(step, name=name):
                return name in step_plan(self.config, available, step)

            # RVM: the image segmentation pass takes B * T_lr stills (T = 1) instead of B clips
            batch = self.options.batch_size * (self.config.seq_lr if name == "seg_image" else 1)
            sampler = sampling.StepSampler(
                len(self.data[name]), batch, self.options.seed, name, uses, self.rt.rank, self.step
            )
            loaders[name] = iter(self._loader(self.data[name], sampler, batch))
        return loaders

    # -- one pass ---------------------------------------------------------------------------
    def _run_pass(self, name, batch):
        device = self.rt.device
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        rng = random.Random(sampling.derive_seed(self.options.seed, "crop", name, self.step, self.rt.rank))
        if name.startswith("seg_"):
            size = batch["img"].shape[-1]
        else:
            size = batch["src" if "src" in batch else "fgr"].shape[-1]
        batch = passes.random_crop(batch, *passes.crop_size(rng, size, self.config.crop_multiple))
        self.optimizer.zero_grad(set_to_none=True)
        recipes.apply_schedule(self.optimizer, self.recipe, self.step)
        recipes.set_binary_weights(self.model, recipes.binary_weights_at(self.recipe, self.step))
        features = (
            self.teacher is not None
            and self.options.arch == "bimatting"
            and (self.recipe.feature_weight or self.recipe.attention_weight)
            and name in ("lr", "unlabelled")
        )
        with torch.autocast(device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            if name.startswith("seg_"):
                terms = passes.segmentation_pass(self.net, batch)
            elif name == "unlabelled":
                with FeatureTaps(
                    self.model, bool(self.recipe.feature_weight), bool(self.recipe.attention_weight)
                ) as taps:
                    terms = passes.unlabelled_pass(self.net, batch, 1.0, self.teacher, self.options.unlabelled_weight)
            else:
                ratio = 1.0 if name == "lr" else self.config.hr_downsample_ratio
                with FeatureTaps(
                    self.model, bool(self.recipe.feature_weight), bool(self.recipe.attention_weight)
                ) as taps:
                    terms = passes.matting_pass(
                        self.net, passes.composite(batch), ratio, self.teacher, self.options.distill_weight
                    )
            if features:
                src = batch["src"] if "src" in batch else passes.composite(batch)["src"]
                theirs = self.teacher.features(
                    src, 1.0, bool(self.recipe.feature_weight), bool(self.recipe.attention_weight)
                )
                distilled = feature_distillation(
                    taps.features, theirs, self.recipe.feature_weight, self.recipe.attention_weight
                )
                terms["feature_total"] = distilled["feature_total"]
                terms["total"] = terms["total"] + distilled["feature_total"]
        if not torch.isfinite(terms["total"]):
            raise RuntimeFailure(f"training diverged: {name} loss is {float(terms['total'])} at step {self.step}")
        self.scaler.scale(terms["total"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {key: float(value.detach()) for key, value in terms.items()}

    # -- checkpoints ------------------------------------------------------------------------
    def save(self, path, epoch):
        rngs = self.rt.all_gather(process_state.rng_state())
        if not self.rt.main:
            return
        extra = {
            "stage": self.options.stage,
            "step": self.step,
            "epoch": epoch,
            "recipe": self.recipe.as_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "run": self._run_identity(),
            "options": _plain_options(self.options),
        }
        # SyncBatchNorm (multi-GPU) keeps BatchNorm2d's keys, so the checkpoint loads as usual.
        save_checkpoint(path, self.model, self.options.arch, extra=extra)

    # -- the loop ---------------------------------------------------------------------------
    def run(self):
        options, config, rt = self.options, self.config, self.rt
        steps_per_epoch = len(self._epoch_sampler(0)) // options.batch_size
        epochs = options.epochs if options.epochs is not None else config.epoch_count
        total = epochs * steps_per_epoch if options.steps is None else min(options.steps, epochs * steps_per_epoch)
        log = Logbook(self.out, self.step, total, enabled=rt.main, progress=options.progress)
        missing = [name for name in ("seg_video", "seg_image") if name not in self.data]
        if missing:
            log.note(f"note: no segmentation set for {', '.join(missing)}; those segmentation passes are skipped")
        for line in self.data.notes:
            log.note(line)
        side = self._side_loaders()
        if self.extra is not None:
            process_state.set_rng_state(self.extra["rng"][rt.rank])
        seconds = []
        try:
            while self.step < total:
                epoch_index, offset = divmod(self.step, steps_per_epoch)
                epoch = config.epochs[0] + epoch_index
                for batch in self._loader(self.data["lr"], self._epoch_sampler(epoch, offset)):
                    started = time.perf_counter()
                    last = {}
                    if self.step == 0:
                        self._first_step_inits(batch)
                    for name in step_plan(config, set(self.data), self.step):
                        pass_started = time.perf_counter()
                        terms = self._run_pass(name, batch if name == "lr" else next(side[name]))
                        log.record(self.step, epoch, name, terms, time.perf_counter() - pass_started)
                        last[name] = terms["total"]
                    self.step += 1
                    seconds.append(time.perf_counter() - started)
                    log.step_done(self.step, last)
                    if (
                        options.diagnose_every
                        and self.step % options.diagnose_every == 0
                        and self.options.arch == "bimatting"
                    ):
                        log.note(f"step {self.step}: {self._sign_health(batch)}")
                    if options.checkpoint_every and self.step % options.checkpoint_every == 0:
                        self.save(self.out / f"step-{self.step:07d}.pth", epoch)
                    if self.step >= total:
                        break
                if self.step % steps_per_epoch == 0:
                    self.save(self.out / f"epoch-{epoch}.pth", epoch)
        finally:
            log.close()
        return self._finish(seconds, total)

    def _sign_health(self, batch):
        src = passes.composite({k: v.to(self.rt.device) for k, v in batch.items()})["src"]
        report = self.health.measure(lambda: self.model(src))
        return summarize(report, self.health.latent_flips(self.step))

    def _finish(self, seconds, total):
        prints = self.rt.all_gather(fingerprint(self.model))
        summary = {
            "arch": self.options.arch,
            "stage": self.options.stage,
            "steps": self.step,
            "planned_steps": total,
            "world_size": self.rt.world_size,
            "rank_fingerprints": prints,
            "seconds_per_step": (sum(seconds) / len(seconds)) if seconds else None,
            "passes": sorted(self.data),
            "out": str(self.out),
        }
        if self.rt.main:
            write_summary(self.out / "summary.json", summary)
        self.rt.close()
        summary["rank"] = self.rt.rank
        if len(set(prints)) != 1:
            raise RuntimeFailure(f"ranks ended with different weights ({prints}); distributed training is broken")
        return summary


def _plain_options(options):
    return {
        key: (str(value) if isinstance(value, Path) else list(map(str, value)) if isinstance(value, tuple) else value)
        for key, value in dataclasses.asdict(options).items()
    }


def train(options):
    """Run one stage; returns the summary dict (also written to <out>/stage<N>/summary.json)."""
    return Trainer(options).run()
