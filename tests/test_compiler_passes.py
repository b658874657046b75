"""Graph-level compiler passes that must not change a single bit of the result.

* The separable bilinear resize (deploy/compiler/resize.py) against TVM's own 2-D resize2d, the
  formula it replaces: bit-identical on random data, for the refiner's 4x upsample, a 2x one (both
  interpolated by phase, with vector loads) and ratios that are not whole numbers (weights that do
  not repeat), and within float rounding of onnxruntime's Resize, the runtime `bench` verifies
  against.
* The compile-time `where` (deploy/compiler/build.py): a uniform constant condition selects its
  branch, anything else is left alone, and the compiled module computes what the graph did.
* A split's parts become slices (build.py) that fuse into their readers: no split function is
  left and the outputs are the parts, bit for bit.
* Gathers of evenly stepped constant indices become slices (fold.py): the same elements in
  onnxruntime; any other gather is left as it was.
* Channel slices move up to the tensors they come from (channel_slices.py): the refiner's tail
  computes fgr and pha from the low-resolution operands without storing the 4-channel output,
  with the bits the graph computed without the pass; a tensor something else also reads stays.
* A float conv scaled by a [1, 1, H, W] mask (the SAB's masked branch) skips the multiply-adds of
  tiles the mask zeroes (schedules/masked.py): the exact conv's values (integer data, weights in
  steps of 2^-4, so every order of summation gives the same float32), guarded only where the
  output transform cannot tell a skipped tile from a computed one.
* Element-wise producers fuse into the conv that alone reads them (fuse_producers.py): decode0's
  `conv(concat(relu(m), clip(m + 1)))` is one function, its 2C-channel input never stored, with the
  bits of the unfused module; a producer something else also reads stays its own function.
* The float64 projection head's matmul is scheduled pixels-outer (schedules/channel_matmul.py):
  numpy's values, every output channel of a pixel tile computed in one parallel iteration; it
  reads its float32 input through the reshape and cast in front of it (fuse_producers.py), with
  no float64 copy stored.
* A 3x3 conv runs groups of 4 output rows per parallel iteration, their input rows built once
  (schedules/conv_nchw.py): numpy's values.
* A stride-2 conv keeps its padded rows with even and odd columns apart (schedules/fp.py), so its
  taps are contiguous loads: numpy's values (exact integer sums). So does a stride-2 pool whose
  padded width is odd (the encoder's (1, 2) average pools): numpy's values.
"""

import numpy as np
import onnxruntime as ort
import pytest
import tvm
import tvm_ffi
from onnx import TensorProto, helper
from tvm import relax, s_tir, te, tirx, topi

from bimatting.binops.geometry import ConvGeometry
from bimatting.deploy.compiler import build, channel_slices, fold, fuse_producers, lowering
from bimatting.deploy.compiler.float_order import fence_products
from bimatting.deploy.compiler.kernels.bitserial import PackLayout
from bimatting.deploy.compiler.resize import _separable_linear
from bimatting.deploy.compiler.schedules import ScheduleModule, fp, fp_rules, kernel_config_for, masked, schedule_kernel
from bimatting.deploy.compiler.schedules.channel_matmul import ChannelMatmul
from bimatting.deploy.target import resolve

# (input N, C, H, W), (output H, W)
RESIZES = [((1, 4, 27, 48), (108, 192)), ((1, 3, 9, 16), (18, 32)), ((1, 2, 7, 5), (20, 13)), ((1, 1, 8, 15), (17, 30))]


@pytest.fixture(scope="module")
def host_target():
    return resolve("host").tvm_target


def _compiled(func, target):
    """func scheduled by the FP rules and compiled as the network's functions are (fenced products)."""
    scheduled = fp.apply_rules(func, target, fp_rules(target)) or func
    return tvm.compile(
        tvm.IRModule({"main": fence_products(scheduled).with_attr("global_symbol", "main")}), target=target
    )


def _run(lib, array, out_shape):
    device = tvm.cpu()
    out = tvm.runtime.empty(out_shape, "float32", device)
    lib["main"](tvm.runtime.tensor(array, device), out)
    return out.numpy()


