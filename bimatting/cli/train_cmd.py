"""`bimatting train`: one of RVM's four training stages, for BiMatting or RVM."""

import json
from pathlib import Path

import click

from bimatting.cli.recipe_options import recipe_options


@click.command("train")
@click.option("--stage", type=click.IntRange(1, 4), required=True, help="RVM training stage (1-4).")
@click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    required=True,
    help="RVM's training layout, or an evaluation-layout set (<set>/videomatte_*/<clip>/{com,fgr,pha}).",
)
@click.option("--arch", type=click.Choice(["bimatting", "rvm"]), default="bimatting", show_default=True)
@click.option("--resume", help="Checkpoint: same stage = exact resume; else its weights start this stage.")
@click.option("--teacher", help="Distil from this network too ('rvm' = official RVM weights, or a checkpoint).")
@click.option(
    "--unlabelled",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Footage without alpha (frame folders, videos, images, or folders of them); needs --teacher. Repeatable.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("train_out"),
    show_default=True,
    help="Output folder; checkpoints and logs go to <out>/stage<N>/.",
)
@click.option("--steps", type=click.IntRange(1), help="Stop at this global step (default: the stage's epochs).")
@click.option("--epochs", type=click.IntRange(1), help="Override the stage's epoch count.")
@click.option(
    "--checkpoint-every",
    type=click.IntRange(0),
    default=1000,
    show_default=True,
    help="Save every K steps (0: only per epoch).",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=1, show_default=True, help="Clips per GPU/process.")
@click.option("--seq-lr", type=click.IntRange(1), help="Override T of the low-resolution pass.")
@click.option("--seq-hr", type=click.IntRange(0), help="Override T of the high-resolution pass (0 = none).")
@click.option("--size-lr", type=click.IntRange(16), help="Override the LR crop size (512).")
@click.option("--size-hr", type=click.IntRange(16), help="Override the HR crop size (2048).")
@click.option("--num-workers", type=click.IntRange(0), default=0, show_default=True, help="DataLoader workers.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["fp16", "bf16", "fp32"]),
    default="fp16",
    show_default=True,
    help="AMP on CUDA (CPU always runs fp32).",
)
@click.option(
    "--distill-weight",
    type=float,
    default=0.5,
    show_default=True,
    help="Weight of the teacher terms on labelled passes.",
)
@click.option(
    "--unlabelled-weight",
    type=float,
    default=1.0,
    show_default=True,
    help="Weight of the teacher terms on unlabelled passes.",
)
@click.option("--deterministic", is_flag=True, help="Deterministic CUDA kernels (exact resume on GPU).")
@click.option("--cache-frames", is_flag=True, help="Keep decoded evaluation-layout frames in memory.")
@click.option(
    "--latent-lr", type=float, help="Adam rate of the latent binary weights (default: 10x the stage's backbone rate)."
)
@recipe_options(teacher_note="With --teacher: ")
@click.option(
    "--diagnose-every",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Steps between sign-health lines (STE window, near-zero decisions, dead branches).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
def train(
    stage,
    data_root,
    arch,
    resume,
    teacher,
    unlabelled,
    out,
    steps,
    epochs,
    checkpoint_every,
    device,
    batch_size,
    seq_lr,
    seq_hr,
    size_lr,
    size_hr,
    num_workers,
    seed,
    precision,
    distill_weight,
    unlabelled_weight,
    deterministic,
    cache_frames,
    latent_lr,
    threshold_init,
    binary_weights_from,
    feature_weight,
    heads_from_teacher,
    diagnose_every,
    no_progress,
    as_json,
):
    """Train one of RVM's four stages (losses, epochs, T and per-module lrs as RVM/BiMatting).

    Multi-GPU / multi-node: launch with torchrun (one process per GPU, DDP, NCCL; gloo on CPU).
    Checkpoints hold the optimizer and RNG states: --resume continues bit-identically.

    \b
    Examples:
      bimatting train --stage 1 --data-root ../matting-data --device cuda
      bimatting train --stage 2 --data-root ../matting-data --resume train_out/stage1/epoch-19.pth
      bimatting data synth --out synth && bimatting train --stage 1 --data-root synth --steps 100
      bimatting train --stage 1 --data-root synth --teacher rvm --unlabelled footage/
      torchrun --nproc_per_node 4 -m bimatting train --stage 1 --data-root ../matting-data --device cuda
    """
    from bimatting.train.trainer import TrainOptions, train as run_training

    changes = dict(
        threshold_init=threshold_init,
        binary_weights_from=binary_weights_from,
        feature_weight=feature_weight,
        heads_from_teacher=heads_from_teacher,
    )
    if latent_lr is not None:
        changes["latent_lr"] = latent_lr

    options = TrainOptions(
        stage=stage,
        data_root=data_root,
        arch=arch,
        out=out,
        resume=resume,
        teacher=teacher,
        unlabelled=tuple(unlabelled),
        steps=steps,
        epochs=epochs,
        checkpoint_every=checkpoint_every,
        device=device,
        batch_size=batch_size,
        seq_lr=seq_lr,
        seq_hr=seq_hr,
        size_lr=size_lr,
        size_hr=size_hr,
        num_workers=num_workers,
        seed=seed,
        precision=precision,
        distill_weight=distill_weight,
        unlabelled_weight=unlabelled_weight,
        deterministic=deterministic,
        progress=not no_progress and not as_json,
        cache_frames=cache_frames,
        recipe_changes=changes,
        diagnose_every=diagnose_every,
    )
    summary = run_training(options)
    if summary.pop("rank") != 0:  # torchrun: one report, from rank 0
        return
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        per_step = summary["seconds_per_step"]
        click.echo(
            f"stage {stage}: {summary['steps']} steps"
            + (f", {per_step:.3f} s/step" if per_step else "")
            + f"; checkpoints in {summary['out']}"
        )
