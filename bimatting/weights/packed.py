"""Packed BiMatting weights: a small, pickle-free `.npz` holding 1 bit per binary weight.

File layout (np.savez_compressed; read with np.load(allow_pickle=False)):

    <conv>.weight.bits     uint8 [O, ceil(C/8), KH, KW]   sign(w~) packed by bimatting.binops.layout.pack
                                                          (bit 1 = -1, little-endian along C)
    <conv>.weight.alpha    float32 [O]                    alpha = mean |w~| per output channel
    <name>                 every other parameter/buffer: float32 (int64 for BN batch counters)
    __meta__.json          uint8 bytes of a UTF-8 JSON object: format, version, arch, config,
                           provenance (free-form training record), binary conv names

for every binary conv (`BiConv2d`, centred weight w~ = w - mean_o(w)). Only sign(w~) and alpha
reach the forward pass (y = alpha * sign(w~) (*) x), so nothing else of w is kept.

Loading rebuilds a float weight whose centring gives back the same signs and alpha:

    s in {-1,+1}^n (one output channel), m = mean(s), d = s - m, w = alpha * d / mean|d|

d is centred (mean 0), so w~ = w up to rounding, sign(w) = s (s = +1 -> d = 1 - m >= 0, and
s = -1 -> d = -1 - m < 0 unless every s is -1), and mean|w| = alpha. Corner cases:
  * all s = +1: d = 0; the original w~ was >= 0 with mean 0, i.e. all 0 and alpha = 0, so w = 0;
  * all s = -1: only reachable through rounding of a constant w (alpha ~ 1e-9): w = 0 as well.
Signs come back exactly. alpha as the network recomputes it (float32 mean of |w~|) comes within
a few ulps of the stored one after a per-channel rescaling (`_rebuild_weight`; over a whole
BiMatting: 2/3 of the channels exact, at most 5 ulps = 6e-7 relative). The last bit cannot be
steered: the float32 sum of |w~| carries its own rounding (O(log2(n)) ulps for n terms). A trained
network's outputs agree to ~1e-7 after a round trip. (An untrained one can differ
more: with BN statistics and biases at their init value 0, many sign() inputs are exactly 0 and
their sign then hangs on the last bit of alpha.)

torch is needed only to build the network (`load_packed`); `read_packed` is numpy only.
"""

import io
import json
from pathlib import Path

import numpy as np

from bimatting._version import __version__
from bimatting.atomic import atomic_path
from bimatting.binops import layout
from bimatting.errors import InputError
from bimatting.models import model_class
from bimatting.weights.network_state import build_network, load_state

FORMAT = "bimatting-packed"
FORMAT_VERSION = 1
META_KEY = "__meta__.json"
BITS_SUFFIX = ".weight.bits"
ALPHA_SUFFIX = ".weight.alpha"


def _binary_convs(model):
    return [(name, m) for name, m in model.named_modules() if getattr(m, "binary", False)]


def _model_config(model):
    config = getattr(model, "config", None)
    return dict(config) if isinstance(config, dict) else {}


def pack_state(model, arch, config=None, provenance=None):
    """{name: numpy array} of the packed file for `model` (any network with BiConv2d layers)."""
    import torch

    arrays, binary_names = {}, []
    binary = dict(_binary_convs(model))
    with torch.no_grad():
        for name, conv in binary.items():
            signs, alpha = conv.binary_weight()  # [O, C, KH, KW] +-1, [O]
            arrays[name + BITS_SUFFIX] = layout.pack(signs.float().cpu().numpy(), axis=1)
            arrays[name + ALPHA_SUFFIX] = alpha.float().cpu().numpy().astype(np.float32)
            binary_names.append(name)
        skip = {name + ".weight" for name in binary}
        for key, value in model.state_dict().items():
            if key in skip:
                continue
            array = value.detach().cpu().numpy()
            arrays[key] = array.astype(np.int64 if np.issubdtype(array.dtype, np.integer) else np.float32)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bimatting_version": __version__,
        "arch": arch,
        "config": config if config is not None else _model_config(model),
        "provenance": provenance or {},
        "binary_convs": binary_names,
    }
    arrays[META_KEY] = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    return arrays


def save_packed(path, model, arch="bimatting", config=None, provenance=None):
    """Write `model` as a packed .npz at `path` (atomically). Returns the file size in bytes."""
    return write_npz(path, pack_state(model, arch, config, provenance))


def write_npz(path, arrays):
    """{name: array} as a compressed .npz at `path`, atomically (built in memory first, so a failed
    disk write is a plain OSError and leaves no partial file). Returns the file size in bytes."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())
    return Path(path).stat().st_size


def read_packed(path):
    """(meta dict, {name: array}) of a packed file, numpy only; InputError on anything else."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"packed weights '{path}' do not exist; expected a .npz written by save_packed")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as error:  # noqa: BLE001 - BadZipFile, ValueError, OSError, zlib.error (a corrupt stream), ...
        first = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise InputError(
            f"'{path}' is not a readable packed-weights .npz ({first}); "
            "expected a file written by bimatting.weights.packed.save_packed"
        ) from None
    if META_KEY not in arrays:
        raise InputError(
            f"'{path}' has no {META_KEY} entry; expected a file written by bimatting.weights.packed.save_packed"
        )
    meta = _parse_meta(arrays.pop(META_KEY), path)
    if (
        meta.get("format") != FORMAT
        or not isinstance(meta.get("format_version", 0), int)
        or meta.get("format_version", 0) > FORMAT_VERSION
    ):
        raise InputError(
            f"'{path}' is format {meta.get('format')!r} v{meta.get('format_version')}; "
            f"expected {FORMAT!r} v<={FORMAT_VERSION} (update bimatting to read it)"
        )
    return meta, arrays


