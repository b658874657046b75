"""What the repository itself may hold: no tracked file over 5 MB (a clone downloads every
version of every file; a run's full resume state belongs in its own folder outside the checkout,
and only a compact snapshot is committed, see training/README.md)."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LIMIT = 5 * 1024 * 1024


def test_no_tracked_file_over_5_mb():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout (an unpacked release): no tracked files to measure")
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    sizes = {
        name: (REPO / name).stat().st_size for name in listed.decode().split("\0") if name and (REPO / name).is_file()
    }
    assert sizes, "git ls-files listed nothing"
    too_big = {name: size for name, size in sizes.items() if size > LIMIT}
    assert not too_big, f"tracked files over 5 MB: {too_big}"
