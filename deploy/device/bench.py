"""`bimatting bench`: run an artifact frame by frame on a board, time it, verify its alpha.

    result = bench("bimatting-rpi4.tar", rpc="pi.local:9090", frames=24, report_dir="bench-out")
    result["latency_ms"]["p50"], result["verify"]["passed"]

Steps: open the device (deploy/rpc.py: local, plain RPC server or tracker, with deadlines) ->
check that it runs the artifact's architecture -> upload and load -> `warmup` frames (then the
states are reset) -> `frames` recurrent frames of real footage (the packaged sample clip by
default, resized to the artifact's fixed input size), states fed back on the device -> the
reference (onnxruntime on the source ONNX, on this machine) runs the same frames -> compare
-> report (deploy/report.py).

Latency per frame is measured on the device's own clock: after each frame, the VM's
`time_evaluator` re-runs the frame's invocation with its inputs still set (TVM runs it once
more as a warm-up: three runs per frame in all). `roundtrip_ms` is the host's wall clock for the
frame, upload of the image and download of pha/fgr included (what a client over a network sees).
Time per operator group (binary convs, bit packing, float convs, the rest) needs a VM
instrument callback, which TVM 0.27 cannot pass over RPC: it is measured for local runs only.

A device that fails mid-run (server killed, timeout) keeps the frames measured so far: they are
verified and reported, then the run fails with RuntimeFailure (exit 1).
"""

import datetime
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bimatting import __version__
from bimatting.deploy import artifact as artifacts
from bimatting.deploy.artifact import sha256_file
from bimatting.deploy.device import report, rpc as rpc_util
from bimatting.deploy.device.runtime import CompiledModel, RecurrentRunner
from bimatting.errors import InputError, RuntimeFailure
from bimatting.matting.frames import read_frames, to_nchw
from bimatting.matting.samples import sample_frames

# The compile issue's acceptance tolerance for the board's outputs against onnxruntime (the same
# numbers `bimatting export --verify` applies to onnxruntime against PyTorch): per frame, the mean
# |diff| within 1e-4 and the max within 1e-2. Both sides compute in float32 in different orders, so
# diffs of ~1e-7 are expected; a wrong kernel moves a whole region.
TOLERANCE = {"mean": 1e-4, "max": 1e-2}
DEFAULT_FRAMES, DEFAULT_WARMUP, DEFAULT_TIMEOUT_S = 24, 2, 300.0
# Operator groups of the per-frame breakdown, first match wins. Kernel names come from
# deploy/compiler/lowering (bconv*, bpack*); Relax names a fused function after its operators.
GROUP_NAMES = ("binary_convs", "bit_packing", "float_convs", "sab_mask", "resize_concat", "elementwise", "runtime")
GROUP_RULES = (
    ("binary_convs", lambda n: n.startswith("bconv")),
    ("bit_packing", lambda n: n.startswith(("bpack", "brepack", "binarize_pack", "unpack"))),
    ("float_convs", lambda n: "conv2d" in n or "pair_conv" in n),  # pair_conv: integer_pairs.py
    ("sab_mask", lambda n: "greater" in n or "max_pool2d" in n),  # the incoherent mask and its widening
    ("resize_concat", lambda n: any(op in n for op in ("resize2d", "concatenate", "strided_slice"))),
    ("runtime", lambda n: n.startswith("vm.builtin")),  # allocation, tuples, shape checks
)
PROFILED_FRAMES = 3


