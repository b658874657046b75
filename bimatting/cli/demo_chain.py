"""`bimatting demo`: the whole toolchain on the packaged default model and the packaged sample clip.

    report = run_demo(workdir="bimatting-demo")      # then print(format_report(report))

Steps, each a library call of its verb:
    sample     the packaged sample clip as sample.mp4 (24 frames, 512x288)
    profile    parameters, 1-bit storage and OPs of BiMatting against RVM at 512x288
    export     bimatting.onnx (packed binary ops, RVM's dynamic interface)
    compile    TVM artifacts for `host` and, cross-compiled, for `rpi4` (two processes at once)
    bench      the host artifact on this CPU, outputs verified against onnxruntime; the rpi4
               artifact on the emulated board when one is set up (correctness only: emulated
               timings say nothing about a real board)
    matte      the sample clip through the host artifact: composite, alpha and foreground videos
    report     report/matte.png (input | alpha | composite), beside bench's latency and alpha
               previews in report/host/ and report/rpi4/
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bimatting.atomic import atomic_path
from bimatting.deploy import target as targets
from bimatting.deploy.device import emulator
from bimatting.deploy.device.bench import bench
from bimatting.errors import InputError, RuntimeFailure
from bimatting.matting.frames import read_frames
from bimatting.matting.runner import matte
from bimatting.matting.samples import write_sample_video
from bimatting.models import build_model
from bimatting.models.profile import profile_model

RESOLUTION = (512, 288)  # (width, height), the packaged clip's size; RVM's s = 1 there
SAMPLE_FRAMES = 24
PROFILE_FRAMES = 4  # frames the SAB mask density is measured on (PyTorch, ~1 s each on 2 cores)
BENCH_FRAMES = 8
EMULATED_FRAMES = 2
BOARD = "rpi4"


class Steps:
    """Prints `[k/n] name ...` before and the time after each step; keeps the timings."""

    def __init__(self, names, echo):
        self.names, self.echo, self.seconds = list(names), echo, {}

    def run(self, name, work, *args, **kwargs):
        index = self.names.index(name) + 1
        self.echo(f"[{index}/{len(self.names)}] {name} ...")
        began = time.perf_counter()
        result = work(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - began, 1)
        self.echo(f"[{index}/{len(self.names)}] {name} done in {self.seconds[name]:.1f} s")
        return result


def run_demo(workdir="bimatting-demo", progress=True, echo=print):
    """Run every step into `workdir` (created if needed); returns the report dict."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise InputError(f"workdir '{workdir}' is a file; give a folder (it is created if missing)")
    if not workdir.parent.resolve().is_dir():
        raise InputError(f"cannot create workdir '{workdir}': its folder does not exist")
    from bimatting.weights.checkpoints import load_model

    try:
        model = load_model("default")
    except InputError:
        raise InputError(
            "the demo needs the packaged default model (bimatting/assets/bimatting_default.npz), "
            "which this install lacks; reinstall bimatting with scripts/install.sh"
        ) from None
    workdir.mkdir(exist_ok=True)
    (workdir / "report").mkdir(exist_ok=True)
    steps = Steps(["sample", "profile", "export", "compile", "bench", "matte", "report"], echo)
    report = {"workdir": str(workdir), "resolution": list(RESOLUTION)}
    report["sample"] = steps.run("sample", _sample, workdir)
    report["profile"] = steps.run("profile", _profile, model)
    report["export"] = steps.run("export", _export, workdir)
    report["compile"] = steps.run("compile", _compile_all, workdir, Path(report["export"]["output"]))
    report["bench"] = steps.run("bench", _bench_all, workdir, report["compile"], Path(report["sample"]), progress)
    host = report["compile"]["host"]["output"]
    report["matte"] = steps.run("matte", _matte, Path(report["sample"]), workdir / "matte.mp4", host, progress)
    report["report_images"] = steps.run("report", _report_images, workdir, report)
    report["seconds"] = dict(steps.seconds, total=round(sum(steps.seconds.values()), 1))
    return report


# -- steps ---------------------------------------------------------------------------------------


def _sample(workdir):
    return str(write_sample_video(workdir / "sample.mp4", frames=SAMPLE_FRAMES, size=RESOLUTION))


def _profile(model):
    rvm = build_model("rvm").eval()  # architecture counts need no weights
    return profile_model(model, RESOLUTION, 1.0, mask_density="auto", frames=PROFILE_FRAMES, reference=rvm)