def onnxruntime_resize(array, size):
    node = helper.make_node(
        "Resize", ["x", "", "", "sizes"], ["y"], mode="linear", coordinate_transformation_mode="half_pixel"
    )
    sizes = helper.make_tensor("sizes", TensorProto.INT64, [4], list(array.shape[:2]) + list(size))
    graph = helper.make_graph(
        [node],
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, array.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [sizes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": array})[0]


@pytest.mark.parametrize("in_shape, size", RESIZES)
def test_separable_resize_has_the_bits_of_tvms_resize2d(host_target, in_shape, size):
    data = te.placeholder(in_shape, "float32", name="data")
    out_size = [tirx.IntImm("int64", v) for v in size]
    separable = _separable_linear(data, out_size)
    reference = topi.image.resize2d(
        data, [0.0] * 4, out_size, method="linear", coordinate_transformation_mode="half_pixel"
    )
    array = np.random.default_rng(sum(size)).standard_normal(in_shape).astype(np.float32)
    out_shape = in_shape[:2] + size
    ours = _run(_compiled(te.create_prim_func([data, separable]), host_target), array, out_shape)
    theirs = _run(_compiled(te.create_prim_func([data, reference]), host_target), array, out_shape)
    assert np.array_equal(ours, theirs)
    # onnxruntime weighs the four taps in another order: float rounding apart (|values| < ~5).
    np.testing.assert_allclose(ours, onnxruntime_resize(array, size), rtol=0, atol=4e-6)


def test_a_power_of_two_upsample_interpolates_columns_by_phase_with_vector_loads(host_target):
    # The refiner's 4x: the column pass is written per phase (no per-lane gathers), and the
    # schedule keeps it as its own buffer, vectorized along the input columns.
    data = te.placeholder((1, 4, 27, 48), "float32", name="data")
    out = _separable_linear(data, [tirx.IntImm("int64", 108), tirx.IntImm("int64", 192)])
    scheduled = fp.apply_rules(te.create_prim_func([data, out]), host_target, fp_rules(host_target))
    sch = s_tir.Schedule(scheduled)
    loops = [sch.get(loop) for loop in sch.get_loops(sch.get_sblock("resize_phases"))]
    assert "resize_columns" not in scheduled.script()
    # [.., i_outer, p (4 phases, unrolled), i_inner (vectorized)]: the vector runs along input
    # columns (stride 1 in `edge`), one vector per phase.
    assert [loop.kind for loop in loops[-2:]] == [tirx.ForKind.UNROLLED, tirx.ForKind.VECTORIZED]
    assert loops[-2].extent.value == 4 and loops[-1].extent.value > 1


def _where_module(condition):
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((2, 3), "float32"))
    b = relax.Var("b", relax.TensorType((2, 3), "float32"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            doubled = bb.emit(relax.op.add(b, b))
            out = bb.emit_output(relax.op.where(relax.const(condition), relax.op.multiply(a, a), doubled))
        bb.emit_func_output(out)
    return bb.get()


def _calls(mod):
    names = []
    relax.analysis.post_order_visit(
        mod["main"], lambda e: names.append(e.op.name) if isinstance(e, relax.Call) and hasattr(e.op, "name") else None
    )
    return names


@pytest.mark.parametrize(
    "condition, expected", [(np.array([True]), "relax.multiply"), (np.zeros((2, 3), bool), "relax.add")]
)
def test_a_constant_where_becomes_its_branch(condition, expected):
    folded = build._constant_where(_where_module(condition))
    calls = _calls(folded)
    assert "relax.where" not in calls and expected in calls


def test_a_mixed_where_stays_and_computes_the_same(host_target):
    condition = np.array([[True, False, True], [False, True, False]])
    mod = _where_module(condition)
    assert "relax.where" in _calls(build._constant_where(mod))
    with host_target:
        lowered = build.pipeline_front(host_target)(mod)
    executable = build._compile(lowered, host_target, None)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    a = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    b = np.full((2, 3), 0.75, np.float32)
    out = vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy()
    assert np.array_equal(out, np.where(condition, a * a, b + b))


def test_a_same_size_resize_is_its_input(host_target):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 2, 5, 7), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(
                relax.op.image.resize2d(x, (5, 7), method="linear", coordinate_transformation_mode="half_pixel")
            )
        bb.emit_func_output(out)
    with host_target:
        lowered = build.pipeline_front(host_target)(bb.get())
    assert not any("resize" in gvar.name_hint for gvar, _ in lowered.functions_items())
    vm = relax.VirtualMachine(build._compile(lowered, host_target, None), tvm.cpu())
    array = np.random.default_rng(1).standard_normal((1, 2, 5, 7)).astype(np.float32)
    assert np.array_equal(vm["main"](tvm.runtime.tensor(array)).numpy(), array)


@pytest.mark.parametrize("sections", [[3], 2])
def test_a_split_becomes_slices_fused_into_their_readers(host_target, sections):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 6, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            parts = bb.emit(relax.op.split(x, sections, axis=1))
            first = bb.emit(relax.op.clip(relax.op.add(relax.TupleGetItem(parts, 0), relax.const(0.5)), 0.0, 1.0))
            second = bb.emit(relax.op.multiply(relax.TupleGetItem(parts, 1), relax.const(2.0)))
            out = bb.emit_output(relax.Tuple([first, second]))
        bb.emit_func_output(out)
    with host_target:
        lowered = build.pipeline_front(host_target)(bb.get())
    names = [gvar.name_hint for gvar, _ in lowered.functions_items()]
    assert not [n for n in names if n.startswith("split")] and any("strided_slice" in n for n in names), names
    vm = relax.VirtualMachine(build._compile(lowered, host_target, None), tvm.cpu())
    array = np.random.default_rng(2).standard_normal((1, 4, 6, 8)).astype(np.float32)
    got = vm["main"](tvm.runtime.tensor(array))
    cut = 3 if sections == [3] else 2
    assert np.array_equal(got[0].numpy(), np.clip(array[:, :cut] + np.float32(0.5), 0, 1))
    assert np.array_equal(got[1].numpy(), array[:, cut:] * np.float32(2.0))


# (indices, axis, becomes a Slice)
GATHERS = [
    ([1, 5, 9], 3, True),
    ([0, 1, 2, 3, 4, 5, 6, 7, 8], 2, True),
    ([2], 1, True),
    ([0, 2, 3], 3, False),
    ([4, 3, 2], 3, False),
    ([-1], 2, False),
    ([3, 3], 3, False),
    (2, 3, False),
]


def test_evenly_stepped_gathers_become_slices_with_the_same_values():
    nodes, outputs, inits = [], [], []
    for k, (indices, axis, _) in enumerate(GATHERS):
        inits.append(helper.make_tensor(f"i{k}", TensorProto.INT64, np.shape(indices), np.ravel(indices).tolist()))
        nodes.append(helper.make_node("Gather", ["x", f"i{k}"], [f"y{k}"], axis=axis))
        outputs.append(helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "gathers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 9, 13])], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rewritten = fold.gathers_as_slices(model)
    assert [n.op_type for n in rewritten.graph.node] == ["Slice" if sliced else "Gather" for *_, sliced in GATHERS]
    x = np.random.default_rng(3).standard_normal((2, 3, 9, 13)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})

    for ours, theirs in zip(run(rewritten), run(model)):
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs)


def _refiner_tail(also_return_out):
    """fgr, pha = split(upsample(A) * concat(src, gray) + upsample(b)), clamped (fgr + src first),
    the end of the guided-filter refiner, at toy sizes (4x upsample of 4 channels)."""
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((1, 4, 6, 8), "float32"))
    b = relax.Var("b", relax.TensorType((1, 4, 6, 8), "float32"))
    src = relax.Var("src", relax.TensorType((1, 3, 24, 32), "float32"))
    with bb.function("main", [a, b, src]):
        with bb.dataflow():

            def up(t):
                return bb.emit(
                    relax.op.image.resize2d(t, (24, 32), method="linear", coordinate_transformation_mode="half_pixel")
                )

            gray = bb.emit(relax.op.mean(src, axis=[1], keepdims=True))
            fine = bb.emit(relax.op.concat([src, gray], axis=1))
            out = bb.emit(relax.op.add(relax.op.multiply(up(a), fine), up(relax.op.subtract(b, a))))
            parts = bb.emit(relax.op.split(out, [3], axis=1))
            fgr = bb.emit(relax.op.clip(relax.op.add(relax.TupleGetItem(parts, 0), src), 0.0, 1.0))
            pha = bb.emit(relax.op.clip(relax.TupleGetItem(parts, 1), 0.0, 1.0))
            result = bb.emit_output(relax.Tuple([fgr, pha] + ([out] if also_return_out else [])))
        bb.emit_func_output(result)
    return bb.get()


