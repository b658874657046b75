#!/usr/bin/env python
"""Recurrent drift over a long clip: the compiled host artifact against onnxruntime, frame by frame.

    python bench/drift.py [--model MODEL] [--frames 1000] [--resolution 256x144] [--downsample-ratio S]
                          [--input FOOTAGE] [--tolerance 1e-4] [--baseline] [--json [--series]]

MODEL is an .onnx from `bimatting export`, a checkpoint (.pth / packed .npz), 'default' (the
packaged BiMatting) or 'rvm'; checkpoints are exported in memory. The ONNX is compiled for `host`
at the resolution, then both engines run the same frames with their own recurrent states fed
back (TVM: deploy.device.runtime.RecurrentRunner; onnxruntime: r1o..r4o -> r1i..r4i), starting from
the same zero states. Any difference that builds up in the states shows as a growing per-frame
pha error; the check fails when a frame's mean |pha_tvm - pha_ort| exceeds the tolerance
(1e-4, the bench verification's mean tolerance).

onnxruntime runs with graph optimizations off: it then executes the graph as written, the same
float operations in the same order as the compiled model (whose binary convs are exact
integers), so a correct compiler agrees to a few float32 ulps per frame. A binarized network
turns a last-bit difference just before a sign() into a flipped bit, and the recurrent state
carries it on: over a long clip a model with near-ties can drift between two correct float32
engines. --baseline measures that for onnxruntime against itself (graph optimizations on vs off:
the same graph, other roundings), so a failure can be told apart from a compiler error.

Footage: --input (a video or a folder of frames), else the packaged sample clip; it is played
forwards and backwards (no cut, so the recurrent state always sees continuous motion) until
--frames frames have run. Exit code 1 when the check fails. One thread per engine.
"""

import os

