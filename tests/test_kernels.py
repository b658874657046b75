"""Bitserial kernels (deploy/kernels + deploy/schedules) against independent references.

The binary convolution must equal the float convolution of the +-1 tensors *exactly*: both
sides are integers well below 2^24, so float32 holds them exactly in any summation order. The
reference is onnxruntime's float Conv on sign(x), sign(w) (zero padding of the +-1 tensor, the
ONNX op's semantics), independent of the XNOR/popcount path. Channel counts cover one word, word
multiples and leftovers (3, 16, 20, 35, 64, 195); odd image sizes put borders on every side.
The same kernels run on the emulated Raspberry Pi 4 (qemu-user, Cortex-A72 ISA) over TVM RPC.
"""

import itertools

import numpy as np
import onnxruntime as ort
import pytest
import tvm
import tvm_ffi
from onnx import TensorProto, helper
from tvm import rpc, s_tir, te, topi
from tvm.s_tir import meta_schedule as ms
from tvm.target.codegen import llvm_get_cpu_features

from bimatting.binops import layout as bit_layout
from bimatting.binops.geometry import ConvGeometry
from bimatting.deploy.compiler import lowering, tuning_database as tuning
from bimatting.deploy.compiler.kernels import bitserial, standalone
from bimatting.deploy.compiler.kernels.bitserial import PackLayout
from bimatting.deploy.compiler.schedules import (
    ScheduleModule,
    fp,
    fp_rules,
    kernel_config_for,
    schedule_kernel,
    scheduled_kernel,
)
from bimatting.deploy.compiler.schedules.primfunc import fresh
from bimatting.deploy.target import fcompile, resolve

CHANNELS = (3, 16, 20, 35, 64, 195)
# (kernel, stride, pads (top, left, bottom, right), dilation)
CONFIGS = [
    (1, 1, (0, 0, 0, 0), 1),
    (1, 2, (0, 0, 0, 0), 1),
    (3, 1, (1, 1, 1, 1), 1),
    (3, 2, (1, 1, 1, 1), 1),
    (3, 1, (2, 2, 2, 2), 2),
    (3, 2, (1, 0, 2, 1), 1),
]
HEIGHT, WIDTH = 13, 11


def float_conv(x, w, strides, pads, dilations):
    """onnxruntime Conv (float32) of x [N, C, H, W] with w [O, C, KH, KW]."""
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], strides=list(strides), pads=list(pads), dilations=list(dilations)
    )
    graph = helper.make_graph(
        [node],
        "conv",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, w.shape),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.astype(np.float32), "w": w.astype(np.float32)})[0]


def _case(channels, config, seed, out_channels=None):
    kernel, stride, pads, dilation = config
    rng = np.random.default_rng(seed)
    out_channels = out_channels or (24, 20, 35)[seed % 3]
    geometry = ConvGeometry(
        HEIGHT, WIDTH, channels, out_channels, (kernel, kernel), (stride, stride), pads, (dilation, dilation)
    )
    x = rng.standard_normal((1, channels, HEIGHT, WIDTH)).astype(np.float32)
    x[0, 0, 0, 0] = 0.0  # sign(0) = +1
    w = rng.standard_normal((out_channels, channels, kernel, kernel)).astype(np.float32)
    return geometry, x, w


def _integer_kernels(target):
    """One kernel per (channels, config) with scale 1, bias 0: the output is D itself."""
    cases = []
    for seed, (channels, config) in enumerate(itertools.product(CHANNELS, CONFIGS)):
        geometry, x, w = _case(channels, config, seed)
        ones, zeros = np.ones(geometry.channels_out), np.zeros(geometry.channels_out)
        kernel = standalone.BinaryConvKernel(geometry, bit_layout.pack(w), ones, zeros, target)
        cases.append((kernel, x, w))
    return cases


def _check_integer_cases(cases, module, device):
    for kernel, x, w in cases:
        g = kernel.geometry
        got = kernel.run(module, x, device)
        want = float_conv(bit_layout.sign(x), bit_layout.sign(w), g.strides, g.pads, g.dilations)
        assert got.shape == want.shape
        assert np.array_equal(got, want), (
            f"C={g.channels_in} k={g.kernel} s={g.strides} pads={g.pads} d={g.dilations}: "
            f"{int((got != want).sum())} of {got.size} values differ"
        )


@pytest.fixture(scope="module")
def host_target():
    return resolve("host").tvm_target


def test_binary_conv_equals_float_conv_of_signs_on_host(host_target):
    cases = _integer_kernels(host_target)
    lib = standalone.build([k for k, _, _ in cases], host_target)
    _check_integer_cases(cases, lib.mod, tvm.cpu())