def _lowered_and_outputs(mod, target):
    with target:
        lowered = build.pipeline_front(target)(mod)
    vm = relax.VirtualMachine(build._compile(lowered, target, None), tvm.cpu())
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in ((1, 4, 6, 8), (1, 4, 6, 8), (1, 3, 24, 32))]
    return lowered, [t.numpy() for t in vm["main"](*[tvm.runtime.tensor(x) for x in arrays])]


def _stored_shapes(lowered):
    shapes = []
    relax.analysis.post_order_visit(
        lowered["main"],
        lambda e: (
            shapes.append(tuple(int(d) for d in e.ty.shape))
            if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.call_tir"
            else None
        ),
    )
    return shapes


@pytest.mark.parametrize("also_return_out", [False, True])
def test_channel_slices_move_up_to_the_refiners_low_resolution_operands(host_target, monkeypatch, also_return_out):
    lowered, outputs = _lowered_and_outputs(_refiner_tail(also_return_out), host_target)
    stores_out = (1, 4, 24, 32) in _stored_shapes(lowered)
    assert stores_out == also_return_out  # out is stored only where something else reads it
    monkeypatch.setattr(channel_slices, "push_channel_slices", lambda mod: mod)
    unpushed, reference = _lowered_and_outputs(_refiner_tail(also_return_out), host_target)
    assert (1, 4, 24, 32) in _stored_shapes(unpushed)
    for ours, theirs in zip(outputs, reference):
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs)


