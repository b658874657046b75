"""decode0's exact float conv as int16 pair dot products (deploy/compiler/integer_pairs.py,
kernels/pair_dot.py, schedules/pair_dot.py).

The rewrite is checked on the exported default network (which chains it takes, and that its
integer weights are the float weights exactly), and against chains it must refuse. The kernel,
compiled through the network's own pipeline with decode0's masked epilogue, is compared bit for
bit with numpy's int64 sum; on a host with AVX-512 VNNI it runs as `vpdpwssd`.
"""

from fractions import Fraction

import numpy as np
import onnx
import pytest
import tvm
import tvm_ffi
from onnx import numpy_helper
from tvm import relax, tirx

from bimatting.deploy.compiler import build, graph_rewrite, integer_pairs, lowering
from bimatting.deploy.compiler.kernels import pair_dot as pair_kernel
from bimatting.deploy.compiler.schedules import ScheduleModule, kernel_config_for
from bimatting.deploy.target import resolve
from bimatting.errors import InputError
from bimatting.export import exporter
from bimatting.models import build_model
from bimatting.weights.checkpoints import load_model

VNNI_TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake"}
NO_VNNI_TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}


@pytest.fixture(scope="module")
def rewritten_default():
    """The default network's graph after graph_rewrite (the packaged weights or, without them, a
    seeded network of the same structure: the chains' constants come from fixed_point.py either way)."""
    try:
        network = load_model("default", arch="bimatting")
    except InputError:
        network = build_model("bimatting").eval()
    rewritten, _ = graph_rewrite.rewrite(exporter.build_onnx(network, "bimatting"))
    return rewritten


def _constant(model, name):
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def test_the_exact_3x3_chain_becomes_a_pair_conv_with_the_same_weights(rewritten_default):
    paired, count = integer_pairs.rewrite(rewritten_default)
    assert count == 1
    node = next(n for n in paired.graph.node if n.op_type == integer_pairs.PAIR_OP)
    conv = next(n for n in rewritten_default.graph.node if n.output[0] == node.output[0])
    assert conv.op_type == "Conv" and list(integer_pairs._attr(conv, "kernel_shape")) == [3, 3]
    weights = _constant(rewritten_default, conv.input[1]).astype(np.float64)  # [O, 2C, 3, 3]: n then a
    words = numpy_helper.to_array(integer_pairs._attr(node, "weights"))
    step = numpy_helper.to_array(integer_pairs._attr(node, "step")).astype(np.float64)
    halves = words.view(np.int16).reshape(words.shape + (2,)).astype(np.float64)  # little-endian: n low
    low, high = (halves[..., k] * step[:, None, None, None] for k in (0, 1))
    channels = words.shape[1]
    np.testing.assert_array_equal(np.concatenate([low, high], axis=1), weights)
    assert np.all(np.log2(step) == np.round(np.log2(step)))
    removed = {n.name for n in rewritten_default.graph.node} - {n.name for n in paired.graph.node}
    kinds = sorted(n.op_type for n in rewritten_default.graph.node if n.name in removed)
    assert kinds == ["Add", "Clip", "Concat", "Conv", "Relu"] and channels * 2 == weights.shape[1]


def test_the_1x1_chain_keeps_its_float_conv_because_its_integers_need_17_bits(rewritten_default):
    """fixed_point.py picks the finest step keeping sums below 2^24: a 1x1 conv's fan-in is 9x
    smaller than a 3x3's, so its integers are larger than int16 holds."""
    convs = [
        n
        for n in rewritten_default.graph.node
        if n.op_type == "Conv" and integer_pairs._chain(graph_rewrite._Graph(rewritten_default.graph), n) is not None
    ]
    one_by_one = [n for n in convs if list(integer_pairs._attr(n, "kernel_shape")) == [1, 1]]
    assert len(convs) == 2 and len(one_by_one) == 1
    weights = _constant(rewritten_default, one_by_one[0].input[1])
    assert integer_pairs.integer_weights(weights) is None
    # independently: the finest power-of-two step of each channel's weights, from exact fractions
    needed = []
    for channel in weights.astype(np.float64):
        denominator = max(Fraction(float(w)).denominator for w in channel.reshape(-1))
        needed.append(max(abs(Fraction(float(w))) * denominator for w in channel.reshape(-1)))
    assert max(needed) > 2**15 - 1 and min(needed) <= 2**17 - 1


@pytest.mark.parametrize(
    "kind, change", [("g not an integer", lambda s, g: (s, g + 0.5)), ("scale not +-1", lambda s, g: (2 * s, g))]
)
def test_a_binary_conv_output_that_is_not_an_integer_keeps_the_float_conv(rewritten_default, kind, change):
    model = onnx.ModelProto()
    model.CopyFrom(rewritten_default)
    paired, _ = integer_pairs.rewrite(model)
    source = next(n for n in paired.graph.node if n.op_type == integer_pairs.PAIR_OP).input[0]
    producer = next(n for n in model.graph.node if source in n.output)
    for attribute in producer.attribute:
        if attribute.name == "epilogue_values":
            sigma, g = numpy_helper.to_array(attribute.t)
            attribute.t.CopyFrom(
                numpy_helper.from_array(np.stack(change(sigma, g)).astype(np.float32), "epilogue_values")
            )
    assert integer_pairs.integer_range(producer) is None, kind
    assert integer_pairs.rewrite(model)[1] == 0


