"""Untrusted weights: truncated and bit-flipped checkpoints (.pth) and packed weights (.npz),
crafted packed files, and a pickle that would run code, through every entry point that loads
weights.

Each corrupt file ends in one clear InputError line or in a network (a flipped bit inside a
tensor's bytes is a valid, different checkpoint: it must load), never another exception. The
hostile pickle must be refused by every verb without running: its payload would create a
marker file, and the marker must not exist afterwards.

Case counts: 160 corrupt .pth (20 truncations, 120 flips in the pickle / zip records / zip
directory, 20 in tensor bytes), 80 corrupt .npz (20 truncations, 60 flips), 9 crafted .npz,
2 hostile pickles (in a state_dict, in a checkpoint's training state) x 11 entry points
(load_model, load_checkpoint, train --resume, train --teacher, export, matte --checkpoint on torch and
onnxruntime, profile, compile, test, data synth --teacher), and a pickled .npz.
"""

import io
import json
import os
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import bimatting
from bimatting.cli import cli
from bimatting.errors import InputError
from bimatting.models import build_model
from bimatting.weights.checkpoints import save_checkpoint
from bimatting.weights.packed import META_KEY, pack_state, save_packed
from fuzz_inputs import assert_one_line, bit_flips, gradient_frames, truncations, write_video
from test_train import write_eval_set


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return build_model("bimatting").eval()


@pytest.fixture(scope="module")
def checkpoint_bytes(network, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "net.pth"
    save_checkpoint(path, network, "bimatting")
    return path.read_bytes()


@pytest.fixture(scope="module")
def packed_bytes(network, tmp_path_factory):
    path = tmp_path_factory.mktemp("packed") / "net.npz"
    save_packed(path, network)
    return path.read_bytes()


def _structure_regions(data):
    """Byte ranges of a torch zip that are not tensor payload: the pickle, the small records
    (version, byteorder) with their local headers, and the central directory."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    regions = []
    for info in archive.infolist():
        if not info.filename.split("/")[-1].isdigit():  # data/<n> entries are tensor storages
            start = info.header_offset
            regions.append((start, min(len(data), start + 30 + len(info.filename) + info.compress_size + 64)))
    regions.append((data.find(b"PK\x01\x02"), len(data)))  # central directory and its end record
    return regions


def _tensor_regions(data):
    archive = zipfile.ZipFile(io.BytesIO(data))
    return [
        (i.header_offset + 64 + len(i.filename), i.header_offset + 64 + len(i.filename) + i.compress_size)
        for i in archive.infolist()
        if i.filename.split("/")[-1].isdigit() and i.compress_size > 1024
    ]


def _load_outcome(path):
    try:
        model = bimatting.load_model(path)
    except InputError as error:
        assert_one_line(error, path.name)
        return "InputError"
    assert isinstance(model, torch.nn.Module) and not model.training
    return "ok"


def _run_corruptions(cases, tmp_path, suffix):
    outcomes = {}
    for name, data in cases:
        path = tmp_path / f"corrupt{suffix}"
        path.write_bytes(data)
        outcomes[name] = _load_outcome(path)
    counts = {kind: sum(1 for v in outcomes.values() if v == kind) for kind in set(outcomes.values())}
    print(f"{len(outcomes)} corrupt {suffix}: {counts}")
    assert all(outcomes[name] == "InputError" for name in outcomes if name.startswith("cut")), outcomes
    return counts


@pytest.mark.timeout(240)
def test_truncated_and_bit_flipped_checkpoints(checkpoint_bytes, tmp_path):
    data = checkpoint_bytes
    cases = (
        truncations(data, 20)
        + bit_flips(data, 120, seed=11, regions=_structure_regions(data))
        + bit_flips(data, 20, seed=12, regions=_tensor_regions(data))
    )
    counts = _run_corruptions(cases, tmp_path, ".pth")
    assert counts.get("InputError", 0) >= 80 and counts.get("ok", 0) >= 20, counts  # both outcomes exercised


@pytest.mark.timeout(240)
def test_truncated_and_bit_flipped_packed_weights(packed_bytes, tmp_path):
    # compressed entries carry a CRC-32, so nearly every flip must be caught by the reader; the few
    # that land in unchecked header fields load (~5 s each: the weights are rebuilt from bits)
    counts = _run_corruptions(truncations(packed_bytes, 20) + bit_flips(packed_bytes, 60, seed=13), tmp_path, ".npz")
    assert counts.get("InputError", 0) >= 60, counts


def _crafted_packed(network):
    """name -> (arrays for np.savez, expected fragment): well-formed zips with hostile contents."""
    good = pack_state(network, "bimatting")
    meta = json.loads(good[META_KEY].tobytes())
    conv = meta["binary_convs"][0]

    def with_meta(**changes):
        return {**good, META_KEY: np.frombuffer(json.dumps({**meta, **changes}).encode(), np.uint8)}

    bn = next(k for k in good if k.endswith("running_mean"))
    return {
        "meta not JSON": ({**good, META_KEY: np.frombuffer(b"\xff\xfe{", np.uint8)}, "is not UTF-8 JSON"),
        "meta a list": ({**good, META_KEY: np.frombuffer(b"[1, 2]", np.uint8)}, "lacks arch"),
        "unknown arch": (with_meta(arch="resnet"), "resnet"),
        "config the network does not take": (with_meta(config={"width": 3}), "does not accept"),
        "config not a dict": (with_meta(config=[1, 2]), "lacks arch"),
        "BN statistics of the wrong length": ({**good, bn: np.zeros(3, np.float32)}, "wrong shape"),
        "bits as floats": ({**good, conv + ".weight.bits": good[conv + ".weight.bits"].astype(np.float32)}, "bits are"),
        "alpha of the wrong length": ({**good, conv + ".weight.alpha": np.ones(2, np.float32)}, "alpha is"),
        "text array": ({**good, bn: np.array(["a", "b"])}, "expected numeric arrays"),
    }


def test_crafted_packed_files_are_refused_in_one_line(network, tmp_path):
    for name, (arrays, fragment) in _crafted_packed(network).items():
        path = tmp_path / "crafted.npz"
        np.savez(path, **arrays)
        with pytest.raises(InputError) as error:
            bimatting.load_model(path)
        assert_one_line(error.value, fragment), name


# -- a pickle that would run code, through every entry point ------------------------------------


class _Payload:
    """Unpickling this runs `touch MARKER` (os.system): what a hostile .pth does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, network):
    """(state_dict-shaped .pth, project-checkpoint-shaped .pth, marker path) with the payload inside."""
    folder = tmp_path_factory.mktemp("hostile")
    marker = folder / "payload-ran"
    state = dict(network.state_dict())
    state["backbone.feature.0.0.weight"] = _Payload(marker)
    torch.save(state, folder / "evil-state.pth")
    torch.save(
        {
            "format": "bimatting-checkpoint",
            "format_version": 1,
            "arch": "bimatting",
            "config": {},
            "state_dict": dict(network.state_dict()),
            "extra": {"optimizer": _Payload(marker)},
        },
        folder / "evil-checkpoint.pth",
    )
    assert not marker.exists()
    return folder / "evil-state.pth", folder / "evil-checkpoint.pth", marker


