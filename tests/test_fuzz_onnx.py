"""Untrusted ONNX files: hand-made bad models, truncations and bit flips, through every entry
point that builds something from an ONNX file (bimatting.weights.onnx_check, `bimatting compile`, the
onnxruntime backend of `bimatting matte`, load_model's RVM reader, the bench reference).

Each case ends in a clear error (InputError/RuntimeFailure: one line; CLI: exit 2 or 1, one
"Error:" line, no traceback) or in a correct output (a model that runs and yields frames of the
right shape), never a crash, a hang (per-case timeout) or a memory blow-up. Corruptions are
seeded: a failing id names the same bytes on every run.

Case counts (this file): 27 hand-made models x 3 entry points (check, matte backend, compile),
25 truncations + 200 bit flips through the matte backend (check + onnxruntime, 2 frames),
4 CLI runs (compile and matte), 2 reader/bench cases, 5 external-data cases.
"""

import resource

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import bimatting
from bimatting.binops import schema
from bimatting.deploy.compiler.build import compile_model
from bimatting.deploy.device.bench import run_reference
from bimatting.errors import BimattingError, InputError
from bimatting.matting.runner import open_matter
from bimatting.weights.onnx_check import MAX_DIM, check_model, load_checked
from fuzz_inputs import (
    TINY_SIZE,
    assert_clean_error,
    assert_one_line,
    bit_flips,
    gradient_frames,
    run_cli,
    tiny_matting_onnx,
    truncations,
    write_video,
)


@pytest.fixture(scope="module")
def base():
    return tiny_matting_onnx()


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def _attr(node, name):
    return next(a for a in node.attribute if a.name == name)


def _init(model, name):
    return next(t for t in model.graph.initializer if t.name == name)


def _set_ints(model, node, attr, values):
    a = _attr(_node(model, node), attr)
    del a.ints[:]
    a.ints.extend(values)


def _mutations():
    """name -> (function editing a copy of the tiny model in place, expected message fragment)."""
    cases = {}

    def case(name, fragment):
        def register(function):
            cases[name] = (function, fragment)
            return function

        return register

    @case("unknown standard op", "unknown op")
    def _(m):
        _node(m, "pha").op_type = "FancySigmoid"

    @case("unknown ai.bimatting op", "unsupported operator ai.bimatting.BinaryDeconv2d")
    def _(m):
        _node(m, "bconv").op_type = "BinaryDeconv2d"

    @case("unknown domain", "imports the operator domain 'com.example'")
    def _(m):
        m.opset_import.append(helper.make_opsetid("com.example", 1))
        _node(m, "pha").domain = "com.example"

    @case("node in an unimported domain", "which the model does not import")
    def _(m):
        _node(m, "pha").domain = "ai.onnx.ml"

    @case("standard opset too new", "standard opset 99")
    def _(m):
        next(o for o in m.opset_import if o.domain == "").version = 99

    @case("standard opset too old", "standard opset 1")
    def _(m):
        next(o for o in m.opset_import if o.domain == "").version = 1

    @case("ai.bimatting version 2", "ai.bimatting version 2")
    def _(m):
        next(o for o in m.opset_import if o.domain == schema.DOMAIN).version = 2

    @case("IR version from the future", "IR version 99")
    def _(m):
        m.ir_version = 99

    @case("channels_in = 0", "channels_in=0 is out of range")
    def _(m):
        _attr(_node(m, "bconv"), "channels_in").i = 0

    @case("kernel_shape 0x0", "kernel_shape=[0, 0] is out of range")
    def _(m):
        _set_ints(m, "bconv", "kernel_shape", [0, 0])

    @case("stride 0", "strides=[0, 1] is out of range")
    def _(m):
        _set_ints(m, "bconv", "strides", [0, 1])

    @case("negative pad", "pads=[-1, 1, 1, 1] is out of range")
    def _(m):
        _set_ints(m, "bconv", "pads", [-1, 1, 1, 1])

    @case("kernel_shape of three ints", "kernel_shape=[3, 3, 3] is out of range")
    def _(m):
        _set_ints(m, "bconv", "kernel_shape", [3, 3, 3])

    @case("channels_in as a float", "attribute 'channels_in' is FLOAT; expected INT")
    def _(m):
        node = _node(m, "bconv")
        node.attribute.remove(_attr(node, "channels_in"))
        node.attribute.append(helper.make_attribute("channels_in", 8.0))

    @case("required attribute missing", "lacks the required attribute 'channels_in'")
    def _(m):
        node = _node(m, "bconv")
        node.attribute.remove(_attr(node, "channels_in"))

    @case("channels_in does not fit the packed weights", "packed weights UINT8 [8, 1, 3, 3]")
    def _(m):
        _attr(_node(m, "bconv"), "channels_in").i = 16

    @case("scale of the wrong length", "one value per output channel")
    def _(m):
        _init(m, "s_bin").CopyFrom(numpy_helper.from_array(np.ones(5, np.float32), "s_bin"))

    @case("mismatched shapes: stem weight for 4 input channels", "gets 3 input channels but its weight")
    def _(m):
        _init(m, "w_stem").CopyFrom(numpy_helper.from_array(np.ones((8, 4, 3, 3), np.float32), "w_stem"))

    @case("mismatched shapes: output declared with another rank", "not a valid ONNX model")
    def _(m):
        dims = m.graph.output[1].type.tensor_type.shape.dim
        del dims[3]

    @case("huge declared input dimension", f"declares dimension {1 << 40}; expected 0..{MAX_DIM}")
    def _(m):
        m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 1 << 40

    @case("huge declared initializer, 4 bytes stored", f"declares a dimension of {1 << 40}")
    def _(m):
        tensor = _init(m, "half")
        tensor.dims.extend([1 << 40])

    @case("initializer with more elements than the limit", "at most")
    def _(m):
        tensor = _init(m, "w_pha")
        del tensor.dims[:]
        tensor.dims.extend([1, 1 << 15, 1 << 15, 1])

    @case("initializer shorter than its shape", "declares shape [8, 3, 3, 3] (864 bytes) but stores 100 bytes")
    def _(m):
        _init(m, "w_stem").raw_data = _init(m, "w_stem").raw_data[:100]

    @case("huge tensor made by the graph (Expand)", "inferred")
    def _(m):
        m.graph.initializer.append(numpy_helper.from_array(np.array([1, 3, 1 << 20, 1 << 20], np.int64), "big"))
        m.graph.node.insert(0, helper.make_node("Expand", ["src", "big"], ["huge"], name="expand"))  # unused

    @case("tampered function body", "body of function ai.bimatting.BinarizePack is not the one")
    def _(m):
        function = next(f for f in m.functions if f.name == "BinarizePack")
        function.node.append(helper.make_node("Identity", [function.output[0]], ["unused"]))

    @case("function overriding a standard op", "defines the function ai.onnx.Sigmoid")
    def _(m):
        m.functions.append(
            helper.make_function(
                "", "Sigmoid", ["X"], ["Y"], [helper.make_node("Relu", ["X"], ["Y"])], [helper.make_opsetid("", 18)]
            )
        )

    @case("binary op without its function body", "has no function body")
    def _(m):
        m.functions.remove(next(f for f in m.functions if f.name == "BinaryConv2d"))

    return cases


