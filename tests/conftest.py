"""Shared fixtures. Data from ../shared (real footage) is optional: tests that need it skip."""

import os
from pathlib import Path

import pytest

from bimatting.deploy.device import emulator

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
        import torch  # noqa: PLC0415 - torch is optional here (ImportError below)

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    except ImportError:
        pass


# Emulated aarch64 boards: TVM RPC servers under qemu-user (set up by scripts/setup_arm_emu.sh).
@pytest.fixture(scope="session")
def emulator_ready():
    """The emulator's root folder; skips (with the set-up hint) when the emulator is not set up."""
    try:
        return emulator.load_emulator()
    except emulator.EmulatorNotSetUp as error:
        pytest.skip(f"emulated ARM board unavailable: {error}")


def _emulated_board_factory(server):
    boards = {}

    def board(target="rpi4"):
        if target not in boards or not boards[target].alive():
            try:
                boards[target] = emulator.start_board(target, server=server)
            except emulator.EmulatorNotSetUp as error:
                pytest.skip(f"emulated ARM board unavailable: {error}")
        return boards[target].host, boards[target].port

    return board, boards


@pytest.fixture(scope="session")
def emulated_board():
    """Factory: `host, port = emulated_board("rpi4")` -> a C++ TVM RPC server on 127.0.0.1 that
    emulates that target's CPU (QEMU_CPU from its TOML). One server per target for the session;
    it serves clients concurrently. Skips when the emulator is not set up."""
    board, boards = _emulated_board_factory("cpp")
    yield board
    for running in boards.values():
        running.stop()  # kills the server's process group


@pytest.fixture(scope="session")
def emulated_python_board():
    """Like `emulated_board`, with TVM's own Python rpc_server (through deploy/device/board_server.py,
    ~5-10 s to start). It serves ONE client at a time: drop a session (`del remote`) before
    connecting again."""
    board, boards = _emulated_board_factory("python")
    yield board
    for running in boards.values():
        running.stop()