os.environ.setdefault("TVM_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from tqdm import tqdm

from bimatting.cli.parsing import parse_resolution
from bimatting.deploy.device.runtime import CompiledModel, RecurrentRunner
from bimatting.errors import BimattingError
from bimatting.matting.frames import read_frames, to_nchw
from bimatting.matting.samples import sample_frames

CLIP_FRAMES = 100  # distinct frames read from the footage (then played back and forth)


def onnx_for(model, folder):
    """Path of an ONNX file for `model` (an .onnx as is, else exported in memory; needs torch)."""
    if str(model).lower().endswith(".onnx"):
        return Path(model)
    import onnx

    from bimatting.export.exporter import build_onnx, load_network  # noqa: PLC0415 - torch loads only to export

    keyword = model in ("default", "rvm")  # the packaged BiMatting / RVM's official weights
    network, arch = load_network(None if keyword else model, model if model == "rvm" else None)
    path = Path(folder) / "model.onnx"
    onnx.save(build_onnx(network, arch), str(path))
    return path


def footage(source, size, count):
    """`count` frames [H, W, 3] of `size` (W, H): the clip played forwards, backwards, forwards..."""
    clip = read_frames(source, size=size, limit=CLIP_FRAMES) if source else sample_frames(CLIP_FRAMES, size)
    cycle = clip + clip[-2:0:-1] if len(clip) > 1 else clip
    return (cycle[index % len(cycle)] for index in range(count))


def reference_session(onnx_path, optimized=False):
    import onnxruntime as ort

    from bimatting.weights.onnx_check import load_checked  # noqa: PLC0415 - onnx loads only for a file

    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(
        load_checked(onnx_path).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


class _OnnxRunner:
    """onnxruntime with its own recurrent states, started at zero like RecurrentRunner.reset()."""

    def __init__(self, onnx_path, meta, optimized=False):
        self.session = reference_session(onnx_path, optimized)
        names = {i.name for i in self.session.get_inputs()}
        shapes = {i["name"]: i["shape"] for i in meta["inputs"]}
        self.pairs = meta["states"]  # rKi -> rKo
        self.states = {name: np.zeros(shapes[name], np.float32) for name in self.pairs}
        self.fixed = (
            {"downsample_ratio": np.array([meta["downsample_ratio"] or 1.0], np.float32)}
            if "downsample_ratio" in names
            else {}
        )
        self.wanted = ["fgr", "pha"] + [self.pairs[name] for name in self.states]

    def step(self, src):
        out = dict(zip(self.wanted, self.session.run(self.wanted, {"src": src, **self.states, **self.fixed})))
        self.states = {name: out[self.pairs[name]] for name in self.states}
        return out


def _differences(a, b):
    pha = np.abs(a["pha"] - b["pha"])
    return {
        "pha_mean": float(pha.mean()),
        "pha_max": float(pha.max()),
        "fgr_mean": float(np.abs(a["fgr"] - b["fgr"]).mean()),
    }


def run_drift(onnx_path, artifact_path, frames, progress=True, baseline=False):
    """Per-frame {"pha_mean", "pha_max", "fgr_mean"} absolute differences, TVM vs onnxruntime;
    with `baseline`, also onnxruntime with its graph optimizations on vs off (key "baseline"):
    two float32 engines that differ only in rounding, the model's own sensitivity."""
    compiled = CompiledModel(artifact_path)
    runner = RecurrentRunner(compiled)
    reference = _OnnxRunner(onnx_path, compiled.metadata)
    optimized = _OnnxRunner(onnx_path, compiled.metadata, optimized=True) if baseline else None
    rows = []
    for frame in tqdm(frames, total=len(frames), desc="drift", unit="frame", disable=not progress):
        src = to_nchw(frame)
        want = reference.step(src)
        row = _differences(runner.step(src, fetch=["fgr", "pha"]), want)
        if optimized is not None:
            row["baseline"] = _differences(optimized.step(src), want)
        rows.append(row)
    return rows


def summarise(rows, tolerance):
    result = _summary(rows, tolerance)
    if rows and "baseline" in rows[0]:
        result["baseline"] = _summary([r["baseline"] for r in rows], tolerance)
    return result


def _summary(rows, tolerance):
    pha_mean = np.array([r["pha_mean"] for r in rows])
    window = max(1, min(100, len(rows) // 4))
    worst = int(pha_mean.argmax())
    over = np.flatnonzero(pha_mean > tolerance)
    return {
        "frames": len(rows),
        "tolerance_pha_mean": tolerance,
        "pha_mean_abs_max": float(pha_mean.max()),
        "worst_frame": worst,
        "pha_mean_abs_first": float(pha_mean[:window].mean()),
        "pha_mean_abs_last": float(pha_mean[-window:].mean()),
        "window": window,
        "pha_max_abs_max": max(r["pha_max"] for r in rows),
        "fgr_mean_abs_max": max(r["fgr_mean"] for r in rows),
        "frames_over_tolerance": int(over.size),
        "first_frame_over": int(over[0]) if over.size else None,
        "passed": bool(over.size == 0),
    }


def measure(
    model="default",
    frames=1000,
    resolution=(256, 144),
    source=None,
    tolerance=1e-4,
    progress=True,
    baseline=False,
    series=False,
    downsample_ratio=None,
):
    """Compile `model` for host at `resolution` and compare `frames` recurrent frames; a summary dict
    (`series`: with the per-frame pha mean differences)."""
    from bimatting.deploy.compiler.build import compile_model  # noqa: PLC0415 - TVM loads only to compile

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bimatting-drift-") as folder:
        onnx_path = onnx_for(model, folder)
        artifact_path = Path(folder) / "host.tar"
        meta = compile_model(
            onnx_path, "host", artifact_path, resolution=tuple(resolution), downsample_ratio=downsample_ratio
        )
        rows = run_drift(onnx_path, artifact_path, list(footage(source, tuple(resolution), frames)), progress, baseline)
    result = summarise(rows, tolerance)
    if series:
        result["pha_mean_per_frame"] = [r["pha_mean"] for r in rows]
        if baseline:
            result["baseline"]["pha_mean_per_frame"] = [r["baseline"]["pha_mean"] for r in rows]
    result.update(
        model=str(model),
        resolution=list(resolution),
        downsample_ratio=meta["downsample_ratio"],
        input=str(source) if source else "packaged sample clip",
        seconds=round(time.perf_counter() - began, 1),
    )
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help=".onnx, .pth, .npz, 'default' or 'rvm'")
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--resolution", default="256x144", help="WxH")
    parser.add_argument("--input", default=None, help="video or frame folder (default: packaged sample clip)")
    parser.add_argument(
        "--downsample-ratio",
        type=float,
        default=None,
        help="ratio compiled in (default: the auto ratio for the resolution)",
    )
    parser.add_argument("--tolerance", type=float, default=1e-4, help="per-frame mean |pha diff| allowed")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also compare onnxruntime optimized vs unoptimized (the model's own sensitivity)",
    )
    parser.add_argument("--series", action="store_true", help="--json: include the per-frame differences")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = measure(
            args.model,
            args.frames,
            parse_resolution(args.resolution),
            args.input,
            args.tolerance,
            progress=not args.json,
            baseline=args.baseline,
            series=args.series,
            downsample_ratio=args.downsample_ratio,
        )
    except BimattingError as error:
        print(f"Error: {error}", file=sys.stderr)
        return error.exit_code
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        ratio = f"s={result['downsample_ratio']:g}" if result["downsample_ratio"] else "no ratio input"
        print(
            f"{result['frames']} recurrent frames at {args.resolution} ({ratio}), "
            f"{result['model']} compiled for host vs onnxruntime:"
        )
        print(
            f"  pha mean |diff| per frame: max {result['pha_mean_abs_max']:.3g} (frame {result['worst_frame']}), "
            f"first {result['window']} frames {result['pha_mean_abs_first']:.3g}, "
            f"last {result['window']} {result['pha_mean_abs_last']:.3g}"
        )
        print(f"  pha max |diff| {result['pha_max_abs_max']:.3g}; fgr mean |diff| max {result['fgr_mean_abs_max']:.3g}")
        print(
            f"  {'PASS' if result['passed'] else 'FAIL'}: tolerance {args.tolerance:g}, "
            f"{result['frames_over_tolerance']} frames over (first: {result['first_frame_over']}) "
            f"({result['seconds']} s)"
        )
        if "baseline" in result:
            base = result["baseline"]
            print(
                f"  baseline, onnxruntime optimized vs not: pha mean |diff| max {base['pha_mean_abs_max']:.3g}, "
                f"{base['frames_over_tolerance']} frames over (first: {base['first_frame_over']})"
            )
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