def _count_calls(func, op_name):
    found = []
    relax.analysis.post_order_visit(
        func, lambda e: found.append(e) if isinstance(e, relax.Call) and getattr(e.op, "name", "") == op_name else None
    )
    return len(found)


def test_the_slices_of_one_tensor_move_together_or_not_at_all():
    # out = upsample(a) * x, read as out[:, 0:4] (could move: x whole) and out[:, 0:3] (cannot:
    # x is read elsewhere and as large as out). Moving the first alone would compute out twice.
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((1, 4, 6, 8), "float32"))
    x = relax.Var("x", relax.TensorType((1, 4, 24, 32), "float32"))
    with bb.function("main", [a, x]):
        with bb.dataflow():
            up = bb.emit(relax.op.image.resize2d(a, (24, 32), method="linear"))
            out = bb.emit(relax.op.multiply(up, x))
            whole = bb.emit(relax.op.strided_slice(out, axes=[1], begin=[0], end=[4]))
            part = bb.emit(relax.op.strided_slice(out, axes=[1], begin=[0], end=[3]))
            result = bb.emit_output(relax.Tuple([whole, part, x]))
        bb.emit_func_output(result)
    pushed = channel_slices.push_channel_slices(bb.get())["main"]
    assert _count_calls(pushed, "relax.multiply") == 1
    assert _count_calls(pushed, "relax.image.resize2d") == 1