def test_output_transform_steps_follow_the_graph_order(host_target):
    """scale, bias, LearnableBias, PReLU, bias as float32 ops in order (numpy reference)."""
    geometry, x, w = _case(35, CONFIGS[2], seed=7, out_channels=20)
    rng = np.random.default_rng(1)
    scale, bias, shift, slope, post = (rng.standard_normal(20).astype(np.float32) for _ in range(5))
    steps = [("add", shift), ("prelu", slope), ("add", post), ("mul", scale)]
    kernel = standalone.BinaryConvKernel(geometry, bit_layout.pack(w), scale, bias, host_target, extra_steps=steps)
    got = kernel.run(standalone.build([kernel], host_target).mod, x, tvm.cpu())
    d = float_conv(bit_layout.sign(x), bit_layout.sign(w), geometry.strides, geometry.pads, geometry.dilations)

    def col(v):
        return v[None, :, None, None]

    want = d * col(scale) + col(bias) + col(shift)
    want = np.where(want < 0, want * col(slope), want) + col(post)
    want = want * col(scale)
    # Bit-exact: the kernel rounds every product and sum on its own, as the graph does (no FMA).
    assert want.dtype == np.float32 and np.array_equal(got, want)


def test_masked_variant_is_exactly_zero_where_the_mask_is(host_target):
    geometry, x, w = _case(64, CONFIGS[2], seed=3, out_channels=16)
    rng = np.random.default_rng(2)
    mask = rng.random((1, 1, geometry.out_height, geometry.out_width)).astype(np.float32)
    mask[mask < 0.6] = 0.0  # SAB: a soft (bilinear) mask with exact zeros
    kernel = standalone.BinaryConvKernel(
        geometry, bit_layout.pack(w), np.ones(16), np.zeros(16), host_target, masked=True
    )
    got = kernel.run(standalone.build([kernel], host_target).mod, x, tvm.cpu(), mask=mask)
    dense = float_conv(bit_layout.sign(x), bit_layout.sign(w), geometry.strides, geometry.pads, geometry.dilations)
    want = np.where(mask != 0, dense, 0.0)
    assert np.array_equal(got, want)
    assert (got[np.broadcast_to(mask == 0, got.shape)] == 0).all()


def test_masked_out_tiles_skip_the_popcount_and_still_give_the_dense_result(host_target):
    """masked.py: tiles whose columns are all masked out skip the XNOR/popcount loop. Two frames
    with different masks (the batch index reaches the test), whole rows and whole 8-column
    tiles off, tiles partly on, a partial last tile (37 columns)."""
    geometry = ConvGeometry(9, 37, 35, 16, (3, 3), (1, 1), (1, 1, 1, 1))
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 35, 9, 37)).astype(np.float32)
    w = rng.standard_normal((16, 35, 3, 3)).astype(np.float32)
    mask = np.zeros((2, 1, 9, 37), np.float32)
    mask[0, 0, 2:5, 3:12] = 0.5  # a band over parts of two tiles
    mask[0, 0, 7, 36] = 1.0  # only the partial last tile's last column
    mask[1, 0, :, 16:24] = 1.0  # exactly one whole tile in every row of the second frame
    kernel = standalone.BinaryConvKernel(
        geometry, bit_layout.pack(w), np.ones(16), np.zeros(16), host_target, batch=2, masked=True
    )
    conv = scheduled_kernel(kernel.conv, kernel_config_for(host_target))
    guards = []
    tvm_ffi.structural_walk(conv.body, [(tvm.tirx.IfThenElse, guards.append)])
    assert len(guards) == 1  # the popcount loop is guarded
    got = kernel.run(standalone.build([kernel], host_target).mod, x, tvm.cpu(), mask=mask)
    dense = float_conv(bit_layout.sign(x), bit_layout.sign(w), geometry.strides, geometry.pads, geometry.dilations)
    assert np.array_equal(got, np.where(mask != 0, dense, 0.0))


def test_batch_of_two_frames(host_target):
    geometry, _, w = _case(20, CONFIGS[3], seed=4, out_channels=24)
    x = np.random.default_rng(5).standard_normal((2, 20, HEIGHT, WIDTH)).astype(np.float32)
    kernel = standalone.BinaryConvKernel(geometry, bit_layout.pack(w), np.ones(24), np.zeros(24), host_target, batch=2)
    got = kernel.run(standalone.build([kernel], host_target).mod, x, tvm.cpu())
    want = float_conv(bit_layout.sign(x), bit_layout.sign(w), geometry.strides, geometry.pads, geometry.dilations)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("word", ["uint64", "uint32", "uint16"])
