#!/usr/bin/env python
"""BiMatting vs RVM on this machine: one run, one and two threads, one table (run by hand, not by CI).

    python bench/speed.py [--frames 8] [--layer-repeats 50] [--threads 1] [--no-second-thread]
                          [--no-memory] [--json]

Part 1, whole network, per-frame median latency with the recurrent state carried (the network
only: frames are converted to NCHW before the clock starts):
    RVM FP32 (MobileNetV3, RVM's official ONNX) in onnxruntime
    RVM INT8 in onnxruntime (static QDQ, per-channel weights, quantised here from the official
        FP32 ONNX and calibrated on the sample footage with the recurrent state fed back; its pha
        mean |diff| against FP32 is printed beside it)
    BiMatting in onnxruntime (bimatting export; binary convs run as their ONNX function bodies)
    BiMatting compiled by TVM for `host` (bitserial XNOR/popcount kernels)
at 512x288 (s = 1) and 1920x1080 (s = 0.25); ratios are RVM FP32's latency over each engine's.
The same networks run again with 2 threads (a child process of this script: thread pools are
sized when the libraries start), and the host artifact's frame is broken down by operator group
(binary convs, bit packing, float convs, SAB mask, resize/concat, element-wise, VM runtime).

Part 2, one binary 3x3 convolution (float in, float out: pack + XNOR/popcount conv + output
transform) against the fastest float conv of the same shape (onnxruntime and torch, FP32):
    64 -> 64 channels at 64x64 (an encoder-sized layer)
    128 -> 128 channels at 36x64 (a decoder layer at 1/8 of 512x288)

Part 3, footprint: peak resident memory of `bimatting matte --artifact` (the 512x288 host
artifact) against a script that only runs RVM FP32 in onnxruntime, each in its own process over
the same frames.

The BiMatting weights are the packaged default model when this install has one, else a
random-initialised network (latency does not depend on the weights; the table says which).
Parts whose pieces are missing print "n/a (reason)".
"""

import os

# One thread everywhere (or BIMATTING_BENCH_THREADS), set before the libraries start their pools.
os.environ.setdefault("TVM_NUM_THREADS", os.environ.get("BIMATTING_BENCH_THREADS", "1"))
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("BIMATTING_BENCH_THREADS", "1"))

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import bimatting
from bimatting.deploy.device.bench import profile_groups
from bimatting.errors import InputError
from bimatting.matting.frames import to_nchw
from bimatting.matting.runner import OnnxMatter, TvmMatter
from bimatting.matting.samples import sample_frames
from bimatting.models import build_model

RESOLUTIONS = [((512, 288), 1.0), ((1920, 1080), 0.25)]
THREADS = int(os.environ.get("BIMATTING_BENCH_THREADS", "1"))  # set for the child of --threads 2
CALIBRATION_FRAMES = 16
PROFILED_FRAMES = 3
LAYERS = [("3x3 64->64 @64x64", 64, 64, 64, 64), ("3x3 128->128 @36x64 (1/8 decoder)", 128, 128, 36, 64)]


class NotAvailable(Exception):
    """A part cannot run in this install; the message says why."""


def median_ms(run, repeats, warmup=2):
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


# -- part 1: whole networks ---------------------------------------------------------------------


def bimatting_network():
    """(network, which) -- the packaged default, else a random-initialised BiMatting."""
    try:
        return bimatting.load_model("default"), "packaged default"
    except InputError:
        import torch

        torch.manual_seed(0)
        return build_model("bimatting").eval(), "random init (no packaged default)"


def rvm_onnxruntime(size, ratio):
    from bimatting.weights.rvm_onnx import official_onnx_path  # noqa: PLC0415 - torch loads in the measurement

    with official_onnx_path() as path:
        return OnnxMatter(path, ratio, name="rvm", threads=THREADS)


def rvm_int8_onnxruntime(size, ratio, workdir):
    return OnnxMatter(rvm_int8_path(workdir), ratio, name="rvm-int8", threads=THREADS)


