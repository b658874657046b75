"""`bimatting distill`: train BiMatting from a teacher on unlabelled footage (the default model's recipe)."""

import json
from pathlib import Path

import click

from bimatting.cli.recipe_options import recipe_options
from bimatting.errors import InputError
from bimatting.train.settings import DistillOptions as RUN, Recipe as RECIPE


def _size(text):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size '{text}' is not WxH (e.g. 128x128)") from None
    if w % 16 or h % 16 or w < 64 or h < 64:
        raise InputError(f"--size {text}: both sides must be multiples of 16 and >= 64 (e.g. 128x128)")
    return w, h


def _scale_range(text):
    try:
        low, high = (float(v) for v in text.split(":")) if ":" in text else (float(text),) * 2
    except ValueError:
        raise InputError(f"--crop-scale '{text}' is not LOW:HIGH (e.g. 0.45:1)") from None
    if not 0.1 <= low <= high <= 4:
        raise InputError(f"--crop-scale {text}: need 0.1 <= LOW <= HIGH <= 4 (e.g. 0.45:1)")
    return low, high


@click.command("distill")
@click.argument("footage", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--heldout",
    multiple=True,
    help="Footage never trained on, scored against the teacher during the "
    "run: a clip, or CLIP@START:STOP for a frame range (the rest of that clip may be trained on).",
)
@click.option(
    "--images",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folders of still images of people (crops: drawn at --still-share; views: animated).",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run folder (resume state, log, curve).")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped.")