def bench(
    artifact_path,
    *,
    rpc=None,
    tracker=None,
    key=None,
    frames=DEFAULT_FRAMES,
    warmup=DEFAULT_WARMUP,
    input_path=None,
    verify=True,
    reference=None,
    report_dir=None,
    timeout=DEFAULT_TIMEOUT_S,
    connect_timeout=rpc_util.CONNECT_TIMEOUT_S,
    progress=True,
):
    """Bench (and verify) an artifact; returns the result dict (see device/report.py for its keys).

    Raises InputError for bad input (exit 2), RuntimeFailure when the device fails mid-run (the
    partial result is written to `report_dir` first; exit 1). A failed verification is not raised
    here: `result["verify"]["passed"]` is False and the caller decides (the CLI exits 1)."""
    if frames < 1 or warmup < 0:
        raise InputError(f"--frames must be >= 1 and --warmup >= 0 (got {frames} and {warmup})")
    art = artifacts.read(artifact_path)
    image_name, size = _image_input(art.metadata)
    reference_path = find_reference(art, artifact_path, reference) if verify else None
    clip, input_label = load_frames(input_path, frames, size)
    with rpc_util.open_device(rpc, tracker, key, connect_timeout, timeout) as device:
        device.check_isa(art.target["isa"], f"the artifact ({art.target['name']})")
        run = _measure(art, device, clip, warmup, progress)
    result = _result(art, artifact_path, device, clip, input_label, warmup, run)
    if verify:
        outputs = run["outputs"]
        ref = run_reference(reference_path, art.metadata, clip[: len(outputs)])
        result["verify"] = compare(outputs, ref, reference_path)
        run["reference"] = ref
    else:
        result["verify"] = {"skipped": True, "passed": None, "pha_max_abs": None, "pha_mean_abs": None}
    if report_dir is not None:
        result["report"] = report.write(report_dir, result, clip, run)
    if run["error"] is not None:
        where = f"; partial report in {report_dir}" if report_dir is not None else ""
        failure = RuntimeFailure(f"{run['error']} ({len(run['outputs'])} of {len(clip)} frames measured{where})")
        failure.result = result  # the CLI prints what was measured
        raise failure
    return result


def _image_input(meta):
    image = next((i for i in meta["inputs"] if i.get("role") == "image"), None)
    if image is None:
        raise InputError("the artifact has no image input (role 'image'); recompile it with `bimatting compile`")
    extra = [i["name"] for i in meta["inputs"] if i.get("role") not in ("image", "state")]
    if extra:
        raise InputError(
            f"the artifact takes inputs bench cannot feed ({', '.join(extra)}); expected an image and recurrent states"
        )
    _, _, height, width = image["shape"]
    return image["name"], (int(width), int(height))


def load_frames(input_path, count, size):
    """(list of `count` RGB float32 frames [H, W, 3] at `size` (W, H), label). The packaged sample
    clip by default; a video or folder is resized to `size` (the artifact's fixed input)."""
    if input_path is None:
        return sample_frames(count, size), "packaged sample clip"
    clip = read_frames(input_path, size=size, limit=count)
    if len(clip) < count:
        raise InputError(f"'{input_path}' holds {len(clip)} frames; --frames asks for {count} (lower --frames)")
    return clip, str(input_path)


def find_reference(art, artifact_path, reference):
    """The source ONNX to verify against: --reference, a file the artifact carries, or the file
    named in its metadata next to it; checked against the artifact's source sha256."""
    source = art.metadata.get("source", {})
    candidates = []
    if reference is not None:
        candidates = [Path(reference)]
        if not candidates[0].is_file():
            raise InputError(
                f"reference '{reference}' does not exist; give the ONNX file the artifact was compiled from"
            )
    else:
        carried = getattr(art, "source_path", None)  # an artifact that embeds its ONNX
        if carried is not None:
            candidates.append(Path(carried))
        if source.get("file"):
            candidates.append(Path(artifact_path).resolve().parent / source["file"])
    for path in candidates:
        if path.is_file():
            if source.get("sha256") and sha256_file(path) != source["sha256"]:
                if reference is None:
                    continue
                raise InputError(
                    f"reference '{path}' is not the model this artifact was compiled from (sha256 "
                    f"differs from the artifact's {source.get('file', 'source')}); pass that ONNX file"
                )
            return path
    raise InputError(
        f"verification needs the ONNX file the artifact was compiled from ('{source.get('file', '?')}'); "
        "pass it with --reference MODEL.onnx, or skip the check with --no-verify"
    )