def rvm_int8_path(workdir):
    """RVM's official FP32 ONNX quantised to INT8 (QDQ, per-channel), calibrated once per run on
    the sample clip at both benchmark sizes, states fed back as in use."""
    path = os.path.join(workdir, "rvm_int8.onnx")
    if os.path.exists(path):
        return path
    try:
        import onnxruntime as ort
        from onnxruntime import quantization as q
    except ImportError as error:
        raise NotAvailable(f"no onnxruntime quantization: {error}") from None
    from bimatting.weights.rvm_onnx import official_onnx_path  # noqa: PLC0415 - torch loads in the measurement

    with official_onnx_path() as fp32:
        session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
        feeds = []
        for size, ratio in RESOLUTIONS:
            states = [np.zeros((1, 1, 1, 1), np.float32)] * 4
            for frame in sample_frames(CALIBRATION_FRAMES, size=size):
                feed = {
                    "src": to_nchw(frame),
                    "downsample_ratio": np.array([ratio], np.float32),
                    **{f"r{k}i": state for k, state in enumerate(states, 1)},
                }
                feeds.append(feed)
                states = session.run(["r1o", "r2o", "r3o", "r4o"], feed)

        class Calibration(q.CalibrationDataReader):
            def __init__(self):
                self.feeds = iter(feeds)

            def get_next(self):
                return next(self.feeds, None)

        # per-channel DequantizeLinear needs opset >= 13; the official file is opset 12
        import onnx
        from onnx import version_converter

        opset13 = os.path.join(workdir, "rvm_fp32_opset13.onnx")
        onnx.save(version_converter.convert_version(onnx.load(str(fp32)), 13), opset13)
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process would split the table
        try:
            q.quantize_static(
                opset13,
                path,
                Calibration(),
                quant_format=q.QuantFormat.QDQ,
                per_channel=True,
                activation_type=q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
            )
        finally:
            logging.getLogger().setLevel(level)
    return path


def int8_error(size, ratio, workdir, frames):
    """pha mean |INT8 - FP32| over `frames` frames of the sample clip (states carried)."""
    fp32, int8 = rvm_onnxruntime(size, ratio), rvm_int8_onnxruntime(size, ratio, workdir)
    diffs = []
    for frame in sample_frames(frames, size=size):
        x = to_nchw(frame)
        diffs.append(float(np.abs(fp32.infer(x)[1] - int8.infer(x)[1]).mean()))
    return float(np.mean(diffs))


def bimatting_onnxruntime(size, ratio, network):
    try:
        from bimatting.export.exporter import build_onnx  # noqa: PLC0415 - optional part (NotAvailable)
    except ImportError as error:
        raise NotAvailable(f"no exporter: {error}") from None
    return OnnxMatter(build_onnx(network, "bimatting"), ratio, name="bimatting", threads=THREADS)


def bimatting_tvm_host(size, ratio, network, workdir):
    try:
        import onnx

        from bimatting.deploy.compiler.build import compile_model  # noqa: PLC0415 - optional part (NotAvailable)
        from bimatting.export.exporter import build_onnx  # noqa: PLC0415 - optional part (NotAvailable)
    except ImportError as error:
        raise NotAvailable(f"needs the exporter and the TVM compiler: {error}") from None
    source = os.path.join(workdir, "bimatting.onnx")
    if not os.path.exists(source):
        onnx.save(build_onnx(network, "bimatting"), source)
    path = os.path.join(workdir, f"bimatting-host-{size[0]}x{size[1]}.tar")
    if not os.path.exists(path):  # the 2-thread child reuses the parent's artifacts
        compile_model(source, "host", path, resolution=size, downsample_ratio=ratio)  # ~1-2 min each
    return TvmMatter(path, ratio)


