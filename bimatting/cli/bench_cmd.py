"""`bimatting bench`: latency and output verification of an artifact on a board (wraps deploy.device.bench)."""

import json

import click

from bimatting.errors import RuntimeFailure


@click.command()
@click.argument("artifact", type=click.Path())
@click.option(
    "--rpc",
    "rpc_address",
    default=None,
    metavar="HOST:PORT",
    help="A board's TVM RPC server (`python -m tvm.exec.rpc_server`, `bimatting device emulate`).",
)
@click.option("--tracker", default=None, metavar="HOST:PORT", help="A TVM RPC tracker to request a board from.")
@click.option("--key", default=None, help="With --tracker: the key the board registered with (e.g. rpi4).")
@click.option("--frames", type=int, default=24, show_default=True, help="Recurrent frames to measure.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Frames run first, not measured.")
@click.option(
    "--input",
    "input_path",
    default=None,
    metavar="VIDEO|FOLDER",
    help="Footage to run (resized to the artifact's input size) [default: the packaged sample clip].",
)
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Compare pha/fgr with onnxruntime on the source ONNX (exit 1 beyond tolerance).",
)
@click.option(
    "--reference",
    default=None,
    type=click.Path(),
    metavar="MODEL.onnx",
    help="The ONNX file the artifact was compiled from [default: the file named in the artifact, next to it].",
)
@click.option(
    "--timeout",
    type=float,
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest a board may take for one step (loading, one frame); 0: no limit.",
)
@click.option(
    "--connect-timeout",
    type=float,
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Give up on an unreachable or silent server after this long.",
)
@click.option(
    "--report",
    "report_dir",
    default=None,
    type=click.Path(),
    metavar="DIR",
    help="Write bench.json, latency.png and alpha_preview.png into DIR.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench(
    artifact,
    rpc_address,
    tracker,
    key,
    frames,
    warmup,
    input_path,
    verify,
    reference,
    timeout,
    connect_timeout,
    report_dir,
    quiet,
    as_json,
):
    """Run ARTIFACT frame by frame on a board: latency per frame, FPS, and its alpha checked
    against onnxruntime on the same frames (exit 1 when they differ beyond 1e-4 mean / 1e-2 max).

    Without --rpc or --tracker it runs on this machine. The artifact's architecture is checked
    against the board's before anything runs. Latency is timed on the board's clock; round
    trip (with transfers) is reported beside it. A board that fails mid-run keeps the frames
    measured so far in the report.

    \b
    Examples:
      bimatting bench bimatting-rpi4.tar --rpc 192.168.1.20:9090
      bimatting bench bimatting-rpi4.tar --tracker 127.0.0.1:9190 --key rpi4 --frames 100 --report out/
      bimatting bench host.tar --input clip.mp4 --reference bimatting.onnx --json
      bimatting device emulate --target rpi4 --port 9091 &   # an emulated board (correctness only)
      bimatting bench bimatting-rpi4.tar --rpc 127.0.0.1:9091 --frames 4
    """
    from bimatting.deploy.device.bench import bench as run_bench

    try:
        result = run_bench(
            artifact,
            rpc=rpc_address,
            tracker=tracker,
            key=key,
            frames=frames,
            warmup=warmup,
            input_path=input_path,
            verify=verify,
            reference=reference,
            report_dir=report_dir,
            timeout=timeout or None,
            connect_timeout=connect_timeout,
            progress=not (quiet or as_json),
        )
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)  # (click would say "Aborted!" and exit 1)
        click.get_current_context().exit(130)
    except RuntimeFailure as failure:
        partial = getattr(failure, "result", None)
        if partial is not None:
            click.echo(json.dumps(partial, indent=2) if as_json else format_result(partial))
        raise
    click.echo(json.dumps(result, indent=2) if as_json else format_result(result))
    check = result["verify"]
    if check.get("passed") is False:
        raise RuntimeFailure(
            f"verification failed: pha max |diff| {check['pha_max_abs']:.2e}, mean "
            f"{check['pha_mean_abs']:.2e} (tolerance max {check['tolerance']['max']:g}, mean "
            f"{check['tolerance']['mean']:g})"
        )


def format_result(result):
    device, target, lat = result["device"], result["target"], result["latency_ms"]
    where = (
        "this machine"
        if device["kind"] == "local"
        else device["address"] + (f" key {device['key']}" if device.get("key") else "")
    )
    lines = [
        f"device   {where} ({device.get('isa') or 'unknown ISA'}); artifact for {target['name']} ({target['isa']})"
    ]
    if lat["mean"] is not None:
        trip = result["roundtrip_ms"]
        lines.append(
            f"latency  {result['frames']} frames: mean {lat['mean']:.2f} ms, p50 {lat['p50']:.2f}, "
            f"p90 {lat['p90']:.2f}, min {lat['min']:.2f} ({result['fps']:.2f} FPS); "
            f"round trip mean {trip['mean']:.2f} ms"
        )
    groups = result.get("op_groups_ms")
    if groups:
        from bimatting.deploy.device.bench import GROUP_NAMES

        parts = ", ".join(f"{name.replace('_', ' ')} {groups[name]:.2f}" for name in GROUP_NAMES)
        lines.append(f"groups   ms per frame: {parts}")
    check = result["verify"]
    if check.get("skipped"):
        lines.append("verify   skipped (--no-verify)")
    elif check.get("pha_max_abs") is not None:
        lines.append(
            f"verify   {check['frames']} frames vs onnxruntime: pha max {check['pha_max_abs']:.2e}, "
            f"mean {check['pha_mean_abs']:.2e} (MAD x1e3 {check['mad_x1e3']:.4f}); "
            f"{'PASS' if check['passed'] else 'FAIL'}"
        )
    if result.get("error"):
        lines.append(f"error    {result['error']}")
    if result.get("report"):
        lines.append(f"report   {', '.join(result['report'].values())}")
    return "\n".join(lines)