def _parse_meta(raw, path):
    """The metadata dict, its fields of the expected types; InputError otherwise."""
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (ValueError, AttributeError):  # not UTF-8 / not JSON
        raise InputError(f"'{path}': {META_KEY} is not UTF-8 JSON; the file is corrupt") from None
    expected = {"arch": str, "config": dict, "binary_convs": list}
    if (
        not isinstance(meta, dict)
        or any(not isinstance(meta.get(k), t) for k, t in expected.items())
        or not all(isinstance(name, str) for name in meta["binary_convs"])
    ):
        raise InputError(
            f"'{path}': {META_KEY} lacks arch (str), config (dict) or binary_convs (list of str); "
            "expected a file written by bimatting.weights.packed.save_packed"
        )
    return meta


def unpack_weight(bits, alpha, channels):
    """Float weight [O, C, KH, KW] whose centring gives sign = unpack(bits) and mean|.| = alpha
    (alpha [O], float32 or float64; the result is float32)."""
    signs = layout.unpack(bits, channels, axis=1).astype(np.float64)  # [O, C, KH, KW]
    axes = (1, 2, 3)
    centred = signs - signs.mean(axis=axes, keepdims=True)
    spread = np.abs(centred).mean(axis=axes, keepdims=True)
    uniform = spread == 0  # every sign equal: weight 0 (see module doc)
    weight = np.where(
        uniform, 0.0, alpha.astype(np.float64)[:, None, None, None] * centred / np.where(uniform, 1.0, spread)
    )
    return weight.astype(np.float32)


def _rebuild_weight(conv, bits, alpha, corrections=1):
    """Set conv.weight from packed bits; rescale per channel by alpha / (alpha the conv computes)
    `corrections` times, keeping each channel's closest result."""
    import torch

    channels = conv.weight.shape[1]
    target = torch.from_numpy(alpha)
    scale = alpha.astype(np.float64)
    best, best_error = None, None
    for _ in range(corrections + 1):
        weight = torch.from_numpy(unpack_weight(bits, scale, channels))
        conv.weight.data.copy_(weight)
        got = conv.binary_weight()[1].cpu()
        error = (got.double() - target.double()).abs()
        if best is None:
            best, best_error = weight, error
        else:
            better = error < best_error
            best[better] = weight[better]
            best_error = torch.minimum(error, best_error)
        ratio = np.where(got.numpy() > 0, alpha.astype(np.float64) / np.maximum(got.double().numpy(), 1e-300), 1.0)
        scale = scale * ratio
    conv.weight.data.copy_(best)


def load_packed(path, device="cpu"):
    """The network stored at `path`, in eval mode: BiMatting (or any arch with binary convs)."""
    import torch

    meta, arrays = read_packed(path)
    model_class(meta["arch"])  # InputError for an unknown architecture
    model = build_network(meta["arch"], meta["config"], path)  # InputError for a config it does not accept
    binary = dict(_binary_convs(model))
    if sorted(binary) != sorted(meta["binary_convs"]):
        raise InputError(
            f"'{path}' does not match the '{meta['arch']}' network of this version "
            f"({len(meta['binary_convs'])} binary convs stored, {len(binary)} expected)"
        )
    odd = [key for key, value in arrays.items() if value.dtype.kind not in "fiub"]
    if odd:
        raise InputError(f"'{path}': entry '{odd[0]}' holds {arrays[odd[0]].dtype} data; expected numeric arrays")
    state = {
        key: torch.from_numpy(value) for key, value in arrays.items() if not key.endswith((BITS_SUFFIX, ALPHA_SUFFIX))
    }
    for name, conv in binary.items():
        state[name + ".weight"] = torch.zeros_like(conv.weight)
    load_state(model, state, meta["arch"], path)  # InputError naming missing/unexpected/wrong-shape entries
    for name, conv in binary.items():
        bits, alpha = arrays.get(name + BITS_SUFFIX), arrays.get(name + ALPHA_SUFFIX)
        out_channels, channels, kh, kw = conv.weight.shape
        want = (out_channels, layout.packed_channels(channels), kh, kw)
        if bits is None or bits.dtype != np.uint8 or bits.shape != want:
            raise InputError(
                f"'{path}': {name} bits are {None if bits is None else (bits.dtype, bits.shape)}, expected uint8 {want}"
            )
        if alpha is None or alpha.dtype.kind != "f" or alpha.shape != (out_channels,):
            raise InputError(
                f"'{path}': {name} alpha is {None if alpha is None else (alpha.dtype, alpha.shape)}, "
                f"expected float [{out_channels}]"
            )
        _rebuild_weight(conv, bits, alpha.astype(np.float32))
    model.packed_meta = meta
    return model.to(device).eval()