def network_latency(matter, size, frames):
    """Median ms per frame over `frames` consecutive frames of the sample clip (states carried)."""
    clip = [to_nchw(frame) for frame in sample_frames(frames + 2, size=size)]
    index = iter(range(10**9))
    return median_ms(lambda: matter.infer(clip[next(index) % len(clip)]), repeats=frames, warmup=2)


ENGINES = ["RVM FP32, onnxruntime", "RVM INT8, onnxruntime", "BiMatting, onnxruntime", "BiMatting, TVM host"]


def part_networks(frames, workdir, breakdown=True):
    """{(engine, "WxH"): ms or "n/a (...)"}, which weights, {"WxH": op groups of the host artifact},
    {"WxH": INT8 pha error}."""
    network, which = bimatting_network()
    makers = {
        "RVM FP32, onnxruntime": lambda s, r: rvm_onnxruntime(s, r),
        "RVM INT8, onnxruntime": lambda s, r: rvm_int8_onnxruntime(s, r, workdir),
        "BiMatting, onnxruntime": lambda s, r: bimatting_onnxruntime(s, r, network),
        "BiMatting, TVM host": lambda s, r: bimatting_tvm_host(s, r, network, workdir),
    }
    results, groups, int8 = {}, {}, {}
    for name in ENGINES:
        for size, ratio in RESOLUTIONS:
            key = (name, f"{size[0]}x{size[1]}")
            try:
                matter = makers[name](size, ratio)
                results[key] = network_latency(matter, size, frames)
                if breakdown and name == "BiMatting, TVM host":
                    groups[key[1]] = operator_groups(matter, size)
                if name == "RVM INT8, onnxruntime":
                    int8[key[1]] = int8_error(size, ratio, workdir, frames)
            except NotAvailable as reason:
                results[key] = f"n/a ({reason})"
            except Exception as error:  # report and go on: one table per run
                results[key] = f"n/a ({type(error).__name__}: {str(error).splitlines()[0][:100]})"
    return results, which, groups, int8


def operator_groups(matter, size):
    """ms per frame by operator group of a TvmMatter's artifact (bimatting bench's grouping)."""
    return profile_groups(matter.compiled, matter.runner, sample_frames(PROFILED_FRAMES, size=size), ("pha",))


def two_thread_networks(frames, workdir):
    """The networks of part 1 with 2 threads, measured by a child of this script."""
    env = dict(os.environ, BIMATTING_BENCH_THREADS="2", TVM_NUM_THREADS="2", OMP_NUM_THREADS="2")
    command = [
        sys.executable,
        __file__,
        "--frames",
        str(frames),
        "--networks-only",
        "--json",
        "--no-memory",
        "--no-second-thread",
        "--workdir",
        workdir,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1][:100]
        return {
            (name, f"{w}x{h}"): f"n/a (2-thread run failed: {reason})" for name in ENGINES for (w, h), _ in RESOLUTIONS
        }
    measured = json.loads(done.stdout)["networks"]
    return {tuple(key.split(" @ ")): value for key, value in measured.items()}


# -- part 3: footprint -----------------------------------------------------------------------------

RVM_ONLY = """
import sys, glob, importlib.resources, cv2, numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = 1
path = importlib.resources.files(sys.argv[2]) / sys.argv[3]
session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
states = [np.zeros((1, 1, 1, 1), np.float32)] * 4
for name in sorted(glob.glob(sys.argv[1] + "/*.png")):
    src = cv2.cvtColor(cv2.imread(name), cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None].astype(np.float32) / 255
    outputs = session.run(None, {"src": src, "downsample_ratio": np.array([1.0], np.float32),
                                 **{f"r{k}i": s for k, s in enumerate(states, 1)}})
    states = outputs[2:6]
"""