def _measure(art, device, clip, warmup, progress):
    """Load the artifact on the device and run the clip; failures end the loop, frames are kept."""
    run = {"outputs": [], "device_ms": [], "roundtrip_ms": [], "groups": None, "error": None}
    with rpc_util.deadline(device.timeout, "loading the artifact"):
        try:
            model = CompiledModel(art, session=device.session)
        except (InputError, RuntimeFailure):
            raise
        except Exception as error:  # noqa: BLE001 - any TVM/RPC error while loading
            raise rpc_util.explain(error, "loading the artifact") from None
    runner = RecurrentRunner(model)
    fetch = [n for n in ("pha", "fgr") if n in model.output_names] or model.output_names[:1]
    bar = tqdm(total=warmup + len(clip), desc="bench", unit="frame", disable=not progress)
    where = "warm-up"
    try:
        for index in range(warmup):
            where = f"warm-up frame {index + 1}"
            with rpc_util.deadline(device.timeout, where):
                runner.step(to_nchw(clip[0]), fetch=fetch)
            bar.update()
        runner.reset()
        timer = model.vm.time_evaluator("invoke_stateful", model.device, number=1, repeat=1)
        for index, frame in enumerate(clip):
            where = f"frame {index + 1} of {len(clip)}"
            with rpc_util.deadline(device.timeout, where):
                started = time.perf_counter()
                out = runner.step(to_nchw(frame), fetch=fetch)
                roundtrip = time.perf_counter() - started
                on_device = timer("main").mean  # the same frame again, timed by the device
            run["outputs"].append(out)
            run["roundtrip_ms"].append(roundtrip * 1e3)
            run["device_ms"].append(on_device * 1e3)
            bar.update()
        if not device.is_remote:
            where = "operator profiling"
            run["groups"] = profile_groups(model, runner, clip[:PROFILED_FRAMES], fetch)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 - keep what was measured, explain the failure
        run["error"] = str(rpc_util.explain(error, where))
        device.abort()  # a hung board: the remote objects freed below must not wait for it
    finally:
        bar.close()
    return run


def profile_groups(model, runner, frames, fetch):
    """Mean ms per frame of each operator group, from a VM instrument (local VMs only)."""
    spans, stack = {}, []

    def instrument(func, name, before, ret, *args):
        if before:
            stack.append(time.perf_counter())
        elif stack:
            group = operator_group(str(name))
            spans[group] = spans.get(group, 0.0) + time.perf_counter() - stack.pop()
        return 0

    runner.reset()
    model.vm.set_instrument(instrument)
    try:
        started = time.perf_counter()
        for frame in frames:
            runner.step(to_nchw(frame), fetch=fetch)
        total = time.perf_counter() - started
    finally:
        model.vm.set_instrument(lambda *args: 0)
    groups = {name: round(spans.get(name, 0.0) * 1e3 / len(frames), 3) for name in GROUP_NAMES}
    groups["frames_profiled"] = len(frames)
    groups["frame_ms_while_profiled"] = round(total * 1e3 / len(frames), 3)
    return groups


def operator_group(name):
    """The group of a VM-called function by its name (kernels from deploy/lowering, Relax names)."""
    return next((group for group, matches in GROUP_RULES if matches(name)), "elementwise")


def run_reference(onnx_path, meta, clip):
    """onnxruntime on the source ONNX over `clip`, states fed back: [{"pha", "fgr"}] per frame."""
    import onnxruntime as ort

    from bimatting.weights.onnx_check import load_checked  # noqa: PLC0415 - onnx loads only to verify

    checked = load_checked(onnx_path)  # untrusted file: checked before onnxruntime parses it
    options = ort.SessionOptions()
    # The graph as written: onnxruntime's fusions reorder float arithmetic, and in a binary network a
    # pre-sign value within rounding of 0 then flips and the flip cascades (pha max 0.46 measured on
    # the packaged model with optimizations on, 3e-7 with them off, against the TVM artifact).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(checked.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    states = dict(meta["states"])  # rKi -> rKo
    shapes = {i["name"]: i["shape"] for i in meta["inputs"]}
    image = next(i["name"] for i in meta["inputs"] if i.get("role") == "image")
    missing = [n for n in names if n not in states and n not in (image, "downsample_ratio")]
    if image not in names or missing:
        raise InputError(
            f"reference '{onnx_path}' does not take the artifact's inputs (it has {sorted(names)}); "
            "pass the ONNX file the artifact was compiled from"
        )
    values = {name: np.zeros(shapes[name], np.float32) for name in states if name in names}
    fixed = {}
    if "downsample_ratio" in names:
        fixed["downsample_ratio"] = np.array([meta.get("downsample_ratio") or 1.0], np.float32)
    wanted = ["pha", "fgr"] + [states[name] for name in values]
    outputs = []
    for frame in clip:
        result = dict(zip(wanted, session.run(wanted, {image: to_nchw(frame), **values, **fixed})))
        values = {name: result[states[name]] for name in values}
        outputs.append({"pha": result["pha"], "fgr": result["fgr"]})
    return outputs