@click.option(
    "--branch-from",
    type=click.Path(exists=True, path_type=Path),
    help="Start from another run's full state (weights, average, Adam moments, step) with these "
    "settings, to compare recipes from the same step; that run is left as it is.",
)
@click.option(
    "--steps",
    "total_steps",
    type=click.IntRange(1),
    default=RECIPE.total_steps,
    show_default=True,
    help="Length of the schedule (warm-up, cosine decay).",
)
@click.option("--stop-at", type=click.IntRange(1), help="Stop this invocation at this step (resume later).")
@click.option(
    "--size",
    "sizes",
    multiple=True,
    default=tuple(f"{w}x{h}" for w, h in RUN.sizes),
    show_default=True,
    help="Training crop WxH; repeat it to cycle sizes step by step.",
)
@click.option(
    "--data",
    type=click.Choice(["crops", "views"]),
    default=RUN.data,
    show_default=True,
    help="crops: plain crops of the clips at their own scale; views: moving, zooming views with "
    "recomposites and procedural figures.",
)
@click.option(
    "--still-share",
    type=click.FloatRange(0, 1),
    default=RUN.still_share,
    show_default=True,
    help="crops: the share of samples cut from the --images stills (held still for the T frames).",
)
@click.option(
    "--colour-share",
    type=click.FloatRange(0, 1),
    default=RUN.colour_share,
    show_default=True,
    help="crops: the share of samples whose frames and target foreground change colour alike "
    "(brightness, contrast, saturation, hue, grey).",
)
@click.option(
    "--recomposite-share",
    type=click.FloatRange(0, 1),
    default=RUN.recomposite_share,
    show_default=True,
    help="crops: the share of samples whose teacher layer (fgr, pha) goes over a crop of other "
    "footage (its people kept in the target).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default=RUN.precision,
    show_default=True,
    help="bf16: the training step's convolutions and matmuls in bfloat16 (CPU autocast; weights and "
    "optimizer stay float32). Evaluation is always float32.",
)
@click.option(
    "--compile/--no-compile",
    "compiled",
    default=RUN.compiled,
    show_default=True,
    help="Run the student's forward and loss through torch.compile (fused element-wise work; "
    "with --precision bf16 2.2x the samples per CPU-second, bench/train_speed.py). Compiling "
    "takes a few CPU-minutes per crop size at each start. Runs with feature or adapter terms stay eager.",
)
@click.option(
    "--crop-scale",
    default=":".join(str(v) for v in RUN.crop_scale),
    show_default=True,
    help="crops: resize the footage by a factor drawn from LOW:HIGH before cropping (below 1: more "
    "of the room and smaller people in each crop).",
)
@click.option(
    "--ema-decay",
    type=click.FloatRange(0, 1, max_open=True),
    default=RUN.ema_decay,
    show_default=True,
    help="Per-step weight average scored beside the live weights (0 = none).",
)
@click.option(
    "--laplacian-from",
    type=click.IntRange(-1),
    default=RECIPE.laplacian_from,
    show_default=True,
    help="Step at which RVM's Laplacian term joins the L1 terms (-1 = never).",
)
@click.option(
    "--coherence-from",
    type=click.IntRange(-1),
    default=RECIPE.coherence_from,
    show_default=True,
    help="Step at which RVM's temporal-coherence terms join (-1 = never).",
)
@click.option("--batch", type=click.IntRange(1), default=RUN.batch, show_default=True, help="Clips per step.")
@click.option("--frames", type=click.IntRange(1), default=RUN.frames, show_default=True, help="Frames per clip (T).")
@click.option(
    "--latent-lr", type=float, default=RECIPE.latent_lr, show_default=True, help="Adam rate of latent binary weights."
)
@click.option(
    "--float-lr", type=float, default=RECIPE.float_lr, show_default=True, help="Adam rate of everything else."
)
@click.option(
    "--latent-init",
    type=float,
    default=RECIPE.latent_init,
    show_default=True,
    help="Latent weights start as U(0,1) x this (ReActNet: 1e-3); 0 = PyTorch's default init.",
)
@recipe_options()
@click.option(
    "--attention-weight",
    type=float,
    default=RECIPE.attention_weight,
    show_default=True,
    help="Weight of encoder attention-map matching to the teacher (0 = off).",
)
@click.option(
    "--adapter-weight",
    type=float,
    default=RECIPE.adapter_weight,
    show_default=True,
    help="Weight of the encoder's features at 1/4, 1/8, 1/16 matched to the teacher's through "
    "training-only 1x1 adapters (0 = off).",
)
@click.option(
    "--ste-window",
    type=click.Choice(["fixed", "spread"]),
    default=RECIPE.ste_window,
    show_default=True,
    help="Each sign's straight-through window: fixed |x| <= 1, or spread |x| <= max(1, the channel's "
    "std), its gradient scaled by 1 / that.",
)
@click.option("--warmup-steps", type=click.IntRange(1), default=RECIPE.warmup_steps, show_default=True)
@click.option(
    "--hr-every",
    type=click.IntRange(0),
    default=RUN.hr_every,
    show_default=True,
    help="Every N steps also a pass at --hr-ratio so the refiner trains (0 = never).",
)
@click.option(
    "--eval-every",
    type=click.IntRange(1),
    default=RUN.eval_every,
    show_default=True,
    help="Steps between held-out evaluations (they also write the packed model and the curve).",
)
@click.option(
    "--diagnose-every",
    type=click.IntRange(0),
    default=RUN.diagnose_every,
    show_default=True,
    help="Steps between sign-health lines in the log.",
)
@click.option("--threads", type=click.IntRange(1), help="torch threads (fixed, so a resumed run is bit-identical).")
@click.option("--init", help="Start from these weights instead of the recipe's initialisation.")
@click.option("--seed", type=int, default=RUN.seed, show_default=True)
@click.option(
    "--diagnose",
    is_flag=True,
    help="Only report sign health of --init (or the run's resume state) on one batch of FOOTAGE and exit.",
)
@click.option(
    "--dump-batch",
    type=click.Path(file_okay=False, path_type=Path),
    help="Only write PNG grids of the next batches (source, target pha, target fgr, foreground share "
    "per crop) to this folder and exit.",
)
@click.option("--no-progress", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary (or the --diagnose report) as JSON.")
def distill(
    footage,
    heldout,
    images,
    out,
    resume,
    branch_from,
    total_steps,
    stop_at,
    sizes,
    data,
    still_share,
    colour_share,
    crop_scale,
    recomposite_share,
    precision,
    compiled,
    ema_decay,
    laplacian_from,
    coherence_from,
    batch,
    frames,
    latent_lr,
    float_lr,
    latent_init,
    threshold_init,
    binary_weights_from,
    feature_weight,
    attention_weight,
    adapter_weight,
    ste_window,
    heads_from_teacher,
    warmup_steps,
    hr_every,
    eval_every,
    diagnose_every,
    threads,
    init,
    seed,
    diagnose,
    dump_batch,
    no_progress,
    as_json,
):
    """Distil BiMatting from RVM on unlabelled footage with the binary-network recipe.

    Targets are the teacher's mattes of the footage, trained with the L1 terms of RVM's matting
    loss (its Laplacian and coherence terms join at --laplacian-from / --coherence-from). The run
    folder keeps an exact resume state, log.csv, heldout.jsonl, health.jsonl, curve.png and the
    packed model with the best held-out figure so far (bimatting_default.npz, live weights or
    their average) with its training record. Keep the run folder outside a git checkout.

    \b
    Examples:
      bimatting distill clips/ --images photos/ --heldout clips/street --out run/ --threads 1
      bimatting distill clips/ --heldout clips/street --out run/ --resume       # continue
      bimatting distill clips/ --images photos/ --still-share 0.3 --out run-b/ --branch-from run/
      bimatting distill clips/ --out run/ --diagnose --init run/resume.pth     # sign health
      bimatting distill clips/ --out run/ --dump-batch batches/               # what a batch holds
    """
    from bimatting.train.distill import Distillation

    sizes = tuple(_size(size) for size in sizes)
    if hr_every and min(min(size) for size in sizes) * 0.5 < 64:
        raise InputError(
            f"--size {min(sizes, key=min)} is too small for the HR pass at s = 0.5 (its coarse outputs need >= 4 "
            "pixels at 1/16); use 128x128 or more, or --hr-every 0"
        )
    recipe = RECIPE(
        latent_lr=latent_lr,
        float_lr=float_lr,
        latent_init=latent_init,
        threshold_init=threshold_init,
        binary_weights_from=binary_weights_from,
        feature_weight=feature_weight,
        attention_weight=attention_weight,
        adapter_weight=adapter_weight,
        ste_window=ste_window,
        heads_from_teacher=heads_from_teacher,
        laplacian_from=laplacian_from,
        coherence_from=coherence_from,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
    )
    options = RUN(
        footage=tuple(footage),
        out=out,
        heldout=tuple(heldout),
        images=tuple(images),
        stop_at=stop_at,
        sizes=sizes,
        data=data,
        still_share=still_share,
        colour_share=colour_share,
        crop_scale=_scale_range(crop_scale),
        recomposite_share=recomposite_share,
        precision=precision,
        compiled=compiled,
        ema_decay=ema_decay,
        batch=batch,
        frames=frames,
        hr_every=hr_every,
        eval_every=eval_every,
        diagnose_every=diagnose_every,
        seed=seed,
        threads=threads,
        init=init,
        branch_from=branch_from,
        resume=resume or diagnose or bool(dump_batch),
        progress=not no_progress and not as_json,
        recipe=recipe,
    )
    run = Distillation(options)
    if dump_batch:
        written = run.dump_batches(dump_batch)
        if as_json:
            click.echo(json.dumps(written, indent=2))
        else:
            for entry in written:
                shares = ", ".join(f"{s:.0%}" for s in entry["foreground_share"])
                click.echo(f"{entry['path']}: step {entry['step']}, foreground share per crop {shares}")
        return
    if diagnose:
        report = run.diagnose_report()
        click.echo(json.dumps(report, indent=2) if as_json else report["text"])
        return
    summary = run.run()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif summary["heldout"]:
        h = summary["heldout"]
        click.echo(
            f"step {summary['steps']}: held-out pha MAD {h['pha_mad_mean'] * 1e3:.1f}e-3 "
            f"(worst clip {h['pha_mad_worst'] * 1e3:.1f}e-3), IoU {h['iou_mean']:.3f}; wrote {out}"
        )