def _masked_branch(divide=False):
    """relu(conv3x3(x) + bias) * mask + g, decode0's masked branch at a toy size (a partial last
    column tile); with divide, relu(...) / (1 + mask) * mask + g, which a skipped tile would change."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 6, 20, 48), "float32"))
    w = relax.Var("w", relax.TensorType((8, 6, 3, 3), "float32"))
    b = relax.Var("b", relax.TensorType((1, 8, 1, 1), "float32"))
    mask = relax.Var("mask", relax.TensorType((1, 1, 20, 48), "float32"))
    g = relax.Var("g", relax.TensorType((1, 8, 20, 48), "float32"))
    with bb.function("main", [x, w, b, mask, g]):
        with bb.dataflow():
            y = relax.op.nn.relu(relax.op.add(relax.op.nn.conv2d(x, w, padding=1), b))
            if divide:
                y = relax.op.divide(y, relax.op.add(mask, relax.const(1.0, "float32")))
            out = bb.emit_output(relax.op.add(relax.op.multiply(y, mask), g))
        bb.emit_func_output(out)
    return bb.get()


def _masked_branch_inputs():
    rng = np.random.default_rng(7)
    x = rng.integers(0, 40, (1, 6, 20, 48)).astype(np.float32)  # like n and a: integers
    w = (rng.integers(-64, 64, (8, 6, 3, 3)) / 16.0).astype(np.float32)  # steps of 2^-4
    b = rng.standard_normal((1, 8, 1, 1)).astype(np.float32)
    blocks = rng.random((1, 1, 2, 3)) < 0.5
    blocks[0, 0, 0, 0], blocks[0, 0, 1, 2] = True, False  # some on, some off
    mask = np.kron(blocks, np.ones((16, 16)))[:, :, :20, :48].astype(np.float32)
    g = rng.standard_normal((1, 8, 20, 48)).astype(np.float32)
    return x, w, b, mask, g


def _has_tile_guard(mod, target):
    with target:
        scheduled = ScheduleModule(target)(build.pipeline_front(target)(mod))
    conv = [f for gv, f in scheduled.functions_items() if "conv2d" in gv.name_hint]
    guards = []
    for func in conv:
        tvm_ffi.structural_walk(func.body, [(tirx.IfThenElse, lambda n: guards.append(n))])
    return bool(guards)


def test_a_conv_scaled_by_a_mask_skips_the_tiles_the_mask_zeroes(host_target, monkeypatch):
    x, w, b, mask, g = _masked_branch_inputs()
    assert 0.2 < mask.mean() < 0.8
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = sum(
        np.einsum("nchw,oc->nohw", padded[:, :, i : i + 20, j : j + 48], w[:, :, i, j].astype(np.float64))
        for i in range(3)
        for j in range(3)
    ).astype(np.float32)  # exact: integers x 2^-4
    expected = np.maximum(conv + b, np.float32(0)) * mask + g

    def run():
        lib = build._compile(build.pipeline_front(host_target)(_masked_branch()), host_target, None)
        vm = relax.VirtualMachine(lib, tvm.cpu())
        return vm["main"](*[tvm.runtime.tensor(a) for a in (x, w, b, mask, g)]).numpy()

    assert _has_tile_guard(_masked_branch(), host_target)
    assert not _has_tile_guard(_masked_branch(divide=True), host_target)
    guarded = run()
    np.testing.assert_array_equal(guarded, expected)
    monkeypatch.setattr(masked, "skip_zero_scaled_tiles", lambda func: func)
    assert not _has_tile_guard(_masked_branch(), host_target)
    np.testing.assert_array_equal(guarded, run())


def _integer_chain_conv(also_return_input, kernel):
    """conv(concat(relu(m), clip(m + 1, 0, 1))) + bias, the float half of fixed_point.IntegerChain."""
    bb = relax.BlockBuilder()
    m = relax.Var("m", relax.TensorType((1, 4, 12, 40), "float32"))
    w = relax.Var("w", relax.TensorType((6, 8, kernel, kernel), "float32"))
    with bb.function("main", [m, w]):
        with bb.dataflow():
            active = relax.op.clip(relax.op.add(m, relax.const(1.0, "float32")), 0.0, 1.0)
            n_and_a = bb.emit(relax.op.concat([relax.op.nn.relu(m), active], axis=1))
            y = relax.op.add(relax.op.nn.conv2d(n_and_a, w, padding=kernel // 2), relax.const(0.25, "float32"))
            result = bb.emit_output(relax.Tuple([y, n_and_a]) if also_return_input else y)
        bb.emit_func_output(result)
    return bb.get()


@pytest.mark.parametrize("kernel", [3, 1])
@pytest.mark.parametrize("also_return_input", [False, True])
def test_an_elementwise_producer_fuses_into_the_conv_that_reads_it(host_target, monkeypatch, kernel, also_return_input):
    rng = np.random.default_rng(11)
    m = rng.integers(-20, 20, (1, 4, 12, 40)).astype(np.float32)
    w = rng.standard_normal((6, 8, kernel, kernel)).astype(np.float32)

    def lowered_and_outputs():
        with host_target:
            lowered = build.pipeline_front(host_target)(_integer_chain_conv(also_return_input, kernel))
        vm = relax.VirtualMachine(build._compile(lowered, host_target, None), tvm.cpu())
        out = vm["main"](tvm.runtime.tensor(m), tvm.runtime.tensor(w))
        return lowered, [t.numpy() for t in (out if also_return_input else [out])]

    lowered, outputs = lowered_and_outputs()
    n_and_a = np.concatenate([np.maximum(m, 0), np.clip(m + 1, 0, 1)], axis=1).astype(np.float64)
    pad = kernel // 2
    padded = np.pad(n_and_a, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    expected = (
        sum(
            np.einsum("nchw,oc->nohw", padded[:, :, i : i + 12, j : j + 40], w[:, :, i, j].astype(np.float64))
            for i in range(kernel)
            for j in range(kernel)
        )
        + 0.25
    )
    np.testing.assert_allclose(outputs[0], expected, rtol=1e-5, atol=1e-4)  # float32 sums of ~72 terms
    fused = [gv.name_hint for gv, f in lowered.functions_items() if "_into_" in gv.name_hint]
    assert bool(fused) != also_return_input  # an input something else reads is stored, not fused
    assert ((1, 8, 12, 40) in _stored_shapes(lowered)) == also_return_input
    monkeypatch.setattr(fuse_producers, "fuse_producers", lambda mod: mod)
    unfused, reference = lowered_and_outputs()
    assert (1, 8, 12, 40) in _stored_shapes(unfused)
    for ours, theirs in zip(outputs, reference):
        np.testing.assert_array_equal(ours, theirs)


def test_the_projection_matmul_computes_every_output_of_a_pixel_tile_together(host_target):
    pixels = 2048
    weight = te.placeholder((4, 16), "float64", name="weight")
    data = te.placeholder((1, 16, pixels), "float64", name="data")
    bias = te.placeholder((4, 1), "float64", name="bias")
    k = te.reduce_axis((0, 16), name="k")
    product = te.compute((1, 4, pixels), lambda n, o, p: te.sum(weight[o, k] * data[n, k, p], axis=k), name="matmul")
    out = te.compute((1, 4, pixels), lambda n, o, p: (product[n, o, p] + bias[o, 0]).astype("float32"), name="out")
    func = te.create_prim_func([weight, data, bias, out])
    scheduled = ChannelMatmul().apply(func, host_target, False).mod["main"]
    outer = scheduled.body.block.body if hasattr(scheduled.body, "block") else scheduled.body
    while not isinstance(outer, tirx.For):
        outer = outer.body
    # parallel over pixel tiles (<= 4 vectors of pixels each), not over the 4 output channels
    assert outer.kind == tirx.ForKind.PARALLEL and int(outer.extent) >= pixels // 32

    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(shape) for shape in ((4, 16), (1, 16, pixels), (4, 1))]
    lib = tvm.compile(
        tvm.IRModule({"main": fence_products(scheduled).with_attr("global_symbol", "main")}), target=host_target
    )
    result = tvm.runtime.empty((1, 4, pixels), "float32", tvm.cpu())
    lib["main"](*[tvm.runtime.tensor(a) for a in arrays], result)
    expected = (np.einsum("ok,nkp->nop", arrays[0], arrays[1]) + arrays[2]).astype(np.float32)
    np.testing.assert_array_equal(result.numpy(), expected)  # float64 sums: equal after rounding to float32


def _wide_projection(height, width):
    """fixed_point.emit_wide_conv1x1's graph: reshape, cast to float64, matmul, + bias, cast back."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, height, width), "float32"))
    w = relax.Var("w", relax.TensorType((4, 16), "float64"))
    b = relax.Var("b", relax.TensorType((4, 1), "float64"))
    with bb.function("main", [x, w, b]):
        with bb.dataflow():
            flat = relax.op.astype(relax.op.reshape(x, (1, 16, height * width)), "float64")
            product = relax.op.add(relax.op.matmul(w, flat), b)
            out = bb.emit_output(relax.op.reshape(relax.op.astype(product, "float32"), (1, 4, height, width)))
        bb.emit_func_output(out)
    return bb.get()