# A small launcher runs the command and reports its child's peak RSS: measured from this (large)
# process, a forked child would count the parent's pages it starts with.
LAUNCHER = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def peak_rss_mb(command, env=None):
    """Peak resident memory (MB) of a command run in its own process."""
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *command], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["failed"])[-1][:100])
    return int(done.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux


def part_memory(workdir, frames):
    """{"RVM FP32, onnxruntime script": MB, "bimatting matte --artifact": MB} at 512x288."""
    import cv2

    clip = os.path.join(workdir, "clip")
    os.makedirs(clip, exist_ok=True)
    for index, frame in enumerate(sample_frames(frames, size=(512, 288))):
        cv2.imwrite(
            os.path.join(clip, f"{index:04d}.png"), cv2.cvtColor(np.uint8(frame * 255 + 0.5), cv2.COLOR_RGB2BGR)
        )
    artifact = os.path.join(workdir, "bimatting-host-512x288.tar")
    results = {}
    env = dict(os.environ, TVM_NUM_THREADS="1", OMP_NUM_THREADS="1")
    # torch loads in the measurement
    from bimatting.weights.rvm_onnx import OFFICIAL_FILE, OFFICIAL_PACKAGE  # noqa: PLC0415

    runs = {
        "RVM FP32, onnxruntime script": [sys.executable, "-c", RVM_ONLY, clip, OFFICIAL_PACKAGE, OFFICIAL_FILE],
        "bimatting matte --artifact": [
            sys.executable,
            "-m",
            "bimatting",
            "matte",
            clip,
            "--artifact",
            artifact,
            "-o",
            os.path.join(workdir, "matte-out"),
            "--output-type",
            "alpha",
        ],
    }
    for name, command in runs.items():
        if name.startswith("bimatting") and not os.path.exists(artifact):
            results[name] = "n/a (no 512x288 host artifact: part 1 could not compile it)"
            continue
        try:
            results[name] = peak_rss_mb(command, env)
        except Exception as error:  # report and go on
            results[name] = f"n/a ({type(error).__name__}: {error})"
    return results


# -- part 2: one binary conv layer vs float ------------------------------------------------------


def layer_operands(cin, cout, seed=0):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    return weight, rng.standard_normal(cout).astype(np.float32)


def binary_layer_ms(cin, cout, height, width, repeats):
    try:
        import tvm

        from bimatting.binops import layout, reference  # noqa: PLC0415 - optional part (NotAvailable)
        from bimatting.binops.geometry import ConvGeometry  # noqa: PLC0415 - optional part (NotAvailable)

        # optional part (NotAvailable)
        from bimatting.deploy.compiler.kernels.standalone import BinaryConvKernel  # noqa: PLC0415
    except ImportError as error:
        raise NotAvailable(f"no bitserial kernels: {error}") from None
    weight, bias = layer_operands(cin, cout)
    w_packed = layout.pack(layout.sign(weight))
    alpha = np.abs(weight).mean(axis=(1, 2, 3)).astype(np.float32)
    geometry = ConvGeometry(height, width, cin, cout, (3, 3), (1, 1), (1, 1, 1, 1))
    target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": 1})
    kernel = BinaryConvKernel(geometry, w_packed, alpha, bias, target)
    lib = kernel.build()
    module = lib.mod if hasattr(lib, "mod") else lib
    device = tvm.cpu()
    x = np.random.default_rng(1).standard_normal((1, cin, height, width)).astype(np.float32)
    # Correctness first: the kernel against the numpy reference of the same binary conv.
    expected = (
        alpha[None, :, None, None]
        * reference.binary_conv2d(layout.pack(layout.sign(x)), w_packed, cin, pads=(1, 1, 1, 1))
        + bias[None, :, None, None]
    )
    got = kernel.run(lib, x, device)
    if not np.allclose(got, expected, rtol=1e-5, atol=1e-4):
        raise RuntimeError(f"bitserial kernel disagrees with numpy (max diff {np.abs(got - expected).max():.3g})")
    x_dev, packed, operands, out = kernel.arrays(x, device)

    pack, conv = module[f"pack{kernel.index}"], module[f"conv{kernel.index}"]

    def run():
        pack(x_dev, packed)
        conv(packed, *operands, out)

    pack(x_dev, packed)
    # (float in, packed in): the layer as the first of a chain, and as a layer whose input the
    # previous binary layer already packed (the conv alone, float out)
    return median_ms(run, repeats), median_ms(lambda: conv(packed, *operands, out), repeats)


def float_layer_onnxruntime_ms(cin, cout, height, width, repeats):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight, bias = layer_operands(cin, cout)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, height, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, height, width])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, cin, height, width)).astype(np.float32)
    return median_ms(lambda: session.run(["y"], {"x": x}), repeats)


