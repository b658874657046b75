"""`bimatting export`: a model -> ONNX with packed binary ops (a thin wrapper of bimatting.export)."""

import json

import click


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="The .onnx file to write.")
@click.option(
    "--arch",
    default=None,
    metavar="bimatting|rvm",
    help="Architecture (default: the checkpoint's, else bimatting); rvm exports "
    "full-precision RVM with standard ops only.",
)
@click.option(
    "--opset", type=int, default=18, show_default=True, help="Standard ONNX opset (bimatting needs >= 18, rvm >= 12)."
)
@click.option(
    "--static",
    "static_size",
    default=None,
    metavar="WxH",
    help="Fix the input size (batch 1) and bake the ratio in; drops the downsample_ratio input.",
)
@click.option(
    "--downsample-ratio",
    type=float,
    default=None,
    metavar="S",
    help="Ratio baked in with --static (default 1); with --verify alone, the ratio to test.",
)
@click.option(
    "--verify", is_flag=True, help="Run the file in onnxruntime against PyTorch on real frames; exit 1 if they differ."
)
@click.option(
    "--verify-input",
    type=click.Path(),
    default=None,
    help="Video or image folder for --verify (default: the packaged sample clip).",
)
@click.option(
    "--verify-frames",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Frames to compare with --verify (states are fed back).",
)
@click.option(
    "--exact",
    is_flag=True,
    help="With --verify: compare the runs as they are, without aligning near-tie sign decisions.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def export(
    checkpoint, output, arch, opset, static_size, downsample_ratio, verify, verify_input, verify_frames, exact, as_json
):
    """Export a model to ONNX: binary convs as packed ai.bimatting ops, RVM's graph interface.

    Without CHECKPOINT: the packaged default BiMatting (or, with --arch rvm, RVM's official
    weights). Inputs src, r1i..r4i, downsample_ratio; outputs fgr, pha, r1o..r4o, as RVM's ONNX.

    \b
    Examples:
      bimatting export -o bimatting.onnx                       # packaged default model
      bimatting export epoch-27.pth -o bim.onnx --verify        # check against PyTorch
      bimatting export -o bim-hd.onnx --static 1920x1080 --downsample-ratio 0.25
      bimatting export --arch rvm -o rvm.onnx --verify --verify-input clip.mp4
      bimatting export -o b.onnx --verify --exact --verify-input clip.mp4 --json   # where runtimes part
    """
    from bimatting.export.exporter import export as run_export, parse_size

    size = parse_size(static_size) if static_size is not None else None
    report = run_export(
        checkpoint,
        output,
        arch=arch,
        opset=opset,
        static_size=size,
        downsample_ratio=downsample_ratio,
        verify=verify,
        verify_input=verify_input,
        verify_frames=verify_frames,
        align_ties=not exact,
        progress=not as_json,
    )
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))


def format_report(report):
    from bimatting.export.verify import PIXEL_DIFF

    lines = [
        f"wrote {report['output']}: {report['bytes']:,} bytes, {report['arch']}, opset {report['opset']}, "
        f"{report['nodes']} nodes ({report['binary_convs']} binary convs, {report['float_convs']} float convs, "
        f"{report['packed_weight_bytes']:,} bytes of packed weights)"
    ]
    check = report.get("verify")
    if check:
        worst = check["worst"]
        lines.append(
            f"verify: {check['frames']} frames {check['size'][0]}x{check['size'][1]} at s="
            f"{check['downsample_ratio']:g}: pha max {worst['pha_max']:.2e} mean {worst['pha_mean']:.2e}, "
            f"fgr max {worst['fgr_max']:.2e} mean {worst['fgr_mean']:.2e}; "
            f"{check['aligned_near_ties']} near-tie sign decisions aligned, "
            f"{check['decisions_flipped']} flipped; {'PASS' if check['passed'] else 'FAIL'}"
        )
        first = check.get("first_parting")
        if first:
            lines.append(
                f"verify: the runtimes first part at frame {first['frame']}, {first['site']} "
                f"(largest |x| {first['largest_abs']:.1e}); {check['decisions_parted']} decisions differed "
                f"before alignment; pha pixels off by > {PIXEL_DIFF}: worst frame "
                f"{check['worst']['pha_pixels_over']:.2%}"
            )
    return "\n".join(lines)
