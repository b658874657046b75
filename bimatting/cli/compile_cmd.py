"""`bimatting compile` and `bimatting targets` (thin wrappers of bimatting.deploy.compiler.build / targets)."""

import json
import tempfile
from pathlib import Path

import click

from bimatting.cli.parsing import parse_resolution
from bimatting.deploy.target import check_compiler, resolve
from bimatting.errors import InputError
from bimatting.targets import list_targets, load_target

STAGES = ("target", "import", "legalize", "compile", "link", "write")


@click.command("compile")
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--target",
    "target_name",
    required=True,
    metavar="NAME",
    help="Board to compile for (see `bimatting targets`), e.g. rpi4, jetson-orin, host.",
)
@click.option(
    "-o", "--output", required=True, type=click.Path(), help="Artifact to write: NAME.tar (one file) or a folder."
)
@click.option(
    "--resolution",
    default=None,
    metavar="WxH",
    help="Input size, width x height (default: the model's static size, else 512x288).",
)
@click.option(
    "--downsample-ratio", type=float, default=None, help="RVM's s, baked in (default: s = min(512 / long side, 1))."
)
@click.option(
    "--tuning-db",
    type=click.Path(file_okay=False),
    default=None,
    help="MetaSchedule database folder with tuned kernels (from `bimatting tune`).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the artifact metadata as JSON.")
def compile_(model, target_name, output, resolution, downsample_ratio, tuning_db, as_json):
    """Compile an ONNX model (binary ops -> XNOR/popcount kernels) for a board with TVM.

    MODEL is an ONNX file from `bimatting export`, or a PyTorch checkpoint (.pth), exported in
    memory first (needs torch). Without MODEL the packaged default model is exported. The result
    is one artifact: the shared library (cross-compiled for ARM boards), the parameters and a
    metadata JSON; run it with `bimatting bench` or `bimatting matte --artifact`.

    \b
    Examples:
      bimatting compile bimatting.onnx --target rpi4 -o bimatting-rpi4.tar
      bimatting compile bimatting.onnx --target host -o host.tar --resolution 960x540 --downsample-ratio 0.25
      bimatting compile epoch-27.pth --target jetson-orin -o orin.tar
      bimatting compile rvm.onnx --target rpi4 -o rvm-rpi4.tar      # a plain float model works too
    """
    from tqdm import tqdm

    from bimatting.deploy.compiler.build import compile_model

    size = parse_resolution(resolution) if resolution else None
    check_compiler(resolve(target_name))  # fail before a long export
    with tqdm(total=len(STAGES), desc="compile", unit="stage", disable=as_json) as bar:

        def progress(stage):
            bar.set_postfix_str(stage)
            bar.update(0 if stage == STAGES[0] else 1)

        source, cleanup = _onnx_source(model)
        try:
            meta = compile_model(
                source,
                target_name,
                output,
                resolution=size,
                downsample_ratio=downsample_ratio,
                tuning_db=tuning_db,
                progress=progress,
            )
        finally:
            cleanup()
        bar.update(bar.total - bar.n)
    if as_json:
        click.echo(json.dumps(meta, indent=2))
    else:
        shapes = ", ".join(f"{i['name']} {'x'.join(map(str, i['shape']))}" for i in meta["inputs"])
        click.echo(
            f"wrote {output}: {meta['target']['name']} ({meta['target']['isa']}), "
            f"{meta['kernels']['binary_convs']} binary convs, inputs {shapes}"
        )


def _onnx_source(model):
    """(path of an ONNX file, cleanup). A checkpoint (or none: the packaged default) is exported
    here, in this process, with dynamic sizes (the only place compiling touches torch)."""
    if model is not None and Path(model).suffix.lower() == ".onnx":
        return model, lambda: None

    try:
        from bimatting.export.exporter import build_onnx, load_network
    except ImportError:
        raise InputError(
            "compiling a checkpoint needs the exporter (bimatting.export) and torch; "
            "export to ONNX first with `bimatting export`"
        ) from None
    import onnx

    network, arch = load_network(model, None)  # arch from the checkpoint; none: packaged BiMatting
    onnx_model = build_onnx(network, arch)
    folder = tempfile.TemporaryDirectory(prefix="bimatting-export-")
    path = Path(folder.name) / "model.onnx"
    onnx.save(onnx_model, str(path))
    return str(path), folder.cleanup


@click.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print the targets as JSON.")
def targets(as_json):
    """List the boards a model can be compiled for (targets/*.toml).

    \b
    Examples:
      bimatting targets
      bimatting targets --json
    """
    rows = []
    for name in list_targets():
        descriptor = load_target(name)
        llvm = descriptor["llvm"]
        rows.append(
            {
                "name": name,
                "description": descriptor.get("description", ""),
                "isa": descriptor.get("isa"),
                "mtriple": llvm.get("mtriple"),
                "mcpu": llvm.get("mcpu"),
                "mattr": list(llvm.get("mattr", [])),
                "num_cores": llvm.get("num-cores"),
                "cross_compiler": descriptor.get("cross_compiler"),
                "cross_compiler_package": descriptor.get("cross_compiler_package"),
                "qemu_cpu": descriptor.get("qemu_cpu"),
                "rpc_key": descriptor.get("rpc_key"),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['description']}")