def test_the_projection_widens_its_input_as_it_reads_it(host_target):
    """cast(reshape(x)) fuses into the matmul (fuse_producers.py): no float64 copy of x is
    stored, and the values are numpy's float64 sums rounded once."""
    height, width = 12, 40
    with host_target:
        lowered = build.pipeline_front(host_target)(_wide_projection(height, width))
    assert [gv.name_hint for gv, _ in lowered.functions_items() if "_into_" in gv.name_hint]
    assert (1, 16, height * width) not in _stored_shapes(lowered)
    rng = np.random.default_rng(8)
    x = rng.integers(-300, 300, (1, 16, height, width)).astype(np.float32) * np.float32(0.37)
    w, b = rng.standard_normal((4, 16)), rng.standard_normal((4, 1))
    vm = relax.VirtualMachine(build._compile(lowered, host_target, None), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a) for a in (x, w, b)]).numpy()
    flat = x.reshape(1, 16, -1).astype(np.float64)
    expected = (np.einsum("ok,nkp->nop", w, flat) + b).astype(np.float32).reshape(1, 4, height, width)
    np.testing.assert_array_equal(out, expected)  # float64 sums: equal after rounding to float32


def _allocated_shapes(func):
    """The shapes of the buffers func's blocks allocate."""
    shapes = []
    tvm_ffi.structural_walk(
        func.body,
        [(s_tir.SBlock, lambda b: shapes.extend(tuple(int(d) for d in buffer.shape) for buffer in b.alloc_buffers))],
    )
    return shapes


