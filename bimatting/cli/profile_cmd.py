"""`bimatting profile`: parameters, storage and OPs of a model (a thin wrapper of bimatting.models.profile)."""

import json

import click

from bimatting.cli.parsing import parse_mask_density, parse_resolution


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=True))
@click.option(
    "--arch",
    type=click.Choice(["rvm", "bimatting"]),
    default=None,
    help="Architecture to profile (default: the checkpoint's, else bimatting).",
)
@click.option("--resolution", default="512x288", show_default=True, metavar="WxH", help="Input size, width x height.")
@click.option(
    "--downsample-ratio",
    type=float,
    default=1.0,
    show_default=True,
    help="RVM's s: the network runs at resolution * s (the refiner upsamples back).",
)
@click.option(
    "--mask-density",
    default="auto",
    show_default=True,
    metavar="auto|FLOAT",
    help="Fraction of SAB-masked positions; auto measures it by running the model.",
)
@click.option(
    "--frames",
    "frames_source",
    type=click.Path(),
    default=None,
    help="Video or image folder to measure the mask on (default: packaged sample clip).",
)
@click.option(
    "--measure-frames",
    type=click.IntRange(1),
    default=12,
    show_default=True,
    help="Frames to run when measuring the mask density.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def profile(checkpoint, arch, resolution, downsample_ratio, mask_density, frames_source, measure_frames, as_json):
    """Count parameters, storage and OPs (dense and SAB-sparse) of a model, with ratios vs RVM.

    Architecture counts need no weights: without CHECKPOINT the packaged default model is used,
    or an untrained network when none is packaged (the report says which).

    \b
    Examples:
      bimatting profile                                   # default BiMatting at 512x288
      bimatting profile --arch rvm --json
      bimatting profile --resolution 1920x1080 --downsample-ratio 0.25
      bimatting profile epoch-27.pth --mask-density 0.3
      bimatting profile --frames clip.mp4                 # measure the mask on your footage
    """
    from bimatting.models.profile import format_report, profile as run_profile

    report = run_profile(
        checkpoint,
        arch,
        parse_resolution(resolution),
        downsample_ratio,
        mask_density=parse_mask_density(mask_density),
        frames=measure_frames,
        frames_source=frames_source,
        progress=True,
    )
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
