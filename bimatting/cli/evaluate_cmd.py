"""`bimatting evaluate`: score predicted mattes against the ground truth (RVM's evaluators)."""
import json
import math
import os

import click


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
@click.option("--pred", "pred_dir", required=True, type=click.Path(file_okay=False),
              help="Prediction tree: <pred>/<subset>/<clip>/{pha,fgr}/NNNN.png")
@click.option("--true", "true_dir", required=True, type=click.Path(file_okay=False),
              help="Ground-truth tree in the same layout (e.g. videomatte_512x288).")
@click.option("--hr", is_flag=True, help="HR evaluator: no Conn, no fgr_mad, Grad without min-max normalisation.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write per-clip means to this CSV file.")
@click.option("--workers", type=int, default=min(4, os.cpu_count() or 1), show_default=True,
              help="Clips scored in parallel.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def evaluate(pred_dir, true_dir, hr, csv_path, workers, as_json):
    """Score predicted mattes against the ground truth, exactly as RVM's evaluators.

    Metrics: pha_mad, pha_mse (x1e3), pha_grad, pha_conn (/1e3), pha_dtssd (x1e2), fgr_mad,
    fgr_mse (x1e3, where the true alpha > 0). Each metric is averaged per frame index over all
    clips, then over frame indices. Frames must match the truth's names one to one.

    \b
    Examples:
      bimatting evaluate --pred pred/ --true videomatte_512x288/ --json
      bimatting evaluate --pred pred_hd/ --true videomatte_1920x1080/ --hr --csv clips.csv
    """
    from bimatting.eval.evaluate import evaluate as run_evaluation

    result = run_evaluation(pred_dir, true_dir, hr=hr, workers=max(1, workers))
    if csv_path:
        result.write_csv(csv_path)
    print_evaluation(result, as_json)
