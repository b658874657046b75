"""Bitserial kernels vs float convolution of the same shape, on this machine (host target).

    python bench/bitserial_kernels.py                       # 64->64 3x3 at 64x64, 1 and 2 threads
    python bench/bitserial_kernels.py --shape 128,128,32,32 --threads 1 --json

Times (median of repeats, microseconds): the activation pack (float NCHW -> packed words), the
binary conv with its output transform, TVM's float conv (the FP layers' manual schedule,
deploy/compiler/schedules/fp.py) and onnxruntime's float conv. Kernels come from the same code a compiled
network uses. Busy machines give noisy numbers: compare columns of one run.
"""

import argparse
import json
import os
import time

import numpy as np

from bimatting.binops import layout
from bimatting.deploy.target import resolve


def _tvm_threads(count):
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(1, count)  # 1: no affinity pinning


def _median_us(timer):
    return float(np.median(timer.results) * 1e6)


def bench_binary(cin, cout, height, width, target, repeat):
    import tvm

    from bimatting.binops.geometry import ConvGeometry  # noqa: PLC0415 - loads onnx, as TVM below

    # TVM loads in the measurement
    from bimatting.deploy.compiler.kernels.standalone import BinaryConvKernel  # noqa: PLC0415

    rng = np.random.default_rng(0)
    geometry = ConvGeometry(height, width, cin, cout, (3, 3), (1, 1), (1, 1, 1, 1))
    x = rng.standard_normal((1, cin, height, width)).astype(np.float32)
    w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    kernel = BinaryConvKernel(geometry, layout.pack(w), np.ones(cout), np.zeros(cout), target)
    module = kernel.build().mod
    device = tvm.cpu()
    x_dev, packed, operands, out = kernel.arrays(x, device)
    pack = module.time_evaluator("pack0", device, number=20, repeat=repeat)(x_dev, packed)
    conv = module.time_evaluator("conv0", device, number=20, repeat=repeat)(packed, *operands, out)
    return _median_us(pack), _median_us(conv)


def build_float_conv(cin, cout, height, width, target):
    """A float 3x3 conv (padding 1) compiled for `target` the way `compile_model` compiles FP layers;
    the Relax executable."""
    from tvm import relax

    from bimatting.deploy.compiler import build  # noqa: PLC0415 - TVM loads in the measurement

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, cin, height, width), "float32"))
    w = relax.Var("w", relax.TensorType((cout, cin, 3, 3), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit_output(bb.emit(relax.op.nn.conv2d(x, w, padding=(1, 1))))
        bb.emit_func_output(y)
    with target:
        mod = build.pipeline_front(target)(bb.get())
    return build._compile(mod, target, None)


def bench_tvm_float(cin, cout, height, width, target, repeat):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(build_float_conv(cin, cout, height, width, target), tvm.cpu())
    rng = np.random.default_rng(1)
    vm.set_input(
        "main",
        tvm.runtime.tensor(rng.standard_normal((1, cin, height, width)).astype(np.float32)),
        tvm.runtime.tensor(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)),
    )
    return _median_us(vm.time_evaluator("invoke_stateful", tvm.cpu(), number=5, repeat=repeat)("main"))


def bench_onnxruntime(cin, cout, height, width, threads, repeat):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    weight = numpy_helper.from_array(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, height, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[weight],
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        helper.make_model(graph).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    x = rng.standard_normal((1, cin, height, width)).astype(np.float32)
    times = []
    for _ in range(repeat * 5):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="64,64,64,64", help="CIN,COUT,H,W (3x3, stride 1, pad 1)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cin, cout, height, width = (int(v) for v in args.shape.split(","))

    target = resolve("host").tvm_target
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        _tvm_threads(threads)
        pack, conv = bench_binary(cin, cout, height, width, target, args.repeat)
        tvm_fp = bench_tvm_float(cin, cout, height, width, target, args.repeat)
        ort_fp = bench_onnxruntime(cin, cout, height, width, threads, args.repeat)
        rows.append(
            {
                "threads": threads,
                "pack_us": pack,
                "bconv_us": conv,
                "tvm_fp32_us": tvm_fp,
                "onnxruntime_fp32_us": ort_fp,
                "speedup_vs_ort": ort_fp / (pack + conv),
                "cpu": str(target.attrs["mcpu"]),
                "shape": [cin, cout, height, width],
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{cin}->{cout} 3x3 at {height}x{width} on {rows[0]['cpu']} ({os.cpu_count()} cores), median us")
    print("threads   pack  bconv  pack+bconv  tvm fp32  onnxruntime fp32  speedup vs ort")
    for r in rows:
        print(
            f"{r['threads']:>7} {r['pack_us']:>6.0f} {r['bconv_us']:>6.0f} {r['pack_us'] + r['bconv_us']:>11.0f}"
            f" {r['tvm_fp32_us']:>9.0f} {r['onnxruntime_fp32_us']:>17.0f} {r['speedup_vs_ort']:>15.1f}x"
        )


if __name__ == "__main__":
    main()