@pytest.fixture(scope="module")
def little_world(tmp_path_factory):
    """A 3-frame video and a tiny evaluation set (the verbs check these before loading weights)."""
    folder = tmp_path_factory.mktemp("world")
    video = write_video(folder / "clip.avi", gradient_frames(3, 64, 48))
    return video, write_eval_set(folder / "evalset", clips=1, frames=2)


def _entry_points(evil, video, evalset, out):
    """verb -> argv; each reaches its checkpoint loader with `evil`."""
    return {
        "train --resume": [
            "train",
            "--stage",
            "1",
            "--data-root",
            evalset,
            "--out",
            out / "train",
            "--resume",
            evil,
            "--seq-lr",
            "2",
            "--size-lr",
            "128",
            "--steps",
            "1",
            "--no-progress",
        ],
        "train --teacher": [
            "train",
            "--stage",
            "1",
            "--data-root",
            evalset,
            "--out",
            out / "train2",
            "--teacher",
            evil,
            "--seq-lr",
            "2",
            "--size-lr",
            "128",
            "--steps",
            "1",
            "--no-progress",
        ],
        "export": ["export", evil, "-o", out / "model.onnx"],
        "matte --checkpoint (torch)": ["matte", video, "-o", out / "matte.avi", "--checkpoint", evil, "--quiet"],
        "matte --checkpoint (onnxruntime)": [
            "matte",
            video,
            "-o",
            out / "matte2.avi",
            "--checkpoint",
            evil,
            "--backend",
            "onnxruntime",
            "--quiet",
        ],
        "profile": ["profile", evil, "--mask-density", "0.5"],
        "compile": ["compile", evil, "--target", "host", "-o", out / "model.tar"],
        "test --checkpoint": ["test", "--data", evalset, "--checkpoint", evil, "--out", out / "pred"],
        "data synth --teacher": [
            "data",
            "synth",
            "--out",
            out / "synth",
            "--clips",
            "1",
            "--frames",
            "2",
            "--size",
            "64x48",
            "--footage",
            video,
            "--teacher",
            evil,
        ],
    }


@pytest.mark.timeout(300)
@pytest.mark.parametrize("which", ["state_dict", "checkpoint"])
def test_hostile_pickle_is_refused_by_every_entry_point_without_running(which, hostile, little_world, tmp_path):
    evil = hostile[0] if which == "state_dict" else hostile[1]
    marker = hostile[2]
    video, evalset = little_world
    with pytest.raises(InputError, match="refused to load"):
        bimatting.load_model(evil)
    with pytest.raises(InputError, match="refused to load"):
        bimatting.weights.checkpoints.load_checkpoint(evil)
    for verb, argv in _entry_points(evil, video, evalset, tmp_path).items():
        result = CliRunner().invoke(cli, [str(a) for a in argv], catch_exceptions=False)
        lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert result.exit_code == 2 and len(lines) == 1 and "refused to load" in lines[0], f"{verb}: {result.output}"
        assert "Traceback" not in result.output, verb
        assert not marker.exists(), f"{verb} ran the payload"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("train")) == []  # nothing written


def test_pickled_npz_is_refused_without_running(tmp_path):
    """Packed weights never unpickle: an object array (stored as a pickle) is refused."""
    marker = tmp_path / "payload-ran"
    np.savez(tmp_path / "evil.npz", **{META_KEY: np.array([_Payload(marker)], dtype=object)})
    with pytest.raises(InputError, match="not a readable packed-weights"):
        bimatting.load_model(tmp_path / "evil.npz")
    assert not marker.exists()
