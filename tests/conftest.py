"""Shared fixtures. Data from ../shared (real footage) is optional: tests that need it skip."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIMATTING_SHARED", REPO.parent / "shared"))
BEDROOM = SHARED / "data" / "sam2_bedroom_video" / "frames"


@pytest.fixture(scope="session")
def shared_dir():
    if not SHARED.is_dir():
        pytest.skip(f"real footage not available ({SHARED} is absent)")
    return SHARED


@pytest.fixture(scope="session")
def bedroom_frames_dir(shared_dir):
    if not BEDROOM.is_dir():
        pytest.skip(f"real footage not available ({BEDROOM} is absent)")
    return BEDROOM


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    # Two cores on CI: keep torch from oversubscribing when tests run beside compilers.
    try:
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    except ImportError:
        pass