def _parallel_extents(func):
    extents = []
    tvm_ffi.structural_walk(
        func.body,
        [(tirx.For, lambda loop: extents.append(int(loop.extent)) if loop.kind == tirx.ForKind.PARALLEL else None)],
    )
    return extents


def _assert_exact_3x3_conv(scheduled, target, in_shape, out_channels, stride, seed):
    """The scheduled 3x3 conv (padding 1) gives numpy's values on integer data and weights in steps
    of 1/16, where every order of summation gives the same float32."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-50, 50, in_shape).astype(np.float32)
    w = (rng.integers(-64, 64, (out_channels, in_shape[1], 3, 3)) / 16.0).astype(np.float32)
    height, width = in_shape[2] // stride, in_shape[3] // stride
    lib = tvm.compile(
        tvm.IRModule({"main": fence_products(scheduled).with_attr("global_symbol", "main")}), target=target
    )
    result = tvm.runtime.empty((1, out_channels, height, width), "float32", tvm.cpu())
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), result)
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    expected = sum(
        np.einsum(
            "nchw,oc->nohw",
            padded[:, :, i : i + in_shape[2] : stride, j : j + in_shape[3] : stride],
            w[:, :, i, j].astype(np.float64),
        )
        for i in range(3)
        for j in range(3)
    )
    np.testing.assert_array_equal(result.numpy(), expected.astype(np.float32))


@pytest.mark.parametrize("height, groups", [(64, 16), (18, 18)])
def test_a_3x3_conv_builds_the_input_rows_of_four_output_rows_at_once(host_target, height, groups):
    """Output rows in groups of 4 per parallel iteration where 16 groups remain (conv_nchw.py):
    each group's padded input rows built once; numpy's values (exact integer sums)."""
    data = te.placeholder((1, 4, height, 40), "float32", name="data")
    weight = te.placeholder((8, 4, 3, 3), "float32", name="weight")
    out = topi.nn.conv2d_nchw(data, weight, stride=1, padding=1, dilation=1)
    scheduled = fp.apply_rules(te.create_prim_func([data, weight, out]), host_target, fp_rules(host_target))
    assert _parallel_extents(scheduled) == [groups]
    _assert_exact_3x3_conv(scheduled, host_target, (1, 4, height, 40), 8, stride=1, seed=6)


def test_a_stride_2_conv_reads_its_rows_split_into_even_and_odd_columns(host_target):
    data = te.placeholder((1, 3, 20, 48), "float32", name="data")
    weight = te.placeholder((8, 3, 3, 3), "float32", name="weight")
    out = topi.nn.conv2d_nchw(data, weight, stride=2, padding=1, dilation=1)
    scheduled = fp.apply_rules(te.create_prim_func([data, weight, out]), host_target, fp_rules(host_target))
    assert (1, 3, 22, 2, 25) in _allocated_shapes(scheduled)  # [n, c, padded row, column parity, column // 2]
    _assert_exact_3x3_conv(scheduled, host_target, (1, 3, 20, 48), 8, stride=2, seed=3)


def test_a_stride_2_pool_with_an_odd_padded_width_is_split_into_even_and_odd_columns(host_target):
    """The encoder's 2:1 column pools pad 256 columns to 257: the even/odd split then needs one
    padding slot (it used to refuse, and the pool fell to a generic rule, 3x slower at 512x288)."""
    data = te.placeholder((1, 4, 6, 48), "float32", name="data")
    out = topi.nn.pool2d(
        data,
        kernel=(1, 2),
        stride=(1, 2),
        dilation=(1, 1),
        padding=(0, 0, 0, 1),
        pool_type="avg",
        ceil_mode=False,
        count_include_pad=False,
    )
    scheduled = fp.apply_rules(te.create_prim_func([data, out]), host_target, fp_rules(host_target))
    assert (1, 4, 6, 2, 25) in _allocated_shapes(scheduled)  # 49 padded columns: [.., column parity, column // 2]

    x = np.random.default_rng(4).integers(-50, 50, (1, 4, 6, 48)).astype(np.float32)
    lib = tvm.compile(tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")}), target=host_target)
    result = tvm.runtime.empty((1, 4, 6, 24), "float32", tvm.cpu())
    lib["main"](tvm.runtime.tensor(x), result)
    expected = (x[..., 0::2] + x[..., 1::2]) / np.float32(2)  # pairs: the padded column is never read
    np.testing.assert_array_equal(result.numpy(), expected)


def _upsample_and_pack(channels, height, width, layout, bias):
    """pack(concat(repeat(x, 2, W), repeat(x, 2, W) * s)): a pack reading an expanding producer."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, channels, height, width), "float32"))
    s = relax.Var("s", relax.TensorType((1, channels, height, 2 * width), "float32"))
    with bb.function("main", [x, s]):
        with bb.dataflow():
            wide = bb.emit(relax.op.repeat(x, 2, axis=3))
            both = bb.emit(relax.op.concat([wide, relax.op.multiply(wide, s)], axis=1))
            packed = bb.emit_output(lowering.emit_pack(bb, both, layout, bias=bias))
        bb.emit_func_output(packed)
    return bb.get()


