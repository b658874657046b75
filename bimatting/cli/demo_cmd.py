"""`bimatting demo`: the whole chain on the packaged model and footage (a thin wrapper of bimatting.cli.demo_chain)."""

import json

import click

from bimatting.errors import RuntimeFailure


@click.command()
@click.option(
    "--workdir",
    default="bimatting-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the sample clip, ONNX, artifacts, report images and videos (created if missing).",
)
@click.option("--quiet", is_flag=True, help="No progress bars (step lines and the table still print).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON instead of the table.")
def demo(workdir, quiet, as_json):
    """Run the whole toolchain on the packaged default model and the packaged sample clip.

    profile -> export -> compile (host, and rpi4 cross-compiled) -> bench on this CPU with
    verification (and the rpi4 artifact on the emulated board when one is set up) -> matte the
    sample clip. Ends with a table (sizes, OPs ratio, latency, verification) and the paths of
    the artifacts, report images and output videos. Takes a few minutes on two cores.

    \b
    Examples:
      bimatting demo
      bimatting demo --workdir /tmp/demo --json
    """
    from bimatting.cli.demo_chain import failed_checks, format_report, run_demo

    echo = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    report = run_demo(workdir, progress=not quiet, echo=echo)
    click.echo(json.dumps(report, indent=2, default=str) if as_json else "\n" + format_report(report))
    failed = failed_checks(report)
    if failed:
        raise RuntimeFailure(
            f"verification failed on {', '.join(failed)}: the compiled model's alpha is "
            "outside the tolerance of onnxruntime's (see the table)"
        )
