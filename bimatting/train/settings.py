"""The distillation's settings and their defaults, written once (torch-free, so the CLI reads its
defaults from here without importing torch).

    Recipe          the binary-network training recipe (what each field does: bimatting.train.recipe)
    DistillOptions  one distillation run: data, batches, evaluation, the recipe
                    (how they are used: bimatting.train.distill and bimatting.train.bank)
"""

import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Recipe:
    latent_lr: float = 5e-3
    float_lr: float = 5e-4
    latent_init: float = 0.0
    threshold_init: bool = True
    binary_weights_from: int = 0
    weight_decay_step1: float = 1e-5
    feature_weight: float = 0.0
    attention_weight: float = 0.0
    adapter_weight: float = 0.0
    heads_from_teacher: bool = False
    ste_window: str = "fixed"  # "spread": each sign's straight-through window scaled to its input's spread
    laplacian_from: int = -1
    coherence_from: int = -1
    warmup_steps: int = 100
    total_steps: int = 10000
    final_lr_fraction: float = 0.05

    def as_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    @classmethod
    def for_stage(cls, config, total_steps, **changes):
        """`bimatting train`'s default for an RVM stage: the stage's constant per-module rates for
        the float parameters, latent weights at 10x the backbone's rate, thresholds from data."""
        values = dict(
            latent_lr=10 * config.lr["backbone"], warmup_steps=1, total_steps=max(total_steps, 1), final_lr_fraction=1.0
        )
        values.update(changes)
        return cls(**values)

    @classmethod
    def plain(cls, lr, total_steps):
        """No recipe pieces: one Adam rate, default init, zero thresholds, binary from the start."""
        return cls(
            latent_lr=lr,
            float_lr=lr,
            threshold_init=False,
            feature_weight=0.0,
            heads_from_teacher=False,
            warmup_steps=1,
            total_steps=total_steps,
            final_lr_fraction=1.0,
        )


# 2: recomposites keep the teacher's matte of the people in the background footage in the target
# 3: crops zoom out past the frame, stills weigh 2 frames, recomposite backgrounds are the least
#    covered of 3 views (version 2's batches were 59 % foreground, held-out footage is ~30 %: the
#    model learnt to call everything foreground)
DATA_VERSION = 3


@dataclasses.dataclass
class DistillOptions:
    footage: tuple
    out: Path
    heldout: tuple = ()
    excluded: tuple = ()  # footage kept out of training without being scored
    images: tuple = ()
    teacher: str = "rvm"
    stop_at: int = None  # stop this invocation at this step (default: recipe.total_steps)
    sizes: tuple = ((128, 128), (160, 96))  # crop W, H, cycled step by step
    data: str = "crops"  # "crops": plain crops at the footage's scale; "views": bimatting.train.bank
    batch: int = 4
    frames: int = 2
    zoom: tuple = (0.5, 1.6)  # crop scale range, as a fraction of the frame-covering scale
    still_weight: int = 2  # a still is drawn as often as a clip of this many frames (views)
    still_share: float = 0.0  # crops: the share of samples taken from the stills (--images)
    colour_share: float = 0.0  # crops: the share of samples whose colours change (bank.recolour)
    crop_scale: tuple = (1.0, 1.0)  # crops: footage resized by a factor from this range before cropping
    recomposite_share: float = 0.0  # crops: the share of samples whose teacher layer goes over other footage
    precision: str = "fp32"  # "bf16": the student's forward and losses under bfloat16 autocast (CPU)
    compiled: bool = False  # the student's forward and loss through torch.compile (minutes at start)
    background_tries: int = 3  # recomposites go over the least covered of this many views
    hr_every: int = 0
    hr_ratio: float = 0.5
    mix: tuple = (0.6, 0.25, 0.15)  # footage, recomposite, procedural
    procedural: int = 24
    max_frames: int = 150
    short_side: int = 288
    eval_every: int = 250
    eval_frames: int = 32
    eval_long_side: int = 512
    save_every: int = 100
    diagnose_every: int = 500
    ema_decay: float = 0.998  # weight average per step (0: none)
    seed: int = 0
    threads: int = None
    init: str = None  # start from these weights (the recipe's inits are then skipped)
    branch_from: str = None  # start from another run's full state (weights, average, Adam, step)
    resume: bool = False
    progress: bool = True
    recipe: Recipe = Recipe()

    def identity(self):
        """What a resumed run must share with the run it continues."""
        keep = (
            "sizes",
            "data",
            "ema_decay",
            "batch",
            "frames",
            "zoom",
            "still_weight",
            "still_share",
            "colour_share",
            "crop_scale",
            "recomposite_share",
            "precision",
            "compiled",
            "background_tries",
            "hr_every",
            "hr_ratio",
            "mix",
            "procedural",
            "max_frames",
            "short_side",
            "seed",
        )
        recipe = {f"recipe.{k}": v for k, v in self.recipe.as_dict().items()}
        data = {"data_version": DATA_VERSION}
        return json.loads(json.dumps({**{k: getattr(self, k) for k in keep}, **recipe, **data}))


# Identity fields added after runs had been saved without them; such a run had them off, at the
# default. A new option that changes what a run computes is added to identity() and here.
ADDED_SINCE_FIRST_RUNS = ("still_share", "colour_share", "crop_scale", "recomposite_share", "precision", "compiled")


def with_new_defaults(identity):
    """A saved run identity with the recipe fields and ADDED_SINCE_FIRST_RUNS added since it was
    saved, at their defaults (a field that did not exist was, in effect, off)."""
    defaults = {f"recipe.{k}": v for k, v in Recipe().as_dict().items()}
    defaults.update({k: getattr(DistillOptions, k) for k in ADDED_SINCE_FIRST_RUNS})
    defaults = json.loads(json.dumps(defaults))
    return {**{k: v for k, v in defaults.items() if k not in identity}, **identity}