def float_layer_torch_ms(cin, cout, height, width, repeats):
    import torch

    weight, bias = (torch.from_numpy(a) for a in layer_operands(cin, cout))
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, cin, height, width)).astype(np.float32))
    with torch.inference_mode():
        return median_ms(lambda: torch.nn.functional.conv2d(x, weight, bias, padding=1), repeats)


def part_layers(repeats):
    rows = []
    for name, cin, cout, height, width in LAYERS:
        row = {"layer": name}
        for key, measure in (
            ("binary_tvm", binary_layer_ms),
            ("float_onnxruntime", float_layer_onnxruntime_ms),
            ("float_torch", float_layer_torch_ms),
        ):
            try:
                row[key] = measure(cin, cout, height, width, repeats)
            except NotAvailable as reason:
                row[key] = f"n/a ({reason})"
            except Exception as error:  # report and go on: one table per run
                row[key] = f"n/a ({type(error).__name__}: {str(error).splitlines()[0][:100]})"
        binary = row["binary_tvm"]
        row["binary_tvm"], row["binary_tvm_packed_input"] = binary if isinstance(binary, tuple) else (binary, binary)
        rows.append(row)
    return rows


# -- the table -------------------------------------------------------------------------------------


def fmt(value, notes, unit=" ms"):
    """A measurement, or 'n/a [k]' with the reason kept as footnote k."""
    if isinstance(value, float):
        return f"{value:.2f}{unit}"
    if value not in notes:
        notes.append(value)
    return f"n/a [{notes.index(value) + 1}]"


def print_table(result):
    notes, networks, two = [], result["networks"], result.get("networks_2_threads", {})
    print(
        f"bimatting speed, {platform.processor() or platform.machine()}, 1 thread (onnxruntime, torch, TVM)"
        f"{' and 2 threads' if two else ''}"
    )
    print(f"BiMatting weights: {result['weights']}\n")
    columns = [(f"{w}x{h}", f"{w}x{h} s={r:g}") for (w, h), r in RESOLUTIONS]
    header = "".join(f"{label:>24}" for _, label in columns)
    if two:
        header += "".join(f"{label + ' 2 thr':>36}" for _, label in columns)
    print(f"{'per-frame median':<24}" + header)
    for name in ENGINES:
        cells = [_cell(networks, name, size, networks, notes) for size, _ in columns]
        if two:
            cells += [_cell(two, name, size, networks, notes, own=networks) for size, _ in columns]
        print(
            f"{name:<24}"
            + "".join(f"{c:>24}" for c in cells[: len(columns)])
            + "".join(f"{c:>36}" for c in cells[len(columns) :])
        )
    print(
        "(ratios: RVM FP32 onnxruntime latency at 1 thread / this engine's; > 1 is faster than RVM;"
        + (" 2-thread cells also give the gain over the same engine at 1 thread)" if two else ")")
    )
    for size, error in result.get("int8_pha_error", {}).items():
        print(f"RVM INT8 against FP32 at {size}: pha mean |diff| {error:.2e}")
    for size, groups in result.get("host_groups_ms", {}).items():
        parts = ", ".join(f"{name.replace('_', ' ')} {groups[name]:.1f}" for name in GROUP_ORDER if name in groups)
        print(
            f"TVM host {size}, ms per frame by group: {parts} (sum {sum(groups.get(n, 0) for n in GROUP_ORDER):.1f}"
            f" of {groups.get('frame_ms_while_profiled', float('nan')):.1f} while profiled)"
        )
    if "layers" in result:  # not with --networks-only
        print_layers(result["layers"], notes)
    memory = result.get("peak_rss_mb")
    if memory:
        print(
            "\npeak resident memory, 512x288: "
            + ", ".join(f"{name} {fmt(value, notes, ' MB')}" for name, value in memory.items())
        )
    for index, note in enumerate(notes, 1):
        print(f"[{index}] {note}")