def test_a_pack_computes_the_upsample_it_reads_in_place(host_target):
    """An upsample writes 4x what it reads: fused into the pack that alone reads it
    (fuse_producers.py, schedules/pack_producers.py), its float output is never stored, and the
    packed words are those of packing the stored tensor."""
    channels, height, width = 20, 6, 16
    geometry = ConvGeometry(height, 2 * width, 2 * channels, 8, (3, 3), (1, 1), (1, 1, 1, 1))
    layout = PackLayout.covering([geometry], kernel_config_for(host_target).word_dtype, variants=2)
    rng = np.random.default_rng(4)
    bias = rng.standard_normal((2, 2 * channels)).astype(np.float32)
    with host_target:
        lowered = build.pipeline_front(host_target)(_upsample_and_pack(channels, height, width, layout, bias))
    assert [gv.name_hint for gv, _ in lowered.functions_items() if "_after_" in gv.name_hint]
    assert (1, 2 * channels, height, 2 * width) not in _stored_shapes(lowered)
    x = rng.standard_normal((1, channels, height, width)).astype(np.float32)
    s = rng.standard_normal((1, channels, height, 2 * width)).astype(np.float32)
    x[0, 0, 0, 0] = 0.0  # sign(0) = +1, as the pack alone has it
    vm = relax.VirtualMachine(build._compile(lowered, host_target, None), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(s)).numpy()
    wide = np.repeat(x, 2, axis=3)
    stored = np.concatenate([wide, wide * s], axis=1)
    pack = lowering.pack_func(stored.shape, layout, with_bias=True)
    pack = schedule_kernel(pack, kernel_config_for(host_target)).mod["main"].with_attr("global_symbol", "pack")
    want = tvm.runtime.empty(layout.shape(1), layout.word_dtype)
    tvm.compile(tvm.IRModule({"pack": pack}), target=host_target)["pack"](
        tvm.runtime.tensor(stored), tvm.runtime.tensor(bias), want
    )
    np.testing.assert_array_equal(got, want.numpy())
    assert got.any()


def test_a_computation_repeated_in_the_graph_runs_once(host_target):
    """Two branches pooling the same tensor (the encoder's shortcuts did) share one pool: the
    pipeline eliminates common subexpressions before fusing."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 12, 16), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            first = bb.emit(relax.op.nn.avg_pool2d(x, (2, 2), (2, 2)))
            second = bb.emit(relax.op.nn.avg_pool2d(x, (2, 2), (2, 2)))
            out = bb.emit_output(relax.op.multiply(relax.op.add(first, relax.const(1.0)), second))
        bb.emit_func_output(out)
    with host_target:
        lowered = build.pipeline_front(host_target)(bb.get())
    pools = []
    relax.analysis.post_order_visit(
        lowered["main"],
        lambda e: (
            pools.append(e)
            if isinstance(e, relax.Call)
            and getattr(e.op, "name", "") == "relax.call_tir"
            and "pool" in e.args[0].name_hint
            else None
        ),
    )
    assert len(pools) == 1
    data = np.random.default_rng(3).standard_normal((1, 8, 12, 16)).astype(np.float32)
    vm = relax.VirtualMachine(build._compile(lowered, host_target, None), tvm.cpu())
    pooled = data.reshape(1, 8, 6, 2, 8, 2).mean(axis=(3, 5), dtype=np.float32)
    np.testing.assert_allclose(
        vm["main"](tvm.runtime.tensor(data)).numpy(), (pooled + 1) * pooled, rtol=1e-5, atol=1e-6
    )
