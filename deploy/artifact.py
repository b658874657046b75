"""The compiled artifact: one `.tar` file (or a folder with the same three files).

    model.so        the Relax VM executable (cross-compiled for the board)
    params.npz      the parameters, passed to `main` after the inputs, in metadata order
    metadata.json   inputs/outputs and shapes, recurrent state pairs, target, versions,
                    sha256 of the source model, compile options

`write(path, library_file, params, metadata)` writes atomically (no partial artifact on
failure); `read(path)` returns an `Artifact` whose files live in a temporary folder while it is
referenced.
"""

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from bimatting.atomic import atomic_dir, atomic_path
from bimatting.errors import InputError, RuntimeFailure

FORMAT = "bimatting-tvm-artifact"
FORMAT_VERSION = 1
LIBRARY, PARAMS, METADATA = "model.so", "params.npz", "metadata.json"


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_tar_path(path):
    return str(path).endswith(".tar")


def _params_bytes(params):
    buffer = io.BytesIO()
    np.savez(buffer, **params)
    return buffer.getvalue()


def write(path, library_file, params, metadata):
    """Write the artifact to `path` (`.tar` -> one tar file, else a folder), atomically."""
    meta = dict(metadata, format=FORMAT, format_version=FORMAT_VERSION)
    files = {METADATA: json.dumps(meta, indent=2, sort_keys=True).encode(), PARAMS: _params_bytes(params)}
    if is_tar_path(path):
        with atomic_path(path) as tmp:
            with tarfile.open(tmp, "w") as tar:
                tar.add(library_file, arcname=LIBRARY)
                for name, data in files.items():
                    info = tarfile.TarInfo(name)
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
            os.chmod(tmp, 0o644)  # temp files are private; an artifact is meant to be shared
    else:
        with atomic_dir(path) as tmp:
            shutil.copyfile(library_file, Path(tmp) / LIBRARY)
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            os.chmod(tmp, 0o755)
    return meta


class Artifact:
    """A read artifact: `metadata` (dict), `params` (name -> array), `library_path`."""

    def __init__(self, folder, metadata, keep=None):
        self.folder = Path(folder)
        self.metadata = metadata
        self._keep = keep  # a TemporaryDirectory that owns `folder`, if extracted
        with np.load(self.folder / PARAMS) as data:
            self.params = {name: data[name] for name in metadata["params"]}

    @property
    def library_path(self):
        return self.folder / LIBRARY

    @property
    def target(self):
        return self.metadata["target"]


def read(path):
    """Open an artifact file or folder; InputError if it is not one."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"artifact '{path}' does not exist; build one with `bimatting compile`")
    keep = None
    if path.is_dir():
        folder = path
    else:
        keep = tempfile.TemporaryDirectory(prefix="bimatting-artifact-")
        try:
            with tarfile.open(path) as tar:
                names = set(tar.getnames())
                if not {LIBRARY, PARAMS, METADATA} <= names:
                    raise InputError(
                        f"'{path}' is not a bimatting artifact (it lacks {LIBRARY}, {PARAMS} or {METADATA})"
                    )
                for name in (LIBRARY, PARAMS, METADATA):
                    tar.extract(name, keep.name, filter="data")
        except tarfile.TarError:
            raise InputError(f"'{path}' is not a bimatting artifact (not a tar file)") from None
        except OSError as error:  # a full disk or file size limit while unpacking to the temp folder
            raise RuntimeFailure(
                f"cannot unpack artifact '{path}' into {keep.name} ({error.strerror}); "
                "free some disk space or pass the artifact as a folder"
            ) from None
        folder = Path(keep.name)
    try:
        metadata = json.loads((folder / METADATA).read_text())
    except (OSError, ValueError):
        raise InputError(f"'{path}' is not a bimatting artifact (no readable {METADATA})") from None
    if metadata.get("format") != FORMAT:
        raise InputError(f"'{path}' is not a bimatting artifact (format {metadata.get('format')!r})")
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(
            f"artifact '{path}' has format version {metadata['format_version']}; this "
            f"bimatting reads up to {FORMAT_VERSION}: upgrade bimatting"
        )
    return Artifact(folder, metadata, keep)
