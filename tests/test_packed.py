"""Packed 1-bit weights: exact signs, alpha to the last float32 bits, identical outputs, <= 1 MB."""

import json
import zipfile

import numpy as np
import pytest
import torch

from bimatting.binops import layout
from bimatting.errors import InputError
from bimatting.models import build_model
from bimatting.weights.packed import load_packed, read_packed, save_packed, unpack_weight


def trained_state(model, seed=1):
    """Move BN statistics, BN affine, learnable biases and PReLU slopes off their init values, as
    training does. (At init every BN mean and bias is 0, so sign() inputs that are exactly 0 --
    frequent for sums of +-1 -- decide on the last bit of alpha; a trained network has none.)"""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5, generator=g)
                module.running_var.uniform_(0.5, 2.0, generator=g)
                module.weight.uniform_(0.5, 1.5, generator=g)
                module.bias.normal_(0, 0.2, generator=g)
            elif isinstance(module, torch.nn.PReLU):
                module.weight.uniform_(0.1, 0.4, generator=g)
        for name, parameter in model.named_parameters():
            if name.endswith(".bias") and parameter.dim() == 4:  # LearnableBias [1, C, 1, 1]
                parameter.normal_(0, 0.1, generator=g)
    return model.eval()


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    torch.manual_seed(0)
    model = trained_state(build_model("bimatting"))
    path = tmp_path_factory.mktemp("packed") / "bimatting.npz"
    size = save_packed(path, model, provenance={"note": "test"})
    return model, path, size, load_packed(path)


def test_file_is_pickle_free_npz_with_packed_bits(packed):
    model, path, _, _ = packed
    with np.load(path, allow_pickle=False) as data:  # would raise on any object array
        names = set(data.files)
        conv_name, conv = model.binary_convs()[0]
        bits = data[conv_name + ".weight.bits"]
        assert bits.dtype == np.uint8
        assert bits.shape == (
            conv.weight.shape[0],
            layout.packed_channels(conv.weight.shape[1]),
            *conv.weight.shape[2:],
        )
        assert data[conv_name + ".weight.alpha"].dtype == np.float32
        meta = json.loads(data["__meta__.json"].tobytes())
    assert meta["arch"] == "bimatting" and meta["provenance"] == {"note": "test"}
    assert all(n + ".weight" not in names for n, _ in model.binary_convs())  # no float binary weights
    assert zipfile.is_zipfile(path)


def test_full_bimatting_packed_is_at_most_1_mb(packed):
    _, _, size, _ = packed
    assert size <= 1_000_000, f"packed BiMatting is {size} bytes"


def test_signs_exact_and_alpha_within_float32_rounding(packed):
    # alpha is a float32 mean of up to 9216 terms: its own rounding is O(log2(n)) ulps, so the
    # recomputed alpha may differ in the last bits; 1e-6 relative is ~8 ulps.
    model, _, _, loaded = packed
    for (name, a), (_, b) in zip(model.binary_convs(), loaded.binary_convs()):
        signs_a, alpha_a = a.binary_weight()
        signs_b, alpha_b = b.binary_weight()
        assert torch.equal(signs_a, signs_b), name
        relative = ((alpha_a - alpha_b).abs() / alpha_a).max()
        assert float(relative) <= 1e-6, f"{name}: alpha off by {float(relative):.2e} relative"


def test_every_other_tensor_exact(packed):
    model, _, _, loaded = packed
    binary = {name + ".weight" for name, _ in model.binary_convs()}
    reference = model.state_dict()
    for key, value in loaded.state_dict().items():
        if key not in binary:
            assert torch.equal(value, reference[key]), key


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_round_trip_outputs_identical(packed, ratio):
    # 1e-6: alpha may differ in its last bits (see above), a few 1e-7 relative per conv.
    model, _, _, loaded = packed
    src = torch.rand(1, 2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = model(src, downsample_ratio=ratio), loaded(src, downsample_ratio=ratio)
    assert len(expected) == len(got) == 8
    for name, a, b in zip(["fgr", "pha", "fgr_s", "pha_s", "r1", "r2", "r3", "r4"], expected, got):
        assert float((a - b).abs().max()) <= 1e-6, name


def test_unpack_weight_recentres_to_the_same_signs_and_alpha():
    rng = np.random.default_rng(0)
    signs = np.where(rng.random((6, 19, 3, 3)) < 0.5, -1.0, 1.0).astype(np.float32)
    signs[0] = 1.0  # all +1: the only uniform reachable pattern
    signs[1] = -1.0
    signs[1, 0, 0, 0] = 1.0  # a single +1 among -1s
    alpha = rng.uniform(0.01, 0.2, 6).astype(np.float32)
    alpha[0] = 0.0
    weight = unpack_weight(layout.pack(signs, axis=1), alpha, 19)
    centred = weight - weight.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_array_equal(layout.sign(centred), signs)
    np.testing.assert_allclose(np.abs(centred).mean(axis=(1, 2, 3)), alpha, rtol=1e-6)


def test_bad_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="do not exist"):
        read_packed(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable"):
        read_packed(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(InputError, match="__meta__"):
        read_packed(tmp_path / "other.npz")
