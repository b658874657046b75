"""Small BiMatting models and artifacts for the bench and tune tests (built once per session).

Why not a plain random-init network: a random BiMatting is chaotic at float precision. Two
correct float32 implementations sum in different orders, a pre-sign value within ~1e-5 of zero
then takes the other sign, and one flipped bit flips about ten bits of the next layer: onnxruntime
with graph optimizations on and off already differ by 0.5 in pha (mean 0.09) on the sample clip.
Comparing a board with onnxruntime on such a model tests nothing.

`tie_free_bimatting` keeps random weights but moves each sign threshold (the LearnableBias before
every sign, ReActNet's RSign) into the widest gap of the values that channel sees on the test
clip, so no decision on these frames is a near tie (the smallest |pre-sign value| is ~1e-4, against
float drift of ~1e-6). Decisions inside the ConvGRUs are pushed to one side instead (their inputs
depend on the recurrent state, which would otherwise couple every frame's thresholds); the coarse
alpha's > 0 test (the SAB mask) gets the same gap treatment through the coarse head's bias. The
model stays data dependent (pha std ~0.15 on the clip) and two float32 runtimes then agree to
~2e-7, so the bench tolerance (1e-4 mean, 1e-2 max) separates right from wrong kernels.
It is tie-free only on the clip it was calibrated on: `sample_frames(FRAMES, SIZE)`.
"""

import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bimatting.deploy.compiler.build import compile_model
from bimatting.matting.frames import to_nchw
from bimatting.matting.samples import sample_frames
from bimatting.models import build_model
from bimatting.models.bimatting.binarize import BinaryActivation, LearnableBias
from bimatting.models.bimatting.gru import ConvGRU, ConvGRU_Up
from bimatting.weights.checkpoints import save_checkpoint

SIZE = (128, 96)  # (W, H): small enough to compile in ~25 s and run ~1 s/frame under qemu
FRAMES = 3  # bench tests use --frames FRAMES (or 1: the clip's first frame is the same)
_built = {}


def _per_channel(x):
    return x.transpose(0, 1).reshape(x.shape[1], -1)  # [N, C, H, W] -> [C, N*H*W]


def _gap_shift(values):
    """Per channel: the shift moving the widest gap among the central 80% of values onto 0."""
    v, _ = torch.sort(values.double(), dim=1)
    n = v.shape[1]
    low, high = int(n * 0.1), max(int(n * 0.9), int(n * 0.1) + 2)
    central = v[:, low : min(high, n)]
    gaps = central[:, 1:] - central[:, :-1]
    widest, index = gaps.max(dim=1)
    middle = (central.gather(1, index[:, None]) + central.gather(1, index[:, None] + 1))[:, 0] / 2
    flat = widest < 1e-3  # (nearly) constant channel: put 0 below all of its values instead
    middle = torch.where(flat, v[:, 0] - torch.clamp(v[:, -1] - v[:, 0], min=1.0), middle)
    return (-middle).float()


def _one_side_shift(values):
    """Per channel: the shift putting every value at least max(spread, 1) above 0."""
    v = values.double()
    low, high = v.min(dim=1).values, v.max(dim=1).values
    return (-(low - torch.clamp(high - low, min=1.0))).float()


def tie_free_bimatting(clip, seed=0, downsample_ratio=1.0, config=None):
    """Random-init BiMatting (build_model `config`, default the official widths) calibrated on `clip`
    ([1, T, 3, H, W]) at `downsample_ratio` (below 1 the refiner's signs are calibrated too); returns
    (network, smallest |pre-sign value| over the clip)."""
    torch.manual_seed(seed)
    net = build_model("bimatting", **(config or {})).eval()
    recurrent = {
        m
        for gru in net.modules()
        if isinstance(gru, (ConvGRU, ConvGRU_Up))
        for m in gru.modules()
        if isinstance(m, LearnableBias)
    }
    head = net.project_mat  # the module, not its conv: eval mode calls the conv with float64 copies
    state = {"calibrate": True, "done": set(), "made_by": {}, "margins": [], "head_calls": 0}

    def bias_hook(module, inputs, output):
        state["made_by"][id(output)] = module

    def sign_hook(module, inputs):
        (x,) = inputs
        owner = state["made_by"][id(x)]  # every sign reads a LearnableBias output
        if state["calibrate"] and owner not in state["done"]:
            state["done"].add(owner)
            shift = (_one_side_shift if owner in recurrent else _gap_shift)(_per_channel(x)).view(1, -1, 1, 1)
            with torch.no_grad():
                owner.bias += shift
            x = x + shift
        state["margins"].append(float(x.abs().min()))
        return (x,)

    def head_hook(module, inputs, output):
        state["head_calls"] += 1
        if state["head_calls"] != 1:  # the first call is the coarse head (the SAB mask's input)
            return None
        logits = output[:, 3:]
        if state["calibrate"]:
            shift = _gap_shift(_per_channel(logits))
            with torch.no_grad():
                module.conv.bias[3] += shift[0]
            logits = logits + shift
            output = torch.cat([output[:, :3], logits], dim=1)
        state["margins"].append(float(logits.abs().min()))
        return output

    handles = [m.register_forward_hook(bias_hook) for m in net.modules() if isinstance(m, LearnableBias)]
    handles += [m.register_forward_pre_hook(sign_hook) for m in net.modules() if isinstance(m, BinaryActivation)]
    handles.append(head.register_forward_hook(head_hook))
    try:
        with torch.no_grad():
            # One pass over the clip as a [1, T] sequence: non-recurrent layers see all frames at
            # once (every threshold in call order), the GRUs step through time as in the bench.
            net(clip, downsample_ratio=downsample_ratio, return_coarse=False)
            state.update(calibrate=False, margins=[], made_by={}, head_calls=0)
            net(clip, downsample_ratio=downsample_ratio, return_coarse=False)
    finally:
        for handle in handles:
            handle.remove()
    return net, min(state["margins"])