def test_repacking_onnx_bytes_gives_the_same_words_as_packing_floats(word, host_target):
    """A BinaryConv2d fed by uint8 data (not by BinarizePack) re-packs bytes into words."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 35, 7, 9)).astype(np.float32)
    geometry = ConvGeometry(7, 9, 35, 8, (3, 3), (1, 1), (1, 1, 1, 1))
    layout = PackLayout.covering([geometry], word)
    funcs = {"pack": lowering.pack_func(x.shape, layout), "repack": lowering.repack_func((1, 5, 7, 9), 35, layout)}
    mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
    lib = tvm.compile(mod, target=host_target)
    shape = layout.shape(1)
    from_floats, from_bytes = tvm.runtime.empty(shape, word), tvm.runtime.empty(shape, word)
    lib["pack"](tvm.runtime.tensor(x), from_floats)
    lib["repack"](tvm.runtime.tensor(bit_layout.pack(x)), from_bytes)
    assert np.array_equal(from_floats.numpy(), from_bytes.numpy())
    # Words hold channel c at bit c % B of word c // B (bimatting.binops.layout's order, widened).
    words = from_floats.numpy()[0, :, layout.top : layout.top + 7, layout.left : layout.left + 9].transpose(1, 2, 0)
    bits = (words[..., :, None] >> np.arange(int(word[4:]), dtype=word)) & 1  # [y, x, CW, B]
    signs = 1.0 - 2.0 * bits.reshape(7, 9, -1)[..., :35].transpose(2, 0, 1)
    assert np.array_equal(signs, bit_layout.sign(x)[0])


def test_onnx_binarize_pack_and_unpack_ops_match_the_bit_layout(host_target):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 20, 5, 6)).astype(np.float32)
    x[0, :, 0, 0] = 0.0

    funcs = {"bp": lowering.binarize_pack_func(x.shape), "up": lowering.unpack_func((2, 3, 5, 6), 20)}
    kernel_config = kernel_config_for(host_target)
    mod = tvm.IRModule(
        {
            name: schedule_kernel(f, kernel_config).mod["main"].with_attr("global_symbol", name)
            for name, f in funcs.items()
        }
    )
    lib = tvm.compile(mod, target=host_target)
    packed, unpacked = tvm.runtime.empty((2, 3, 5, 6), "uint8"), tvm.runtime.empty(x.shape, "float32")
    lib["bp"](tvm.runtime.tensor(x), packed)
    assert np.array_equal(packed.numpy(), bit_layout.pack(x))
    lib["up"](packed, unpacked)
    assert np.array_equal(unpacked.numpy(), bit_layout.sign(x))


def test_host_code_uses_a_vector_popcount(host_target):
    """AVX-512 VPOPCNTDQ where the CPU has it (vpopcntq), else AVX2's vpshufb nibble table."""
    geometry, _, w = _case(64, CONFIGS[2], seed=9, out_channels=64)
    kernel = standalone.BinaryConvKernel(geometry, bit_layout.pack(w), np.ones(64), np.zeros(64), host_target)
    asm = standalone.build([kernel], host_target).mod.inspect_source("asm")
    if host_target.attrs.get("mtriple", "x86_64").startswith("aarch64"):
        assert "cnt\tv" in asm
    elif "avx512vpopcntdq" in llvm_get_cpu_features(host_target):
        assert "vpopcntq" in asm
    else:
        assert "vpshufb" in asm


# --- the same kernels on the emulated Raspberry Pi 4 -----------------------------------------------


@pytest.fixture(scope="module")
def rpi4_session(emulated_board):
    """An RPC session with the emulated Raspberry Pi 4 (conftest's board; skips without it)."""
    host, port = emulated_board("rpi4")
    return rpc.connect(host, port)


@pytest.mark.emulated
def test_binary_conv_equals_float_conv_of_signs_on_emulated_rpi4(rpi4_session, tmp_path):
    target = resolve("rpi4")
    cases = _integer_kernels(target.tvm_target)
    library = standalone.export([k for k, _, _ in cases], target.tvm_target, tmp_path / "kernels.so", fcompile(target))
    rpi4_session.upload(str(library))
    module = rpi4_session.load_module("kernels.so")
    _check_integer_cases(cases, module, rpi4_session.cpu())


# --- MetaSchedule: the tunable schedule is a valid design space; tuned records are used -----------


def _tunable_case(host_target):
    # 32 output columns: every column tile of the design space divides them
    rng = np.random.default_rng(12)
    geometry = ConvGeometry(HEIGHT, 64, 64, 32, (3, 3), (2, 2), (1, 1, 1, 1))
    x = rng.standard_normal((1, 64, HEIGHT, 64)).astype(np.float32)
    w = rng.standard_normal((32, 64, 3, 3)).astype(np.float32)
    kernel = standalone.BinaryConvKernel(geometry, bit_layout.pack(w), np.ones(32), np.zeros(32), host_target)
    want = float_conv(bit_layout.sign(x), bit_layout.sign(w), geometry.strides, geometry.pads, geometry.dilations)
    return kernel, x, want