def test_only_targets_with_vnni_get_pair_convs():
    assert kernel_config_for(tvm.target.Target(VNNI_TARGET)).pair_dot
    assert not kernel_config_for(tvm.target.Target(NO_VNNI_TARGET)).pair_dot
    assert not hasattr(
        kernel_config_for(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})), "pair_dot"
    )


# --- the kernel, with decode0's masked epilogue: relu(conv * step + b) * mask + g -------------------


def _masked_pair_branch(shape, w_n, w_a, step, pads):
    bb = relax.BlockBuilder()
    m = relax.Var("m", relax.TensorType(shape, "float32"))
    out_shape = (shape[0], w_n.shape[0], shape[2], shape[3])
    b = relax.Var("b", relax.TensorType((1, w_n.shape[0], 1, 1), "float32"))
    mask = relax.Var("mask", relax.TensorType((1, 1) + shape[2:], "float32"))
    g = relax.Var("g", relax.TensorType(out_shape, "float32"))
    with bb.function("main", [m, b, mask, g]):
        with bb.dataflow():
            y = lowering.emit_pair_conv(bb, m, pair_kernel.weight_words(w_n, w_a), step, pads)
            y = bb.emit(relax.op.nn.relu(relax.op.add(y, b)))
            out = bb.emit_output(relax.op.add(relax.op.multiply(y, mask), g))
        bb.emit_func_output(out)
    return bb.get()


def _inputs(shape, kernel, seed):
    rng = np.random.default_rng(seed)
    channels, outs = shape[1], 8
    m = rng.integers(-40, 300, shape).astype(np.float32)  # the integers a binary conv makes
    w_n = rng.integers(-1200, 1201, (outs, channels, kernel, kernel))
    w_a = rng.integers(-32768, 32768, (outs, channels, kernel, kernel))  # the whole int16 range
    step = np.ldexp(1.0, rng.integers(-20, -14, outs)).astype(np.float32)
    blocks = rng.random((1, 1, 2, 4)) < 0.5
    blocks[0, 0, 0, 0], blocks[0, 0, 1, 3] = True, False
    mask = np.kron(blocks, np.ones((16, 16)))[:, :, : shape[2], : shape[3]].astype(np.float32)
    m = m * (rng.random(shape) < 0.9)  # masked-out positions are 0
    b = rng.standard_normal((1, outs, 1, 1)).astype(np.float32)
    g = rng.standard_normal((shape[0], outs) + shape[2:]).astype(np.float32)
    return m.astype(np.float32), w_n, w_a, step, b, mask, g


def _scheduled(mod, target):
    with target:
        return ScheduleModule(target)(build.pipeline_front(target)(mod))


def _pair_funcs(scheduled):
    return [f for gv, f in scheduled.functions_items() if "pair_conv" in gv.name_hint]


def _count(func, node_type, test=lambda n: True):
    found = []
    tvm_ffi.structural_walk(func.body, [(node_type, lambda n: found.append(n) if test(n) else None)])
    return len(found)


def _vnni_calls(func):
    return _count(func, tvm.ir.expr.Call, lambda c: "vpdpwssd" in str(c))


@pytest.mark.parametrize(
    "shape, kernel, tensorized",
    [((1, 6, 20, 64), 3, True), ((1, 6, 20, 48), 3, False), ((1, 5, 18, 64), 1, True)],
    ids=["3x3-vnni", "3x3-48-columns", "1x1-vnni"],
)
def test_the_pair_conv_equals_the_integer_sum_and_skips_masked_tiles(shape, kernel, tensorized):
    m, w_n, w_a, step, b, mask, g = _inputs(shape, kernel, seed=kernel + shape[3])
    pads = [kernel // 2] * 4
    acc = pair_kernel.reference(m, w_n, w_a, pads)
    assert np.abs(acc).max() < 2**24  # exact in float32 (integer_pairs.py)
    conv = (acc.astype(np.float64) * step.astype(np.float64)[None, :, None, None]).astype(np.float32)
    expected = np.maximum(conv + b, np.float32(0)) * mask + g

    vnni = tvm.target.Target(VNNI_TARGET)
    funcs = _pair_funcs(_scheduled(_masked_pair_branch(shape, w_n, w_a, step, pads), vnni))
    assert len(funcs) == 1 and _count(funcs[0], tirx.IfThenElse) == 1  # one tile guard: masked.py
    assert (_vnni_calls(funcs[0]) > 0) == tensorized  # 16-column tiles only
    assert (
        _vnni_calls(
            _pair_funcs(
                _scheduled(_masked_pair_branch(shape, w_n, w_a, step, pads), tvm.target.Target(NO_VNNI_TARGET))
            )[0]
        )
        == 0
    )

    host = resolve("host").tvm_target
    lib = build._compile(build.pipeline_front(host)(_masked_pair_branch(shape, w_n, w_a, step, pads)), host, None)
    vm = relax.VirtualMachine(lib, tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(a) for a in (m, b, mask, g)]).numpy()
    np.testing.assert_array_equal(got, expected)  # as vpdpwssd where the host has VNNI, else integer vectors