def _export(workdir):
    from bimatting.export.exporter import export

    return export(None, workdir / "bimatting.onnx", arch="bimatting", progress=False)


# One `compile_model` per process; prints its result as JSON, or the error's message and exit code.
_COMPILE_PROGRAM = """
import json, sys
from bimatting.errors import BimattingError
from bimatting.deploy.compiler.build import compile_model
source, target, output, width, height = sys.argv[1:6]
try:
    metadata = compile_model(source, target, output, resolution=(int(width), int(height)))
except BimattingError as error:
    print(error, file=sys.stderr)
    sys.exit(error.exit_code)
print(json.dumps({"binary_convs": metadata["kernels"]["binary_convs"]}))
"""


def _compile_all(workdir, source):
    """host and rpi4 at once, one process each (a compile mostly keeps one core busy). rpi4 is
    skipped, with the reason, when the cross compiler is missing."""
    jobs, results = {"host": workdir / "bimatting-host.tar"}, {}
    try:
        targets.check_compiler(targets.resolve(BOARD))
        jobs[BOARD] = workdir / f"bimatting-{BOARD}.tar"
    except InputError as reason:
        results[BOARD] = {"skipped": str(reason)}
    began = time.perf_counter()
    running = {
        name: subprocess.Popen(
            [sys.executable, "-c", _COMPILE_PROGRAM, str(source), name, str(path), *map(str, RESOLUTION)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, path in jobs.items()
    }
    for name, process in running.items():
        out, err = process.communicate()
        if process.returncode != 0:
            last = (err.strip().splitlines() or ["no message"])[-1]
            raise (InputError if process.returncode == 2 else RuntimeFailure)(f"compile for {name} failed: {last}")
        results[name] = {
            "output": str(jobs[name]),
            "bytes": jobs[name].stat().st_size,
            "target": name,
            "seconds": round(time.perf_counter() - began, 1),
            **json.loads(out.splitlines()[-1]),
        }
    return results


def _bench_all(workdir, compiled, sample, progress):
    """`bimatting bench` of the host artifact on this CPU, and of the board's artifact on the
    emulated board when one is set up; both verified against onnxruntime on the source ONNX."""
    report = workdir / "report"
    results = {
        "host": bench(
            compiled["host"]["output"],
            frames=BENCH_FRAMES,
            input_path=sample,
            report_dir=report / "host",
            progress=progress,
        )
    }
    if "skipped" in compiled[BOARD]:
        results[BOARD] = {"skipped": f"no {BOARD} artifact"}
        return results

    try:
        emulator.load_emulator()
    except emulator.EmulatorNotSetUp:
        results[BOARD] = {"skipped": "no emulated board (scripts/setup_arm_emu.sh sets one up)"}
        return results
    with emulator.start_board(BOARD) as board:
        # Emulation runs aarch64 code tens of times slower: two frames prove it runs and is right.
        results[BOARD] = bench(
            compiled[BOARD]["output"],
            rpc=f"{board.connect_host}:{board.port}",
            frames=EMULATED_FRAMES,
            warmup=1,
            input_path=sample,
            report_dir=report / BOARD,
            progress=progress,
        )
    results[BOARD]["emulated"] = True
    return results


def _matte(sample, output, artifact, progress):
    return matte(sample, output, artifact=artifact, backend="tvm", output_type="all", progress=progress)


def _report_images(workdir, report):
    """report/matte.png (input | alpha | composite for three frames of the matted clip), beside
    the images `bench` wrote (report/<target>/latency.png and alpha_preview.png)."""
    sample = read_frames(report["sample"])
    composite = read_frames(report["matte"]["outputs"][0])
    alpha = read_frames(report["matte"]["outputs"][1])
    picks = [0, len(sample) // 2, len(sample) - 1]
    rows = [np.concatenate([sample[i], alpha[i], composite[i]], axis=1) for i in picks]
    images = {"matte": workdir / "report" / "matte.png"}
    _write_png(images["matte"], np.concatenate(rows, axis=0))
    for target, result in report["bench"].items():
        for name, path in (result.get("report") or {}).items():
            if name.endswith(".png"):
                images[f"{target} {name[:-4]}"] = Path(path)
    return {name: str(path) for name, path in images.items()}


def _write_png(path, image):
    import cv2

    with atomic_path(path) as tmp:
        if not cv2.imwrite(
            str(tmp), cv2.cvtColor((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR)
        ):
            raise RuntimeFailure(f"could not write '{path}'")


def failed_checks(report):
    """The benches whose verification failed (the CLI exits 1 after the table)."""
    return [
        name
        for name, result in report["bench"].items()
        if "skipped" not in result and not (result.get("verify") or {}).get("passed")
    ]


# -- the table -------------------------------------------------------------------------------------


def _mb(count):
    return f"{count / 1e6:.2f} MB"


def _bench_cells(result):
    if result is None or "skipped" in result:
        return "-", "not benched: " + (result or {}).get("skipped", "no result")
    latency = "(emulated)" if result.get("emulated") else f"{result['latency_ms']['p50']:.1f} ms"
    verify = result.get("verify") or {}
    verdict = "pass" if verify.get("passed") else "FAIL"
    if verify.get("pha_max_abs") is not None:
        verdict += f" (pha max {verify['pha_max_abs']:.1e}, mean {verify['pha_mean_abs']:.1e})"
    return latency, verdict


def format_report(report):
    p = report["profile"]
    rvm = p["rvm"]
    w, h = report["resolution"]
    lines = [
        f"bimatting demo: packaged default model on the packaged sample clip ({SAMPLE_FRAMES} frames, {w}x{h}, s=1)",
        "",
    ]
    lines.append(f"{'':<24}{'RVM (FP32)':>14}{'BiMatting':>14}{'ratio':>9}")
    lines.append(f"{'parameters':<24}{rvm['params_total'] / 1e6:>12.2f} M{p['params_total'] / 1e6:>12.2f} M{'':>9}")
    lines.append(
        f"{'storage':<24}{_mb(rvm['storage_bytes']):>14}{_mb(p['storage_bytes']):>14}{p['storage_ratio_vs_rvm']:>8.1f}x"
    )
    lines.append(
        f"{'OPs, dense':<24}{rvm['ops_dense'] / 1e9:>12.3f} G{p['ops_dense'] / 1e9:>12.3f} G"
        f"{p['ops_ratio_vs_rvm_dense']:>8.1f}x"
    )
    lines.append(
        f"{'OPs, SAB-sparse':<24}{'':>14}{p['ops_sparse'] / 1e9:>12.3f} G{p['ops_ratio_vs_rvm_sparse']:>8.1f}x"
    )
    lines.append(
        f"(OPs = FLOPs + binary MACs / 64; mask density {p['mask_density']:.3f} measured on {p['mask_density_source']})"
    )
    lines.append("")
    lines.append(f"{'artifact':<36}{'size':>10}{'latency/frame':>15}  verification")
    lines.append(f"{'bimatting.onnx':<36}{_mb(report['export']['bytes']):>10}{'-':>15}  reference (onnxruntime)")
    for name in ("host", BOARD):
        compiled, bench = report["compile"].get(name, {}), report["bench"].get(name)
        label = f"bimatting-{name}.tar" + (" (emulated board)" if bench and bench.get("emulated") else "")
        if "skipped" in compiled:
            lines.append(f"{label:<36}{'-':>10}{'-':>15}  not compiled: {compiled['skipped']}")
            continue
        latency, verdict = _bench_cells(bench)
        lines.append(f"{label:<36}{_mb(compiled['bytes']):>10}{latency:>15}  {verdict}")
    m = report["matte"]
    lines.append(
        f"matte (TVM host): {m['frames']} frames at {m['frames_per_second']:.1f} frames/s, "
        "decoding and writing included"
    )
    lines.append(
        "(latency: median per frame on the device's clock; verification: alpha vs onnxruntime, "
        "mean <= 1e-4 and max <= 1e-2)"
    )
    lines.append("")
    lines.append("files:")
    for label, path in (
        [("onnx", report["export"]["output"])]
        + [(f"artifact {n}", c["output"]) for n, c in report["compile"].items() if "output" in c]
        + [(f"report {k}", v) for k, v in report["report_images"].items()]
        + [("video " + Path(v).stem.replace("matte", "composite").replace("composite_", ""), v) for v in m["outputs"]]
    ):
        lines.append(f"  {label:<27}{path}")
    lines.append(f"total {report['seconds']['total']:.0f} s")
    return "\n".join(lines)
