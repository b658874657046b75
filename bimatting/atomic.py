"""Atomic file output: write to a temporary file beside the target, then rename.

A failed or interrupted write never leaves a half-written file at the target path, and the
previous file (if any) stays intact. Every output of the toolchain goes through here.
"""

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from bimatting.errors import InputError, RuntimeFailure

# errors that only a write raises: a full disk, a file size limit (RLIMIT_FSIZE with SIGXFSZ
# ignored), a quota, a read-only file system (a folder without write permission is refused up
# front by check_writable_parent)
WRITE_FAILURES = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


def _write_failure(path, error):
    """A RuntimeFailure (one line) for an OSError of the write, else None."""
    if isinstance(error, OSError) and error.errno in WRITE_FAILURES:
        return RuntimeFailure(f"could not write '{path}' ({error.strerror}); the previous file, if any, is unchanged")
    return None


def check_writable_parent(path):
    """Raise InputError (one clear line) when `path` cannot be created."""
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise InputError(f"cannot write '{path}': folder '{parent}' does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write '{path}': folder '{parent}' is not writable; choose another output path")


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path to write; on success it is renamed to `path`, on error removed.

    `suffix` defaults to the target's suffix so tools that pick a format from the extension
    (OpenCV's VideoWriter, cv2.imwrite, onnx.save) still see it.
    """
    path = Path(path)
    check_writable_parent(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix, dir=path.resolve().parent
    )
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        failure = _write_failure(path, error)
        if failure is not None:
            raise failure from None
        raise


@contextlib.contextmanager
def atomic_dir(path):
    """Like atomic_path for a folder: build it under a temporary name, then swap it in."""
    path = Path(path)
    check_writable_parent(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.resolve().parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = _write_failure(path, error)
        if failure is not None:
            raise failure from None
        raise


def write_bytes(path, data):
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
