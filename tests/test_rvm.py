"""RVM network: parity with RVM's official ONNX (run by onnxruntime) on real footage, clip and
batch handling, state shapes, the segmentation pass and the state_dict layout."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import bimatting
from bimatting.matting.frames import read_frames, to_nchw
from bimatting.models import build_model
from bimatting.weights.rvm_onnx import official_onnx_path

OUTPUTS = ("fgr", "pha", "r1", "r2", "r3", "r4")
# The bound. Both sides compute the same float32 network; they differ only in kernel
# summation order and in the folded-BN reparametrisation (x + b' vs a fused bias), ~1e-6 per layer.
# Measured worst case over 20 recurrent frames is ~2.5e-5, so 1e-4 still catches any wrong
# weight, layer order or missing op (those give errors of 1e-2 and more).
ONNX_TOLERANCE = 1e-4
# Same weights and arithmetic, only the batch/time layout differs; oneDNN may block convolutions
# differently for another batch size, which changes float32 rounding (~1e-6).
LAYOUT_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def official():
    return bimatting.load_model("rvm")


@pytest.fixture(scope="module")
def onnx_session():
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    with official_onnx_path() as path:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def synthetic_clip(batch, frames, height=96, width=160, seed=0):
    """Smooth random images (low-res noise upsampled): [B,T,3,H,W] in [0,1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch * frames, 3, height // 8, width // 8, generator=generator)
    images = torch.nn.functional.interpolate(coarse, (height, width), mode="bilinear", align_corners=False)
    return images.unflatten(0, (batch, frames))


def max_diffs(torch_outputs, onnx_outputs):
    return {name: float(np.abs(t.numpy() - o).max()) for name, t, o in zip(OUTPUTS, torch_outputs, onnx_outputs)}


@pytest.mark.parametrize("size, ratio", [((512, 288), 1.0), (None, 0.25)], ids=["512x288-s1", "960x540-s0.25"])
def test_matches_official_onnx_on_real_clip(official, onnx_session, bedroom_frames_dir, size, ratio):
    frames = read_frames(bedroom_frames_dir, size=size, limit=20)
    assert len(frames) == 20
    onnx_states = [np.zeros((1, 1, 1, 1), np.float32)] * 4  # the official export's initial state
    torch_states = [None] * 4
    worst = dict.fromkeys(OUTPUTS, 0.0)
    for index, frame in enumerate(frames):
        src = to_nchw(frame)
        onnx_out = onnx_session.run(
            None,
            {
                "src": src,
                "r1i": onnx_states[0],
                "r2i": onnx_states[1],
                "r3i": onnx_states[2],
                "r4i": onnx_states[3],
                "downsample_ratio": np.array([ratio], np.float32),
            },
        )
        with torch.inference_mode():
            torch_out = official(torch.from_numpy(src), *torch_states, downsample_ratio=ratio)
        onnx_states, torch_states = onnx_out[2:], torch_out[2:]
        for name, onnx_tensor, torch_tensor in zip(OUTPUTS, onnx_out, torch_out):
            assert tuple(torch_tensor.shape) == onnx_tensor.shape, (name, index)
        diffs = max_diffs(torch_out, onnx_out)
        assert max(diffs.values()) <= ONNX_TOLERANCE, f"frame {index}: {diffs}"
        worst = {name: max(worst[name], diffs[name]) for name in OUTPUTS}
    print(f"\nworst max|torch - onnxruntime| over 20 frames at {size or 'full size'}, s={ratio}: {worst}")


def test_refiner_at_unit_ratio_is_what_the_onnx_does(official, onnx_session, bedroom_frames_dir):
    """The official ONNX refines at s=1 and the PyTorch RVM does not: the flag must matter."""
    src = to_nchw(read_frames(bedroom_frames_dir, size=(512, 288), limit=1)[0])
    zeros = np.zeros((1, 1, 1, 1), np.float32)
    fgr_onnx, pha_onnx = onnx_session.run(
        ["fgr", "pha"],
        {
            "src": src,
            "r1i": zeros,
            "r2i": zeros,
            "r3i": zeros,
            "r4i": zeros,
            "downsample_ratio": np.array([1.0], np.float32),
        },
    )
    unrefined = bimatting.load_model("rvm")
    unrefined.refine_at_unit_ratio = False
    with torch.inference_mode():
        fgr, pha = unrefined(torch.from_numpy(src))[:2]
    assert max(np.abs(fgr.numpy() - fgr_onnx).max(), np.abs(pha.numpy() - pha_onnx).max()) > 1e-2


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_clip_input_equals_frame_by_frame(official, ratio):
    clip = synthetic_clip(batch=2, frames=4)  # [2,4,3,96,160]
    with torch.inference_mode():
        # two calls of T=2, states carried over, against eight single-frame 4-D calls
        first = official(clip[:, :2], downsample_ratio=ratio)
        second = official(clip[:, 2:], *first[2:], downsample_ratio=ratio)
        for b in range(2):
            states = [None] * 4
            for t in range(4):
                fgr, pha, *states = official(clip[b : b + 1, t], *states, downsample_ratio=ratio)
                step = first if t < 2 else second
                torch.testing.assert_close(step[0][b, t % 2], fgr[0], atol=LAYOUT_TOLERANCE, rtol=0)
                torch.testing.assert_close(step[1][b, t % 2], pha[0], atol=LAYOUT_TOLERANCE, rtol=0)
            for clip_state, frame_state in zip(second[2:], states):
                torch.testing.assert_close(clip_state[b : b + 1], frame_state, atol=LAYOUT_TOLERANCE, rtol=0)


def test_batch_equals_each_sample_alone(official):
    frames = synthetic_clip(batch=2, frames=2, seed=1)  # [2,2,3,96,160]
    with torch.inference_mode():
        batched_states, single_states = [None] * 4, [[None] * 4, [None] * 4]
        for t in range(2):
            batched = official(frames[:, t], *batched_states, downsample_ratio=0.5)
            batched_states = batched[2:]
            for b in range(2):
                alone = official(frames[b : b + 1, t], *single_states[b], downsample_ratio=0.5)
                single_states[b] = alone[2:]
                for name, x, y in zip(OUTPUTS, batched, alone):
                    torch.testing.assert_close(x[b : b + 1], y, atol=LAYOUT_TOLERANCE, rtol=0, msg=name)


# (src size H x W, ratio) -> state shapes (C, h, w), measured on the official model.
STATE_SHAPES = {
    (288, 512, 1.0): [(16, 144, 256), (20, 72, 128), (40, 36, 64), (64, 18, 32)],
    (1080, 1920, 0.25): [(16, 135, 240), (20, 68, 120), (40, 34, 60), (64, 17, 30)],
}


@pytest.mark.parametrize("height, width, ratio", list(STATE_SHAPES))
def test_output_and_state_shapes(height, width, ratio):
    model = build_model("rvm").eval()
    with torch.inference_mode():
        fgr, pha, *states = model(torch.rand(1, 1, 3, height, width), downsample_ratio=ratio)
    assert fgr.shape == (1, 1, 3, height, width)
    assert pha.shape == (1, 1, 1, height, width)
    assert [tuple(s.shape) for s in states] == [(1, *shape) for shape in STATE_SHAPES[height, width, ratio]]


def test_segmentation_pass(official):
    clip = synthetic_clip(batch=2, frames=3)  # [2,3,3,96,160]
    with torch.inference_mode():
        seg, *seg_states = official(clip, downsample_ratio=0.5, segmentation_pass=True)
        _, _, *mat_states = official(clip, downsample_ratio=0.5)
        seg_frame = official(clip[:, 0], segmentation_pass=True)[0]
    assert seg.shape == (2, 3, 1, 48, 80)  # logits at the downsampled size
    assert seg_frame.shape == (2, 1, 96, 160)
    for seg_state, mat_state in zip(seg_states, mat_states):  # the head does not touch states
        torch.testing.assert_close(seg_state, mat_state, atol=0, rtol=0)


def test_bad_src_shape_is_rejected(official):
    with pytest.raises(ValueError, match="src must be"):
        official(torch.rand(3, 96, 160))
    with pytest.raises(ValueError, match="downsample_ratio"):
        official(torch.rand(1, 3, 96, 160), downsample_ratio=0)


def test_state_dict_layout_matches_official(official):
    # Parameter count measured on the official MattingNetwork('mobilenetv3') (RVM paper: 3.749M).
    assert sum(p.numel() for p in official.parameters()) == 3_748_633
    state = official.state_dict()
    assert len(state) == 380
    # The ONNX export keeps the state_dict names of every conv without BN: they must exist here.

    with official_onnx_path() as path:
        named = {
            t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if not t.name.isdigit()
        }
    assert len(named) == 54
    for name, value in named.items():
        assert tuple(state[name].shape) == value.shape, name
        np.testing.assert_array_equal(state[name].numpy(), value)


def test_state_dict_matches_reference_listing(shared_dir):
    listing = shared_dir / "reference" / "state_dicts" / "rvm_mobilenetv3.tsv"
    if not listing.is_file():
        pytest.skip(f"reference listing {listing} is absent")
    rows = [line.split("\t")[:2] for line in listing.read_text().splitlines() if not line.startswith("#")]
    state = build_model("rvm").state_dict()
    assert [(key, str(list(value.shape))) for key, value in state.items()] == [tuple(row) for row in rows]
    backbone_bn = [
        m
        for n, m in build_model("rvm").named_modules()
        if n.startswith("backbone") and isinstance(m, torch.nn.BatchNorm2d)
    ]
    assert backbone_bn and all(m.eps == 1e-3 and m.momentum == 0.01 for m in backbone_bn)