def compare(device_outputs, reference_outputs, reference_path):
    """Per-frame pha/fgr differences, worst case over frames, and the verdict."""
    per_frame = {"pha_max_abs": [], "pha_mean_abs": [], "fgr_max_abs": [], "fgr_mean_abs": []}
    for ours, theirs in zip(device_outputs, reference_outputs):
        for key in ("pha", "fgr"):
            if key not in ours:
                continue
            diff = np.abs(ours[key].astype(np.float64) - theirs[key])
            per_frame[f"{key}_max_abs"].append(float(diff.max()))
            per_frame[f"{key}_mean_abs"].append(float(diff.mean()))
    if not per_frame["pha_max_abs"]:
        return {
            "passed": False,
            "pha_max_abs": None,
            "pha_mean_abs": None,
            "frames": 0,
            "reason": "no frame was measured",
            "reference": str(reference_path),
        }
    worst = {key: max(values) for key, values in per_frame.items() if values}
    passed = all(
        worst[f"{k}_mean_abs"] <= TOLERANCE["mean"] and worst[f"{k}_max_abs"] <= TOLERANCE["max"]
        for k in ("pha", "fgr")
        if f"{k}_max_abs" in worst
    )
    mean_pha = float(np.mean(per_frame["pha_mean_abs"]))
    return {
        "passed": bool(passed),
        **worst,
        "mad_x1e3": mean_pha * 1e3,  # RVM's MAD (mean |alpha diff| x 1e3), device vs reference
        "frames": len(per_frame["pha_max_abs"]),
        "tolerance": dict(TOLERANCE),
        "per_frame": per_frame,
        "reference": str(reference_path),
        "reference_runtime": "onnxruntime",
    }


def _stats(values):
    if not values:
        return {"mean": None, "p50": None, "p90": None, "min": None, "max": None, "per_frame": []}
    array = np.asarray(values, np.float64)
    return {
        "mean": float(array.mean()),
        "p50": float(np.percentile(array, 50)),
        "p90": float(np.percentile(array, 90)),
        "min": float(array.min()),
        "max": float(array.max()),
        "per_frame": [float(v) for v in array],
    }


def _result(art, artifact_path, device, clip, input_label, warmup, run):
    import onnxruntime
    import tvm

    meta = art.metadata
    latency = _stats(run["device_ms"])
    target = {k: meta["target"].get(k) for k in ("name", "isa", "description", "llvm")}
    return {
        "device": device.describe(),
        "target": target,
        "artifact": {
            "path": str(artifact_path),
            "resolution": meta.get("resolution"),
            "downsample_ratio": meta.get("downsample_ratio"),
            "source": meta.get("source"),
            "tuning": meta.get("tuning"),
        },
        "frames": len(run["device_ms"]),
        "frames_requested": len(clip),
        "warmup": warmup,
        "input": input_label,
        "latency_ms": latency,
        "roundtrip_ms": _stats(run["roundtrip_ms"]),
        "fps": (1e3 / latency["mean"]) if latency["mean"] else None,
        "op_groups_ms": run["groups"],
        "op_groups_note": None
        if run["groups"]
        else (
            "per-group times need a local run: TVM 0.27's VM instrument cannot be passed over RPC"
            if device.is_remote
            else "not measured (the run stopped early)"
        ),
        "completed": run["error"] is None,
        "error": run["error"],
        "versions": {"bimatting": __version__, "tvm": tvm.__version__, "onnxruntime": onnxruntime.__version__},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