MUTATIONS = _mutations()


def _write(tmp_path, model, name="model.onnx"):
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _mutated(base, name):
    model = onnx.ModelProto()
    model.CopyFrom(base)
    MUTATIONS[name][0](model)
    return model


def test_the_base_model_passes_and_runs(base, tmp_path):
    path = _write(tmp_path, base)
    check_model(load_checked(path))
    matter = open_matter(artifact=path)
    frame = np.random.default_rng(0).random((TINY_SIZE[1], TINY_SIZE[0], 3)).astype(np.float32)
    fgr, pha = matter.step(frame)
    assert fgr.shape == frame.shape and pha.shape == frame.shape[:2]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_bad_model_is_refused_by_every_entry_point(name, base, tmp_path):
    """The check, the matte backend and the compiler all refuse it with the same one line,
    and the compiler leaves no artifact (it refuses before TVM sees the graph)."""
    fragment = MUTATIONS[name][1]
    path = _write(tmp_path, _mutated(base, name))
    with pytest.raises(InputError) as checked:
        load_checked(path)
    assert_one_line(checked.value, fragment)
    with pytest.raises(InputError) as matte:
        open_matter(artifact=path)
    assert str(matte.value) == str(checked.value)
    out = tmp_path / "out.tar"
    with pytest.raises(InputError) as compiled:
        compile_model(path, "host", out, resolution=TINY_SIZE)
    assert str(compiled.value) == str(checked.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_external_data_outside_the_model_folder_is_refused(base, tmp_path):
    """A tensor whose data lives at '../secret' (or an absolute path) would make us read any file."""
    (tmp_path / "secret").write_bytes(b"\x00" * 4096)
    folder = tmp_path / "model"
    folder.mkdir()
    for location, fragment in (
        ("../secret", "outside the model's folder"),
        (str(tmp_path / "secret"), "outside the model's folder"),
        ("missing.bin", "which does not exist"),
    ):
        model = onnx.ModelProto()
        model.CopyFrom(base)
        tensor = _init(model, "w_stem")
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", "864")):
            tensor.external_data.add(key=key, value=value)
        path = _write(folder, model)
        with pytest.raises(InputError) as error:
            load_checked(path)
        assert_one_line(error.value, fragment)
    # inside the folder and long enough: read and run
    (folder / "weights.bin").write_bytes(numpy_helper.to_array(_init(base, "w_stem")).tobytes())
    tensor.external_data[0].value = "weights.bin"
    path = _write(folder, model)
    loaded = load_checked(path)
    assert np.array_equal(numpy_helper.to_array(_init(loaded, "w_stem")), numpy_helper.to_array(_init(base, "w_stem")))
    (folder / "weights.bin").write_bytes(b"\x00" * 100)  # truncated external file
    with pytest.raises(InputError, match="which the file does not hold"):
        load_checked(path)


def _frames(count=2):
    rng = np.random.default_rng(1)
    return [rng.random((TINY_SIZE[1], TINY_SIZE[0], 3)).astype(np.float32) for _ in range(count)]


def _matte_outcome(path):
    """'ok' when the file runs two frames with outputs of the right shape, else the error class name
    (a deliberate error must be one line); anything else propagates and fails the test."""
    try:
        matter = open_matter(artifact=path)
        for frame in _frames():
            fgr, pha = matter.step(frame)
            assert fgr.shape == frame.shape and pha.shape == frame.shape[:2]
    except BimattingError as error:
        assert_one_line(error)
        return type(error).__name__
    return "ok"


CORRUPTIONS = None


def _corruptions():
    global CORRUPTIONS
    if CORRUPTIONS is None:
        data = tiny_matting_onnx().SerializeToString()
        CORRUPTIONS = dict(truncations(data, 25) + bit_flips(data, 200, seed=20))
    return CORRUPTIONS


@pytest.mark.timeout(240)
def test_truncated_and_bit_flipped_models_fail_cleanly_or_run(tmp_path):
    """225 corrupt copies through the check and onnxruntime. Bit flips in weight bytes give a
    different but valid model (it must run); everything else must be refused in one line."""
    outcomes = {}
    for name, data in _corruptions().items():
        path = tmp_path / "corrupt.onnx"
        path.write_bytes(data)
        outcomes[name] = _matte_outcome(path)
    counts = {kind: sum(1 for v in outcomes.values() if v == kind) for kind in set(outcomes.values())}
    print(f"{len(outcomes)} corrupt models: {counts}")
    assert all(outcomes[name] == "InputError" for name in outcomes if name.startswith("cut")), outcomes
    assert counts.get("ok", 0) > 10 and counts.get("InputError", 0) > 100, counts  # both kinds were exercised
    # no case may balloon memory (onnx's data propagation once allocated >10 GB on a flipped constant)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 4 * 1024 * 1024  # KiB


@pytest.mark.timeout(180)
def test_cli_refuses_bad_models_in_one_line(base, tmp_path):
    """The real command line: compile and matte on a truncated file, an unknown op, a huge
    dimension and a tampered function body."""
    video = write_video(tmp_path / "clip.avi", gradient_frames(2, *TINY_SIZE))
    data = base.SerializeToString()
    bad = {
        "truncated.onnx": (data[: len(data) // 3], "not an ONNX model"),
        "unknown-op.onnx": (_mutated(base, "unknown standard op").SerializeToString(), "unknown op"),
        "huge.onnx": (_mutated(base, "huge declared input dimension").SerializeToString(), "declares dimension"),
        "tampered.onnx": (_mutated(base, "tampered function body").SerializeToString(), "body of function"),
    }
    for name, (payload, fragment) in bad.items():
        (tmp_path / name).write_bytes(payload)
    for name in ("truncated.onnx", "tampered.onnx"):
        code, _, err = run_cli("compile", tmp_path / name, "--target", "host", "-o", tmp_path / "out.tar")
        assert_clean_error(code, err, fragment=bad[name][1])
    for name in ("unknown-op.onnx", "huge.onnx"):
        code, _, err = run_cli("matte", video, "-o", tmp_path / "out.avi", "--artifact", tmp_path / name, "--quiet")
        assert_clean_error(code, err, fragment=bad[name][1])
    assert not (tmp_path / "out.tar").exists() and not (tmp_path / "out.avi").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary leftovers


def test_rvm_reader_and_bench_reference_check_the_file(base, tmp_path):
    """load_model(".onnx") (RVM's official layout) and the bench's onnxruntime reference both go
    through the check: a bad file is refused before onnxruntime or the weight reader parse it."""
    path = _write(tmp_path, _mutated(base, "huge declared initializer, 4 bytes stored"))
    with pytest.raises(InputError) as error:
        bimatting.load_model(path)
    assert_one_line(error.value, "declares a dimension of")
    meta = {"states": {}, "inputs": [{"name": "src", "shape": [1, 3, TINY_SIZE[1], TINY_SIZE[0]], "role": "image"}]}
    with pytest.raises(InputError) as error:
        run_reference(path, meta, _frames(1))
    assert_one_line(error.value, "declares a dimension of")
