"""The BiMatting network: official checkpoint layout, output shapes, batch/time semantics, sizes."""

import ast

import pytest
import torch

from bimatting import load_model
from bimatting.models import build_model
from bimatting.models.bimatting import BiMatting
from bimatting.models.bimatting.binarize import BiConv2d
from bimatting.models.profile import synthetic_clip
from conftest import SHARED

OFFICIAL_TSV = SHARED / "reference" / "state_dicts" / "bimatting_bimobilenet.tsv"
DEAD = ".channel_threshold"


def official_layout():
    """[(key, shape, dtype)] of htqin/BiMatting's MattingNetwork('bimobilenet') state_dict."""
    if not OFFICIAL_TSV.is_file():
        pytest.skip(f"official state_dict layout not available ({OFFICIAL_TSV} is absent)")
    rows = []
    for line in OFFICIAL_TSV.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape, dtype = line.split("\t")
            rows.append((key, tuple(ast.literal_eval(shape)), dtype))
    return rows


def official_state_dict(seed=0):
    """Random tensors with exactly the official keys, shapes and dtypes (channel_threshold included)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in official_layout():
        if dtype == "int64":
            state[key] = torch.tensor(7, dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.1
    return state


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model("bimatting")
    net.load_state_dict(official_state_dict(seed=1))  # non-trivial BN statistics and shifts
    net.eval()
    # Centre the coarse alpha logits on a calibration clip so pha_s > 0 on about half of the coarse
    # pixels: the incoherent mask then has edges (random weights alone give an all-zero mask).
    hidden = []
    hook = net.decoder.decode4.register_forward_hook(lambda m, i, o: hidden.append(o[2]))
    with torch.inference_mode():
        net(moving_clips(batch=2, frames=2, height=128, width=192))
        logits = net.project_mat.conv(hidden[0])[:, 3]
        net.project_mat.conv.bias[3] -= logits.median()
    hook.remove()
    return net


def test_official_checkpoint_loads_every_tensor(tmp_path):
    state = official_state_dict()
    assert sum(k.endswith(DEAD) for k in state) == 73
    path = tmp_path / "epoch-27.pth"
    torch.save(state, path)  # the official train.py saves a plain state_dict like this
    loaded = load_model(path)
    assert isinstance(loaded, BiMatting) and not loaded.training
    own = loaded.state_dict()
    expected = {k: v for k, v in state.items() if not k.endswith(DEAD)}
    assert list(own) == list(expected)  # nothing missing, nothing extra, same order
    for key, value in expected.items():
        assert torch.equal(own[key], value), key
    # The network's own strict load accepts the official dict as it is (dead keys ignored) ...
    fresh = build_model("bimatting")
    result = fresh.load_state_dict(state)
    assert not result.missing_keys and not result.unexpected_keys
    # ... but no other stray or missing key.
    with pytest.raises(RuntimeError, match="Unexpected"):
        fresh.load_state_dict({**state, "decoder.decode3.extra": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="Missing"):
        fresh.load_state_dict({k: v for k, v in state.items() if not k.startswith("refiner.conv.12")})


def test_parameter_counts():
    net = build_model("bimatting")
    official_total = sum(
        torch.Size(shape).numel()
        for key, shape, dtype in official_layout()
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert official_total == 4_265_293
    assert sum(p.numel() for p in net.parameters()) == 4_265_293 - 9_184 == 4_256_109
    binary = [m for m in net.modules() if isinstance(m, BiConv2d)]
    assert len(binary) == 73
    assert sum(m.weight.numel() for m in binary) == 4_217_584
    # Every parameter is used by a forward pass (segmentation pass for project_seg, s != 1 for refiner).
    src = torch.rand(1, 1, 3, 64, 96)
    net.zero_grad()
    fgr, pha, fgr_s, pha_s, *_ = net(src, downsample_ratio=0.5)
    seg = net(src, segmentation_pass=True)[0]
    (fgr.sum() + pha.sum() + fgr_s.sum() + pha_s.sum() + seg.sum()).backward()
    unused = [name for name, p in net.named_parameters() if p.grad is None]
    assert unused == []


README_SHAPES = {  # state_dicts/README.md "Forward shapes", BiMatting table
    (288, 512, 1.0): [
        (1, 1, 3, 288, 512),
        (1, 1, 1, 288, 512),
        (1, 1, 3, 18, 32),
        (1, 1, 1, 18, 32),
        (1, 16, 144, 256),
        (1, 20, 72, 128),
        (1, 40, 36, 64),
        (1, 64, 18, 32),
    ],
    (1080, 1920, 0.25): [
        (1, 1, 3, 1080, 1920),
        (1, 1, 1, 1080, 1920),
        (1, 1, 3, 17, 30),
        (1, 1, 1, 17, 30),
        (1, 16, 135, 240),
        (1, 20, 68, 120),
        (1, 40, 34, 60),
        (1, 64, 17, 30),
    ],
}


@pytest.mark.parametrize("height,width,ratio", list(README_SHAPES))
def test_output_shapes_match_official(model, height, width, ratio):
    src = torch.rand(1, 1, 3, height, width)
    with torch.inference_mode():
        outputs = model(src, downsample_ratio=ratio)
        assert [tuple(o.shape) for o in outputs] == README_SHAPES[(height, width, ratio)]
        again = model(src, *outputs[-4:], downsample_ratio=ratio)  # states fed back
    assert [tuple(o.shape) for o in again] == README_SHAPES[(height, width, ratio)]
    fgr, pha, fgr_s, pha_s = outputs[:4]
    for image in (fgr, pha, fgr_s, pha_s):
        assert 0.0 <= image.min() and image.max() <= 1.0


def test_rvm_call_conventions(model):
    src = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        six = model(src, return_coarse=False)
        seg = model(src, downsample_ratio=0.5, segmentation_pass=True)
    assert [tuple(o.shape) for o in six] == [
        (2, 3, 64, 96),
        (2, 1, 64, 96),
        (2, 16, 32, 48),
        (2, 20, 16, 24),
        (2, 40, 8, 12),
        (2, 64, 4, 6),
    ]
    assert [tuple(o.shape) for o in seg] == [
        (2, 1, 32, 48),
        (2, 16, 16, 24),
        (2, 20, 8, 12),
        (2, 40, 4, 6),
        (2, 64, 2, 3),
    ]


def moving_clips(batch, frames, height=64, width=96):
    """batch different synthetic clips [B, T, 3, H, W] (a blob moving over a textured background)."""
    clips = [
        torch.from_numpy(synthetic_clip((width, height), frames, seed=b).transpose(0, 3, 1, 2).copy())
        for b in range(batch)
    ]
    return torch.stack([clip.roll(shifts=9 * b, dims=-1) for b, clip in enumerate(clips)])


def test_batch_equals_samples_run_alone(model):
    # Eval mode: BN uses running statistics, so samples do not interact through the batch.
    src = moving_clips(batch=3, frames=4, height=128, width=192)  # network at 64x96: coarse 4x6
    masks = []
    hook = model.decoder.incoherent_mask.register_forward_hook(lambda m, i, o: masks.append(o.clone()))
    try:
        with torch.inference_mode():
            batched = model(src, downsample_ratio=0.5)
            alone = [model(src[b : b + 1], downsample_ratio=0.5) for b in range(3)]
    finally:
        hook.remove()
    # The test only probes the per-(b, t) mask if masks differ between samples at the same step
    # (the official code paired step t with mask[t] of the flattened B*T batch).
    per_frame = masks[0].flatten(1).mean(1).view(3, 4)
    assert 0 < masks[0].mean() < 1 and not torch.equal(per_frame[0], per_frame[1])
    for b in range(3):
        for name, big, small in zip("fgr pha fgr_s pha_s r1 r2 r3 r4".split(), batched, alone[b]):
            # Same float ops per sample; only the conv algorithm's summation order may differ
            # with the batch size (~1e-7 relative), far below 1e-5.
            torch.testing.assert_close(big[b : b + 1], small, rtol=1e-5, atol=1e-5, msg=name)


def test_four_d_input_equals_five_d_single_frame(model):
    src = moving_clips(batch=2, frames=1)
    with torch.inference_mode():
        four = model(src[:, 0])
        five = model(src)
    for a, b in zip(four[:4], five[:4]):
        assert torch.equal(a, b[:, 0])
    for a, b in zip(four[4:], five[4:]):
        assert torch.equal(a, b)


def test_sequence_equals_frame_by_frame_with_states(model):
    src = moving_clips(batch=2, frames=3)
    with torch.inference_mode():
        whole = model(src)
        states = [None] * 4
        steps = []
        for t in range(3):
            *frame_out, r1, r2, r3, r4 = model(src[:, t], *states)
            states = [r1, r2, r3, r4]
            steps.append(frame_out)
    for i in range(4):
        torch.testing.assert_close(whole[i], torch.stack([s[i] for s in steps], dim=1), rtol=1e-5, atol=1e-5)
    for final, state in zip(whole[4:], states):
        torch.testing.assert_close(final, state, rtol=1e-5, atol=1e-5)


def test_straight_through_clamp_keeps_a_gradient_where_the_plain_clamp_has_none():
    """Heads pushed far below 0: the plain clamp (default, as RVM) gives pha no gradient at all."""
    torch.manual_seed(0)
    net = build_model("bimatting").train()
    with torch.no_grad():
        net.project_mat.conv.bias[3] = -100.0  # every alpha logit far out of [0, 1]
    src = torch.rand(1, 3, 64, 64)
    gradients = {}
    for straight_through in (False, True):
        net.straight_through_clamp = straight_through
        net.zero_grad()
        _, pha, *_ = net(src, return_coarse=False)
        assert float(pha.max()) == 0.0  # the forward values are the same clamp
        (1.0 - pha).abs().mean().backward()  # target alpha 1 everywhere
        gradients[straight_through] = net.project_mat.conv.bias.grad[3].item()
    assert gradients[False] == 0.0
    assert gradients[True] < 0  # descent raises the alpha bias
    net.eval()
    _, pha, *_ = net(src, return_coarse=False)  # eval: a plain clamp either way
    assert float(pha.min()) >= 0.0