def print_layers(layers, notes):
    print()
    print(
        f"{'one 3x3 conv layer':<36}{'binary (TVM)':>14}{'packed in':>11}{'FP32 onnxruntime':>18}"
        f"{'FP32 torch':>12}{'speedup':>9}{'packed in':>11}"
    )
    for row in layers:
        floats = [row[k] for k in ("float_onnxruntime", "float_torch") if isinstance(row[k], float)]
        binary, packed_in = row["binary_tvm"], row["binary_tvm_packed_input"]
        float_in_speedup, packed_in_speedup = (
            f"{min(floats) / b:.1f}x" if floats and isinstance(b, float) else "n/a" for b in (binary, packed_in)
        )
        print(
            f"{row['layer']:<36}{fmt(binary, notes):>14}{fmt(packed_in, notes):>11}"
            f"{fmt(row['float_onnxruntime'], notes):>18}{fmt(row['float_torch'], notes):>12}"
            f"{float_in_speedup:>9}{packed_in_speedup:>11}"
        )
    print(
        "(speedup: the faster float conv / the binary conv, float in and float out both; packed in: the"
        " binary conv reading\n the bits the previous binary layer packed, float out)"
    )


GROUP_ORDER = ("binary_convs", "bit_packing", "float_convs", "sab_mask", "resize_concat", "elementwise", "runtime")


def _cell(table, name, size, baseline_table, notes, own=None):
    value, base = table.get((name, size), "n/a (not run)"), baseline_table.get(("RVM FP32, onnxruntime", size))
    text = fmt(value, notes)
    if isinstance(value, float) and isinstance(base, float):
        text += f" ({base / value:.2f}x"
        one = own.get((name, size)) if own else None
        text += f", {one / value:.2f}x of 1 thr)" if isinstance(one, float) else ")"
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8, help="timed frames per network and resolution")
    parser.add_argument("--layer-repeats", type=int, default=50, help="timed calls per conv layer")
    parser.add_argument("--no-second-thread", action="store_true", help="skip the 2-thread column")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory part")
    parser.add_argument("--networks-only", action="store_true", help="part 1 only (the 2-thread child)")
    parser.add_argument("--workdir", help="reuse compiled artifacts and the INT8 model in this folder")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or scratch
        os.makedirs(workdir, exist_ok=True)  # a new --workdir is filled on this run, reused on the next
        networks, which, groups, int8 = part_networks(args.frames, workdir, breakdown=not args.networks_only)
        result = {
            "threads": THREADS,
            "weights": which,
            "networks": networks,
            "host_groups_ms": groups,
            "int8_pha_error": int8,
        }
        if not args.networks_only:
            if not args.no_second_thread:
                result["networks_2_threads"] = two_thread_networks(args.frames, workdir)
            if not args.no_memory:
                result["peak_rss_mb"] = part_memory(workdir, max(args.frames, 8))
            result["layers"] = part_layers(args.layer_repeats)
    if args.json:
        plain = dict(result, networks={" @ ".join(k): v for k, v in networks.items()})
        if "networks_2_threads" in result:
            plain["networks_2_threads"] = {" @ ".join(k): v for k, v in result["networks_2_threads"].items()}
        print(json.dumps(plain, indent=2))
        return
    print_table(result)


if __name__ == "__main__":
    main()
