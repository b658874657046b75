"""`bimatting evaluate`: score predicted mattes against the ground truth (RVM's evaluators)."""

import json
import math
import os

import click

from bimatting.errors import InputError


def print_evaluation(result, as_json):
    if as_json:
        summary = {m: (None if math.isnan(v) else v) for m, v in result.summary.items()}  # JSON has no NaN
        click.echo(json.dumps(summary, indent=2))
        return
    frames = sum(len(c.frames) for c in result.clips)
    click.echo(f"{len(result.clips)} clips, {frames} frames ({'HR' if result.hr else 'LR'} evaluator)")
    for metric in result.metrics:
        click.echo(f"  {metric:10s} {result.summary[metric]:10.4f}")


@click.command("evaluate")
@click.argument("footage", nargs=-1)
@click.option(
    "--pred",
    "pred_dir",
    type=click.Path(file_okay=False),
    help="Prediction tree: <pred>/<subset>/<clip>/{pha,fgr}/NNNN.png",
)
@click.option(
    "--true",
    "true_dir",
    type=click.Path(file_okay=False),
    help="Ground-truth tree in the same layout (e.g. videomatte_512x288).",
)
@click.option(
    "--against",
    help="Score --checkpoint against this teacher ('rvm', or a checkpoint) on FOOTAGE "
    "(videos, frame folders, CLIP@START:STOP): no true alpha needed.",
)
@click.option("--checkpoint", default="default", show_default=True, help="With --against: the model to score.")
@click.option(
    "--long-side",
    type=click.IntRange(64),
    default=512,
    show_default=True,
    help="With --against: frames resized to this long side (512: 512x288 for 16:9).",
)
@click.option(
    "--frames", "max_frames", type=click.IntRange(1), help="With --against: at most this many frames per clip."
)
@click.option(
    "--downsample-ratio",
    type=click.FloatRange(0.05, 1.0),
    default=1.0,
    show_default=True,
    help="With --against: both networks at this ratio (the refiner runs below 1).",
)
@click.option(
    "--preview",
    type=click.Path(dir_okay=False),
    help="With --against: write frame | teacher alpha | "
    "model alpha | difference of each clip's middle frame to this PNG.",
)
@click.option("--hr", is_flag=True, help="HR evaluator: no Conn, no fgr_mad, Grad without min-max normalisation.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write per-clip means to this CSV file.")
@click.option(
    "--workers", type=int, default=min(4, os.cpu_count() or 1), show_default=True, help="Clips scored in parallel."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def evaluate(
    footage,
    pred_dir,
    true_dir,
    against,
    checkpoint,
    long_side,
    max_frames,
    downsample_ratio,
    preview,
    hr,
    csv_path,
    workers,
    as_json,
):
    """Score predicted mattes against the ground truth, exactly as RVM's evaluators; or, with
    --against, a model against a teacher on your own unlabelled footage.

    Metrics: pha_mad, pha_mse (x1e3), pha_grad, pha_conn (/1e3), pha_dtssd (x1e2), fgr_mad,
    fgr_mse (x1e3, where the true alpha > 0). Each metric is averaged per frame index over all
    clips, then over frame indices. Frames must match the truth's names one to one.

    \b
    Examples:
      bimatting evaluate --pred pred/ --true videomatte_512x288/ --json
      bimatting evaluate --pred pred_hd/ --true videomatte_1920x1080/ --hr --csv clips.csv
      bimatting evaluate --against rvm street.mp4 office/frames --json
      bimatting evaluate --against rvm clip.mp4@0:120 --checkpoint run/bimatting_default.npz --preview p.png

    With --against: per clip, pha mean |diff| (all pixels), fgr mean |diff| (where the teacher's
    alpha > 0) and IoU of alpha > 0.5, with both networks' recurrent states carried.
    """
    if against:
        if not footage:
            raise InputError("--against needs FOOTAGE: videos, frame folders or CLIP@START:STOP")
        return _evaluate_against(
            footage, against, checkpoint, long_side, max_frames, downsample_ratio, preview, as_json
        )
    if footage or not pred_dir or not true_dir:
        raise InputError("give --pred and --true (scoring against true alpha), or --against rvm FOOTAGE")
    from bimatting.eval.evaluate import evaluate as run_evaluation

    result = run_evaluation(pred_dir, true_dir, hr=hr, workers=max(1, workers))
    if csv_path:
        result.write_csv(csv_path)
    print_evaluation(result, as_json)


def _evaluate_against(footage, against, checkpoint, long_side, max_frames, downsample_ratio, preview, as_json):
    from bimatting.eval.against import evaluate_against, write_previews

    figures, previews = evaluate_against(
        checkpoint,
        against,
        footage,
        long_side=long_side,
        frames=max_frames,
        downsample_ratio=downsample_ratio,
        progress=not as_json,
    )
    if preview:
        write_previews(preview, previews)
    if as_json:
        click.echo(json.dumps({"model": checkpoint, "teacher": against, **figures}, indent=2))
        return
    click.echo(f"{checkpoint} against {against}, long side {long_side}, s = {downsample_ratio}:")
    click.echo(f"  {'clip':48s} {'frames':>6s} {'pha MAD':>9s} {'fgr MAD':>9s} {'IoU':>6s}")
    for clip in figures["clips"]:
        click.echo(
            f"  {clip['clip'][:48]:48s} {clip['frames']:6d} {clip['pha_mad'] * 1e3:7.1f}e-3 "
            f"{clip['fgr_mad'] * 1e3:7.1f}e-3 {clip['iou']:6.3f}"
        )
    click.echo(
        f"  {'mean':48s} {'':6s} {figures['pha_mad_mean'] * 1e3:7.1f}e-3 "
        f"{figures['fgr_mad_mean'] * 1e3:7.1f}e-3 {figures['iou_mean']:6.3f}"
    )
