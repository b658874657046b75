#!/usr/bin/env python
"""BiMatting vs RVM on this machine: one run, one thread, one table (run by hand, not by CI).

    python bench/speed.py [--frames 8] [--layer-repeats 50] [--json]

Part 1, whole network, per-frame median latency with the recurrent state carried (the network
only: frames are converted to NCHW before the clock starts):
    RVM FP32 (MobileNetV3, RVM's official ONNX) in onnxruntime
    BiMatting in onnxruntime (bimatting export; binary convs run as their ONNX function bodies)
    BiMatting compiled by TVM for `host` (bitserial XNOR/popcount kernels)
at 512x288 (s = 1) and 1920x1080 (s = 0.25); ratios are RVM's latency over each engine's.

Part 2, one binary 3x3 convolution (float in, float out: pack + XNOR/popcount conv + output
transform) against the fastest float conv of the same shape (onnxruntime and torch, FP32):
    64 -> 64 channels at 64x64 (an encoder-sized layer)
    128 -> 128 channels at 36x64 (a decoder layer at 1/8 of 512x288)

The BiMatting weights are the packaged default model when this install has one, else a
random-initialised network (latency does not depend on the weights; the table says which).
Parts whose pieces are missing print "n/a (reason)".
"""
import os

# One thread everywhere, set before the libraries start their pools.
os.environ.setdefault("TVM_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

RESOLUTIONS = [((512, 288), 1.0), ((1920, 1080), 0.25)]
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
    import bimatting
    from bimatting.errors import InputError
    from bimatting.models import build_model

    try:
        return bimatting.load_model("default"), "packaged default"
    except InputError:
        import torch

        torch.manual_seed(0)
        return build_model("bimatting").eval(), "random init (no packaged default)"


def rvm_onnxruntime(size, ratio):
    from bimatting.matting import OnnxMatter
    from bimatting.rvm_onnx import official_onnx_path

    with official_onnx_path() as path:
        return OnnxMatter(path, ratio, name="rvm", threads=1)


def bimatting_onnxruntime(size, ratio, network):
    from bimatting.matting import OnnxMatter

    try:
        from bimatting.export.exporter import build_onnx
    except ImportError as error:
        raise NotAvailable(f"no exporter: {error}") from None
    return OnnxMatter(build_onnx(network, "bimatting"), ratio, name="bimatting", threads=1)


def bimatting_tvm_host(size, ratio, network, workdir):
    from bimatting.matting import TvmMatter

    try:
        import onnx

        from bimatting.deploy.compiler.build import compile_model
        from bimatting.export.exporter import build_onnx
    except ImportError as error:
        raise NotAvailable(f"needs the exporter and the TVM compiler: {error}") from None
    source = os.path.join(workdir, "bimatting.onnx")
    if not os.path.exists(source):
        onnx.save(build_onnx(network, "bimatting"), source)
    path = os.path.join(workdir, f"bimatting-host-{size[0]}x{size[1]}.tar")
    compile_model(source, "host", path, resolution=size, downsample_ratio=ratio)  # ~1-2 min each
    return TvmMatter(path, ratio)


def network_latency(matter, size, frames):
    """Median ms per frame over `frames` consecutive frames of the sample clip (states carried)."""
    from bimatting.frames import to_nchw
    from bimatting.samples import sample_frames

    clip = [to_nchw(frame) for frame in sample_frames(frames + 2, size=size)]
    index = iter(range(10 ** 9))
    return median_ms(lambda: matter.infer(clip[next(index) % len(clip)]), repeats=frames, warmup=2)


def part_networks(frames, workdir):
    network, which = bimatting_network()
    engines = [("RVM FP32, onnxruntime", lambda s, r: rvm_onnxruntime(s, r)),
               ("BiMatting, onnxruntime", lambda s, r: bimatting_onnxruntime(s, r, network)),
               ("BiMatting, TVM host", lambda s, r: bimatting_tvm_host(s, r, network, workdir))]
    results = {}
    for name, make in engines:
        for size, ratio in RESOLUTIONS:
            key = (name, f"{size[0]}x{size[1]}")
            try:
                results[key] = network_latency(make(size, ratio), size, frames)
            except NotAvailable as reason:
                results[key] = f"n/a ({reason})"
            except Exception as error:  # report and go on: one table per run
                results[key] = f"n/a ({type(error).__name__}: {str(error).splitlines()[0][:100]})"
    return results, which


# -- part 2: one binary conv layer vs float ------------------------------------------------------

def layer_operands(cin, cout, seed=0):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    return weight, rng.standard_normal(cout).astype(np.float32)


def binary_layer_ms(cin, cout, height, width, repeats):
    try:
        import tvm

        from bimatting.binops import layout, reference
        from bimatting.binops.geometry import ConvGeometry
        from bimatting.deploy.compiler.kernels.standalone import BinaryConvKernel
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
    expected = alpha[None, :, None, None] * reference.binary_conv2d(
        layout.pack(layout.sign(x)), w_packed, cin, pads=(1, 1, 1, 1)) + bias[None, :, None, None]
    got = kernel.run(lib, x, device)
    if not np.allclose(got, expected, rtol=1e-5, atol=1e-4):
        raise RuntimeError(f"bitserial kernel disagrees with numpy (max diff {np.abs(got - expected).max():.3g})")
    x_dev, packed, operands, out = kernel.arrays(x, device)

    pack, conv = module[f"pack{kernel.index}"], module[f"conv{kernel.index}"]

    def run():
        pack(x_dev, packed)
        conv(packed, *operands, out)
    return median_ms(run, repeats)


def float_layer_onnxruntime_ms(cin, cout, height, width, repeats):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight, bias = layer_operands(cin, cout)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, height, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, height, width])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
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
        for key, measure in (("binary_tvm", binary_layer_ms), ("float_onnxruntime", float_layer_onnxruntime_ms),
                             ("float_torch", float_layer_torch_ms)):
            try:
                row[key] = measure(cin, cout, height, width, repeats)
            except NotAvailable as reason:
                row[key] = f"n/a ({reason})"
            except Exception as error:  # report and go on: one table per run
                row[key] = f"n/a ({type(error).__name__}: {str(error).splitlines()[0][:100]})"
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


