"""A compact snapshot of a distillation run, small enough to commit: a warm restart, not a resume.

The full resume state (fp32 latent weights, their average, Adam's moments, RNG states: ~65 MB)
stays in the run folder outside the repository. A snapshot keeps what a new machine needs to go
on learning from where the run was: the weights, at about 1 byte per latent weight.

    latent weights w [O, C, KH, KW] of every binary conv:
        q = round(w / s_o) as int8,  s_o = max |w_o| / 127        (per output channel)
        restored as q * s_o: |w - q s_o| <= s_o / 2; what is deployed is sign(w - mean w_o), so
        only latent weights within that error of their channel's mean can change sign
    every other float parameter and buffer: float32, exactly
    integer buffers (BatchNorm's counters): as they are
    record: the run's step, held-out figures and settings (JSON)

A restart from it (`bimatting distill --init snapshot.npz`) starts Adam afresh and its own schedule.
"""

import json
from pathlib import Path

import numpy as np
import torch

from bimatting.errors import InputError
from bimatting.train.recipe import latent_parameters
from bimatting.weights.packed import write_npz

FORMAT = "bimatting-distill-snapshot"
META = "__snapshot__"
SCALE = ".__scale__"


def _latent_names(model):
    latent = {id(p) for p in latent_parameters(model)}
    return {name for name, p in model.named_parameters() if id(p) in latent}


def save_snapshot(path, model, record=None):
    """Write the snapshot of `model` at `path` (atomically); returns its size in bytes."""
    arrays, latent = {}, _latent_names(model)
    for name, value in model.state_dict().items():
        value = value.detach().cpu()
        if name in latent:
            flat = value.flatten(1)
            scale = (flat.abs().amax(dim=1) / 127).clamp_min(1e-30)  # [O]
            arrays[name] = torch.round(flat / scale[:, None]).to(torch.int8).reshape(value.shape).numpy()
            arrays[name + SCALE] = scale.float().numpy()
        else:
            arrays[name] = value.numpy()
    meta = {"format": FORMAT, "record": record or {}}
    arrays[META] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    return write_npz(path, arrays)


def is_snapshot(path):
    path = Path(path)
    if path.suffix.lower() != ".npz" or not path.is_file():
        return False
    with np.load(path, allow_pickle=False) as data:
        return META in data.files


def read_snapshot(path):
    """(state_dict of float/int tensors, record dict) of a snapshot."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise InputError(
            f"'{path}' is not a readable snapshot ({error}); expected a file written by "
            "bimatting.train.snapshot.save_snapshot"
        ) from None
    if META not in arrays or json.loads(arrays[META].tobytes()).get("format") != FORMAT:
        raise InputError(f"'{path}' is not a distillation snapshot; expected a file written by save_snapshot")
    meta = json.loads(arrays.pop(META).tobytes())
    state = {}
    for name, value in arrays.items():
        if name.endswith(SCALE):
            continue
        if name + SCALE in arrays:
            scale = torch.from_numpy(arrays[name + SCALE])
            state[name] = (torch.from_numpy(value).float().flatten(1) * scale[:, None]).reshape(value.shape)
        else:
            state[name] = torch.from_numpy(value.copy())
    return state, meta["record"]
