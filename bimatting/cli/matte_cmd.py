"""`bimatting matte`: matte a video, an image folder or a webcam (a thin wrapper of bimatting.matting.runner)."""

import json
import os
import sys

import click

from bimatting import cli
from bimatting.errors import InputError


@click.command()
@click.argument("source", metavar="INPUT")
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="OUTPUT",
    help="Video file (.mp4 .avi .mkv .mov .m4v; codec from the extension) or a folder for PNGs.",
)
@click.option(
    "--checkpoint",
    default=None,
    metavar="CKPT",
    help="Model: a .pth/.pt/.onnx file, 'rvm' or 'default' (the packaged model; the default).",
)
@click.option(
    "--artifact",
    default=None,
    metavar="ART",
    help="Run an exported .onnx (onnxruntime) or a compiled artifact (tvm) instead of a checkpoint.",
)
@click.option(
    "--backend",
    default=None,
    metavar="torch|onnxruntime|tvm",
    help="Where the network runs (default: torch for checkpoints, the artifact's kind otherwise).",
)
@click.option(
    "--output-type",
    default="composite",
    show_default=True,
    metavar="composite|alpha|foreground|all",
    help="What to write; 'all' writes the three (beside OUTPUT, or in subfolders of it).",
)
@click.option(
    "--background",
    default="green",
    show_default=True,
    metavar="green|white|COLOR|IMAGE",
    help="Composite background: a name, #RRGGBB, R,G,B or an image file.",
)
@click.option(
    "--downsample-ratio",
    default="auto",
    show_default=True,
    metavar="auto|S",
    help="RVM's s in (0, 1]; auto: long side to about 512 px, s = min(512/max(h,w), 1).",
)
@click.option(
    "--start",
    type=float,
    default=0.0,
    show_default=True,
    metavar="T",
    help="Start T seconds into the input (image folders count as 30 frames/s).",
)
@click.option("--frames", type=int, default=None, metavar="N", help="Matte at most N frames.")
@click.option("--rgba", is_flag=True, help="PNG folders: write the foreground as RGBA (alpha in the 4th channel).")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue a run stopped with Ctrl-C (same command): its partial output and state are kept.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def matte(
    source,
    output,
    checkpoint,
    artifact,
    backend,
    output_type,
    background,
    downsample_ratio,
    start,
    frames,
    rgba,
    resume,
    quiet,
    as_json,
):
    """Matte INPUT (a video file, a folder of images or a webcam index) into OUTPUT.

    The network's recurrent state is carried from frame to frame; the output keeps the input's
    frame rate and size, and appears only once complete.

    \b
    Examples:
      bimatting matte input.mp4 -o composite.mp4                   # packaged model, green screen
      bimatting matte input.mp4 -o alpha/ --output-type alpha      # 8-bit PNG mattes
      bimatting matte frames/ -o out.mp4 --checkpoint rvm --background white
      bimatting matte input.mp4 -o out.mp4 --artifact bimatting-host.tar --backend tvm
      bimatting matte input.mp4 -o out/ --output-type all --rgba --start 2 --frames 48
      bimatting matte 0 -o webcam.mp4 --frames 300                 # webcam 0, 300 frames
      bimatting matte long.mp4 -o out.mp4 --resume                 # continue after Ctrl-C
    """
    from bimatting.matting.api import matte as run_matte
    from bimatting.matting.resume import MatteInterrupted

    if checkpoint is not None and artifact is not None:
        raise InputError("give either --checkpoint or --artifact, not both")
    if artifact is not None and not str(artifact).lower().endswith(".onnx"):
        _runtime_only_tvm()
    if checkpoint is not None:
        backend = backend or "torch"  # --checkpoint is a network PyTorch runs (an .onnx read as RVM's)

    try:
        summary = run_matte(
            source,
            output,
            model=artifact or checkpoint or "default",
            backend=backend,
            output_type=output_type,
            background=background,
            downsample_ratio=downsample_ratio,
            start=start,
            frames=frames,
            rgba=rgba,
            progress=not quiet,
            resume=resume,
        )
    except MatteInterrupted as stopped:  # what was kept and how to go on, then the shell's Ctrl-C code
        click.echo(str(stopped), err=True)
        raise SystemExit(130) from None
    if "warning" in summary:
        click.echo(f"warning: {summary['warning']}", err=True)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    rate = summary["frames_per_second"]
    click.echo(
        f"matted {summary['frames']} frames of {summary['size'][0]}x{summary['size'][1]} with "
        f"{summary['model']} on {summary['backend']} (s={summary['downsample_ratio']:g})"
        + (f" at {rate:.2f} frames/s" if rate else "")
    )
    for path in summary["outputs"]:
        click.echo(f"  {path}")


def _runtime_only_tvm():
    """A compiled artifact needs the TVM runtime, not the compiler: load only libtvm_runtime (the
    compiler library and its LLVM add ~100 MB resident), as a board would. The artifact then runs
    without the `tvm` Python package at all (deploy/device/local_vm.py); should anything import
    it, it comes up runtime-only. Only in the process the
    command started, which never compiles; a library caller or a process that already imported TVM
    keeps what it has."""
    if cli.COMMAND_PROCESS and "tvm" not in sys.modules:
        os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
        # TVM's FFI imports torch whenever it is installed (for DLPack interop this path never
        # uses; deploy/ needs no torch, and a board has none): keep it out, ~150 MB resident.
        if "torch" not in sys.modules:
            sys.modules["torch"] = None