def print_table(networks, which, layers, threads_note):
    notes = []
    print(f"bimatting speed, {platform.processor() or platform.machine()}, {threads_note}")
    print(f"BiMatting weights: {which}\n")
    names = ["RVM FP32, onnxruntime", "BiMatting, onnxruntime", "BiMatting, TVM host"]
    print(f"{'per-frame median':<26}" + "".join(f"{f'{w}x{h} s={r:g}':>24}" for (w, h), r in RESOLUTIONS))
    for name in names:
        cells = []
        for (w, h), _ in RESOLUTIONS:
            value, base = networks[(name, f"{w}x{h}")], networks[("RVM FP32, onnxruntime", f"{w}x{h}")]
            ratio = f" ({base / value:.2f}x)" if isinstance(value, float) and isinstance(base, float) else ""
            cells.append(fmt(value, notes) + ratio)
        print(f"{name:<26}" + "".join(f"{c:>24}" for c in cells))
    print("(ratios: RVM onnxruntime latency / this engine's; > 1 is faster than RVM)\n")
    print(f"{'one 3x3 conv layer':<36}{'binary (TVM)':>14}{'FP32 onnxruntime':>18}{'FP32 torch':>12}{'speedup':>9}")
    for row in layers:
        floats = [row[k] for k in ("float_onnxruntime", "float_torch") if isinstance(row[k], float)]
        speedup = f"{min(floats) / row['binary_tvm']:.1f}x" if floats and isinstance(row["binary_tvm"], float) else "n/a"
        print(f"{row['layer']:<36}{fmt(row['binary_tvm'], notes):>14}{fmt(row['float_onnxruntime'], notes):>18}"
              f"{fmt(row['float_torch'], notes):>12}{speedup:>9}")
    print("(speedup: the faster float conv / the binary conv, float in and float out both)")
    for index, note in enumerate(notes, 1):
        print(f"[{index}] {note}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8, help="timed frames per network and resolution")
    parser.add_argument("--layer-repeats", type=int, default=50, help="timed calls per conv layer")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    args = parser.parse_args()
    import tempfile

    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as workdir:
        networks, which = part_networks(args.frames, workdir)
    layers = part_layers(args.layer_repeats)
    if args.json:
        print(json.dumps({"networks": {" @ ".join(k): v for k, v in networks.items()}, "weights": which,
                          "layers": layers}, indent=2))
        return
    print_table(networks, which, layers, "1 thread (onnxruntime, torch, TVM)")


if __name__ == "__main__":
    main()
