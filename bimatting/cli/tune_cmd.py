"""`bimatting tune`: MetaSchedule tuning of a model's kernels on a board (wraps deploy.tuning.session)."""

import json

import click

from bimatting.cli.parsing import parse_resolution


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--target", "target_name", required=True, metavar="NAME", help="Board to tune for (see `bimatting targets`)."
)
@click.option("--rpc", "rpc_address", default=None, metavar="HOST:PORT", help="Measure on a board's TVM RPC server.")
@click.option(
    "--tracker", default=None, metavar="HOST:PORT", help="Measure on boards requested from a TVM RPC tracker."
)
@click.option("--key", default=None, help="With --tracker: the boards' key (e.g. rpi4).")
@click.option("--local", is_flag=True, help="Measure on this machine (target host).")
@click.option("--trials", type=int, required=True, help="Candidates to measure in this run (all kernels together).")
@click.option(
    "-o",
    "--output",
    "database",
    required=True,
    type=click.Path(),
    help="Tuning database folder; an existing one (same model, target, resolution) is resumed.",
)
@click.option("--resolution", default=None, metavar="WxH", help="Input size, as given to `bimatting compile`.")
@click.option("--downsample-ratio", type=float, default=None, help="RVM's s, as given to `bimatting compile`.")
@click.option(
    "--kernels",
    type=click.Choice(["binary", "float", "all"]),
    default="all",
    show_default=True,
    help="Which kernels to tune: binary convs, float convs or both.",
)
@click.option(
    "--timeout",
    type=float,
    default=120.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest one measurement may take on the board.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def tune(
    model,
    target_name,
    rpc_address,
    tracker,
    key,
    local,
    trials,
    database,
    resolution,
    downsample_ratio,
    kernels,
    timeout,
    as_json,
):
    """Tune the kernels of MODEL (an ONNX file) with MetaSchedule, timing every candidate on the
    board; `bimatting compile --tuning-db DB` then uses the fastest schedule of each kernel (the
    hand-written one is measured too, so tuning never makes a kernel slower).

    Candidates are cross-compiled here and uploaded to the board. The database is saved after
    every measured batch: Ctrl-C keeps what was measured, and a second run with the same -o adds
    trials to it.

    \b
    Examples:
      bimatting tune bimatting.onnx --target rpi4 --rpc 192.168.1.20:9090 --trials 200 -o rpi4.db
      bimatting tune bimatting.onnx --target rpi4 --tracker 127.0.0.1:9190 --key rpi4 --trials 64 -o rpi4.db
      bimatting tune bimatting.onnx --target host --local --trials 32 --kernels binary -o host.db
      bimatting compile bimatting.onnx --target rpi4 --tuning-db rpi4.db -o bimatting-rpi4.tar
    """
    from bimatting.deploy.tuning.session import tune as run_tune

    size = parse_resolution(resolution) if resolution else None
    try:
        summary = run_tune(
            model,
            target_name,
            database,
            trials=trials,
            rpc=rpc_address,
            tracker=tracker,
            key=key,
            local=local,
            resolution=size,
            downsample_ratio=downsample_ratio,
            kernels=kernels,
            timeout=timeout,
            progress=not as_json,
        )
    except KeyboardInterrupt:
        # click would print "Aborted!" and exit 1; say what was kept and exit as interrupted programs do.
        click.echo(f"Interrupted: {database} keeps the batches measured before Ctrl-C.", err=True)
        click.get_current_context().exit(130)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(
        f"measured {summary['trials']} candidates ({summary['failed']} failed) over {summary['tasks']} kernels; "
        f"{summary['total_trials']} in {summary['database']} so far"
    )
    for task in summary["tuned"]:
        base, best = task.get("baseline_ms"), task.get("best_ms")
        gain = f"  x{base / best:.2f}" if base and best else ""
        click.echo(
            f"  {task['name']:<24} {task['kind']:<6} uses {task['uses']:<2} hand-written "
            f"{_ms(base)}  best {_ms(best)}{gain}"
        )


def _ms(value):
    return f"{value:8.3f} ms" if value is not None else "       - ms"