def _run_conv(kernel, conv_func, x, host_target):
    pack = schedule_kernel(kernel.pack, kernel.kernel_config).mod["main"]
    mod = tvm.IRModule(
        {"pack0": pack.with_attr("global_symbol", "pack0"), "conv0": conv_func.with_attr("global_symbol", "conv0")}
    )
    kernel.index = 0
    return kernel.run(tvm.compile(mod, target=host_target).mod, x, tvm.cpu())


def _sampled_schedule(kernel, seed):
    """The tunable schedule (MetaSchedule's design space of a binary conv) with sampled tiles."""
    sch = s_tir.Schedule(tvm.IRModule({"main": fresh(kernel.conv)}), seed=seed)
    kernel.kernel_config.schedule_bconv(sch, tunable=True)
    return sch


def test_sampled_tile_sizes_of_the_design_space_stay_exact(host_target):
    kernel, x, want = _tunable_case(host_target)
    decisions = set()
    for seed in range(1, 5):
        sch = _sampled_schedule(kernel, seed)
        decisions.add(tuple(int(v) for v in sch.trace.decisions.values()))
        assert np.array_equal(_run_conv(kernel, sch.mod["main"], x, host_target), want)
    assert decisions and all(len(d) == 2 for d in decisions)  # both tile sizes sampled


def test_a_tuning_record_replaces_the_manual_schedule(host_target):
    kernel, x, want = _tunable_case(host_target)
    sch = _sampled_schedule(kernel, seed=3)
    database = ms.database.MemoryDatabase()
    workload = database.commit_workload(tuning.workload(kernel.conv))
    database.commit_tuning_record(
        ms.database.TuningRecord(
            sch.trace,
            workload,
            run_secs=[1e-4],
            target=host_target,
            args_info=ms.arg_info.ArgInfo.from_prim_func(kernel.conv),
        )
    )
    scheduled = ScheduleModule(host_target, database)._from_database(kernel.conv)
    assert scheduled is not None
    tvm.ir.assert_structural_equal(scheduled.body, sch.mod["main"].body, map_free_vars=True)  # trace replayed
    assert np.array_equal(_run_conv(kernel, scheduled, x, host_target), want)
    assert ScheduleModule(host_target, ms.database.MemoryDatabase())._from_database(kernel.conv) is None


def test_elementwise_chain_with_a_pool_is_scheduled_and_exact(host_target):
    """A ReActNet block's tail as Relax fuses it (residual adds, RPReLU-like arithmetic, the next
    block's 2x2 average pool, an add): the ElementwiseWithReductions rule takes it (vectorized,
    parallel), and the built function equals numpy to float32 rounding of the same operations."""
    x = te.placeholder((1, 8, 18, 32), name="x")
    y = te.placeholder((1, 8, 9, 16), name="y")
    shifted = topi.add(topi.divide(topi.add(x, 0.25), 2.0), x)
    activated = topi.maximum(shifted, topi.multiply(shifted, 0.125))
    pooled = topi.nn.pool2d(activated, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), "avg")
    out = topi.add(pooled, y)
    func = te.create_prim_func([x, y, out])
    rules = fp_rules(host_target)
    assert fp.ElementwiseWithReductions().apply(fp.fresh(func), host_target, False) is not None
    scheduled = fp.apply_rules(func, host_target, rules)
    assert "parallel" in scheduled.script() and "vectorized" in scheduled.script()
    built = tvm.compile(tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")}), target=host_target)
    rng = np.random.default_rng(0)
    xs, ys = (
        rng.standard_normal((1, 8, 18, 32)).astype(np.float32),
        rng.standard_normal((1, 8, 9, 16)).astype(np.float32),
    )
    got = tvm.runtime.tensor(np.zeros((1, 8, 9, 16), np.float32))
    built["main"](tvm.runtime.tensor(xs), tvm.runtime.tensor(ys), got)
    s = (xs + np.float32(0.25)) / np.float32(2) + xs
    a = np.maximum(s, s * np.float32(0.125))
    expected = a.reshape(1, 8, 9, 2, 16, 2).mean(axis=(3, 5), dtype=np.float32) + ys
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_popcount_sums_stay_in_int16_only_while_they_fit():
    """uint16 words accumulate in int16 lanes (NEON uadalp .8h) up to 2^15 - 1 summed bits."""
    assert bitserial.popcount_accumulator("uint16", 9 * 3640) == "int16"  # 3x3, 3,640 channels
    assert bitserial.popcount_accumulator("uint16", 9 * 3648) == "int32"
    assert bitserial.popcount_accumulator("uint32", 9 * 64) == "int32"
    assert bitserial.popcount_accumulator("uint64", 9 * 64) == "int64"
