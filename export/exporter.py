"""`bimatting export` as a library: model -> ONNX model, checked, written atomically.

    model = build_onnx(network, arch, opset=18, static_size=None, downsample_ratio=None)
    report = export(checkpoint, output, *, arch=None, ...)   # arch: given, the checkpoint's, or bimatting

A dynamic export takes H, W and the downsample ratio at run time (RVM's interface); a static one
fixes (width, height) and bakes the ratio in (for runtimes that want fixed shapes, e.g. TensorRT
or a TVM build), dropping the `downsample_ratio` input.
"""

import re
from pathlib import Path

import onnx

from bimatting.atomic import atomic_path, check_writable_parent
from bimatting.binops import schema
from bimatting.errors import InputError, RuntimeFailure
from bimatting.export import graph, interface, layers, verify as verifier
from bimatting.models import ARCHS, model_class
from bimatting.weights.checkpoints import load_model

DEFAULT_OPSET = 18
MIN_RVM_OPSET = 12  # the official RVM export's opset


def parse_size(text):
    """'512x288' -> (512, 288); InputError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match or int(match.group(1)) < 16 or int(match.group(2)) < 16:
        raise InputError(f"static size '{text}' is not WIDTHxHEIGHT with both sides >= 16, e.g. 512x288")
    return int(match.group(1)), int(match.group(2))


def check_options(arch, opset, static_size, downsample_ratio):
    """Validate the export options up front (one InputError line each); arch None: not known yet."""
    if arch is None:
        arch = "rvm"  # the lowest opset any architecture accepts; rechecked once arch is known
    model_class(arch)  # InputError for an unknown architecture
    highest = onnx.defs.onnx_opset_version()
    lowest = schema.MIN_OPSET if arch == "bimatting" else MIN_RVM_OPSET
    if not lowest <= int(opset) <= highest:
        why = " (the ai.bimatting function bodies use BitwiseAnd)" if arch == "bimatting" else ""
        raise InputError(f"opset {opset} is not supported for arch '{arch}'; expected {lowest}..{highest}{why}")
    if downsample_ratio is not None and not 0 < float(downsample_ratio) <= 1:
        raise InputError(f"downsample ratio {downsample_ratio} is out of range; expected 0 < S <= 1")
    if static_size is not None:
        ratio = 1.0 if downsample_ratio is None else float(downsample_ratio)
        width, height = static_size
        if min(width, height) * ratio < 16:
            raise InputError(
                f"static size {width}x{height} at ratio {ratio} leaves less than 16 px "
                "for the network; use a larger size or ratio"
            )


def build_onnx(network, arch, opset=DEFAULT_OPSET, static_size=None, downsample_ratio=None):
    """The ONNX ModelProto of `network` (an eval-mode RVM or BiMatting), fully checked.

    The network emits itself (`network.emit_onnx(builder, interface)`, written beside its forward);
    nothing here knows its structure."""
    check_options(arch, opset, static_size, downsample_ratio)
    if not isinstance(network, model_class(arch)):
        raise InputError(
            f"the loaded network is a {type(network).__name__}, not arch '{arch}'; pass --arch matching the checkpoint"
        )
    network.eval()
    ratio = None if static_size is None else (1.0 if downsample_ratio is None else float(downsample_ratio))
    builder = layers.Builder(opset, name=arch)
    network.emit_onnx(builder, interface.Interface(builder, network.state_channels, static_size, ratio))
    metadata = {"bimatting.arch": arch, "bimatting.interface": "rvm"}
    if static_size is not None:
        metadata.update(
            {"bimatting.static_size": f"{static_size[0]}x{static_size[1]}", "bimatting.downsample_ratio": repr(ratio)}
        )
    doc = (
        f"{arch} exported by bimatting; inputs src, r1i..r4i"
        f"{'' if static_size else ', downsample_ratio'}; outputs fgr, pha, r1o..r4o"
    )
    return graph.check(builder.model(doc=doc, metadata=metadata))


def load_network(checkpoint, arch):
    """(network, arch) to export: a checkpoint path (arch None: the checkpoint's), or without one
    the packaged default BiMatting (arch rvm: RVM's official weights)."""
    if checkpoint is None:
        arch = arch or "bimatting"
        return load_model("rvm" if arch == "rvm" else "default", arch=arch), arch
    network = load_model(Path(checkpoint), arch=arch)
    found = next(name for name in ARCHS if isinstance(network, model_class(name)))
    return network, found


def summary(model):
    """Counts for the report: nodes by domain, binary convs, packed weight bytes."""
    custom = [n for n in model.graph.node if schema.is_domain_node(n)]
    packed = sum(len(t.raw_data) for t in model.graph.initializer if t.data_type == onnx.TensorProto.UINT8)
    return {
        "nodes": len(model.graph.node),
        "custom_nodes": len(custom),
        "binary_convs": sum(n.op_type.startswith("BinaryConv2d") for n in custom),
        "float_convs": sum(n.op_type == "Conv" for n in model.graph.node),
        "packed_weight_bytes": packed,
        "opset": next(o.version for o in model.opset_import if o.domain == ""),
    }


def export(
    checkpoint,
    output,
    *,
    arch=None,
    opset=DEFAULT_OPSET,
    static_size=None,
    downsample_ratio=None,
    verify=False,
    verify_input=None,
    verify_frames=None,
    align_ties=True,
    progress=True,
):
    """Load, build, verify (optional), write; returns a report dict.

    The file appears only complete and, with `verify`, only verified: it is written to a temporary
    name, checked, then renamed (RuntimeFailure, and no file, when onnxruntime and PyTorch differ).
    """
    check_options(arch, opset, static_size, downsample_ratio)
    output = Path(output)
    if output.is_dir():
        raise InputError(f"output '{output}' is a folder; expected a file path such as model.onnx")
    check_writable_parent(output)
    network, arch = load_network(checkpoint, arch)
    model = build_onnx(network, arch, opset, static_size, downsample_ratio)
    report = {
        "output": str(output),
        "arch": arch,
        **summary(model),
        "static_size": list(static_size) if static_size else None,
        "downsample_ratio": downsample_ratio,
    }
    with atomic_path(output) as tmp:
        onnx.save_model(model, str(tmp))
        report["bytes"] = tmp.stat().st_size
        if verify:
            try:
                report["verify"] = verifier.verify_file(
                    tmp,
                    network,
                    verify_input=verify_input,
                    downsample_ratio=downsample_ratio,
                    frames=verify_frames,
                    align_ties=align_ties,
                    progress=progress,
                )
            except RuntimeFailure as failure:
                raise RuntimeFailure(f"{failure}; '{output}' was not written") from None
    return report