def tie_free_onnx(folder):
    """The calibrated model exported to `folder`/tiefree.onnx (cached per session)."""
    if "onnx" in _built:
        return _built["onnx"]

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the host is shared: more threads run this 50x slower under load
    try:
        clip = torch.from_numpy(np.stack([to_nchw(f)[0] for f in sample_frames(FRAMES, SIZE)])[None])
        net, margin = tie_free_bimatting(clip)
        assert margin > 2e-5, f"calibration left a near tie ({margin:.1e})"
        save_checkpoint(folder / "tiefree.pth", net, "bimatting")
    finally:
        torch.set_num_threads(previous)
    _run_cli("export", str(folder / "tiefree.pth"), "-o", str(folder / "tiefree.onnx"))
    _built["onnx"] = folder / "tiefree.onnx"
    return _built["onnx"]


def compiled_artifact(folder, target):
    """tiefree.onnx compiled for `target` at SIZE, beside its ONNX wherever that was made (the
    ONNX is cached per session, possibly in another fixture's folder); cached per session."""
    if target not in _built:
        onnx_path = tie_free_onnx(folder)
        compile_model(onnx_path, target, onnx_path.parent / f"tiefree-{target}.tar", resolution=SIZE)
        _built[target] = onnx_path.parent / f"tiefree-{target}.tar"
    return _built[target]


def _run_cli(*args):
    """A bimatting command in a fresh interpreter (the exporter's torch threads stay there)."""
    command = [sys.executable, "-c", "import sys; from bimatting.cli import main; main(sys.argv[1:])", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"bimatting {' '.join(args)} failed:\n{done.stderr[-2000:]}"
    return done


def tiny_recurrent_onnx(path, width=64, height=48, seed=0):
    """A small float model with the matting interface (src, r1i -> fgr, pha, r1o), static size:
    conv 3->4, a recurrent state at half size (tanh of pooled features + r1i), nearest upsampling,
    a 1x1 conv head. Compiles for the host in seconds; a stand-in where BiMatting would be slow."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (4, 4, 1, 1)).astype(np.float32)
    half = [1, 4, height // 2, width // 2]
    nodes = [
        helper.make_node("Conv", ["src", "w1"], ["x"], pads=[1, 1, 1, 1]),  # [1,4,H,W]
        helper.make_node("AveragePool", ["x"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Add", ["pooled", "r1i"], ["mixed"]),
        helper.make_node("Tanh", ["mixed"], ["r1o"]),  # [1,4,H/2,W/2]
        helper.make_node("Resize", ["r1o", "", "scales"], ["up"], mode="nearest"),  # [1,4,H,W]
        helper.make_node("Add", ["x", "up"], ["joined"]),
        helper.make_node("Conv", ["joined", "w2"], ["head"]),
        helper.make_node("Sigmoid", ["head"], ["head_s"]),
        helper.make_node("Split", ["head_s", "split"], ["fgr", "pha"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(np.array([3, 1], np.int64), "split"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_recurrent",
        [
            helper.make_tensor_value_info("src", TensorProto.FLOAT, [1, 3, height, width]),
            helper.make_tensor_value_info("r1i", TensorProto.FLOAT, half),
        ],
        [
            helper.make_tensor_value_info("fgr", TensorProto.FLOAT, [1, 3, height, width]),
            helper.make_tensor_value_info("pha", TensorProto.FLOAT, [1, 1, height, width]),
            helper.make_tensor_value_info("r1o", TensorProto.FLOAT, half),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def needs_cross_compiler():
    """Skip when the aarch64 cross compiler (installed by scripts/install.sh --test) is missing:
    rpi4 artifacts cannot be linked without it."""
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("cross compiler aarch64-linux-gnu-g++ is not installed")
