"""bench/soak.py in small, on the C++ RPC server of the emulated rpi4 board: it keeps serving through
sequential, concurrent and killed clients and leaves no child process or work folder behind.

The small soak runs only the C++ server (TVM's Python server takes ~20 s to start under qemu on a
busy 2-core host); the Python one (board_server.py) is checked against a client reset mid-session;
`python bench/soak.py` soaks both at full size (minutes). No timing is asserted.
"""

import importlib.util
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
import tvm.rpc

REPO = Path(__file__).resolve().parents[1]


def _bench_soak():
    spec = importlib.util.spec_from_file_location("bench_soak", REPO / "bench" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.emulated
def test_cpp_server_keeps_serving_and_leaks_nothing_under_a_small_soak(emulator_ready):
    soak = _bench_soak()
    args = soak.parse_args(
        [
            "--servers",
            "cpp",
            "--sessions",
            "30",
            "--clients",
            "4",
            "--per-client",
            "5",
            "--kills",
            "3",
            "--upload-mb",
            "8",
            "--run-seconds",
            "1.5",
        ]
    )
    rows, (summary,) = soak.soak(args)
    by_phase = {row["phase"]: row for row in rows}
    assert by_phase["sequential"]["sessions"] == 30 and by_phase["concurrent"]["sessions"] == 20
    assert by_phase["kill-upload"]["sessions"] + by_phase["kill-upload"]["missed"] == 3
    if summary["kernel"]:  # with the cross compiler, clients are also killed mid-run
        assert by_phase["kill-run"]["sessions"] + by_phase["kill-run"]["missed"] == 3
    for row in rows:
        assert row["serves"] and row["failures"] == 0, row
        assert row["children_left"] == 0 and row["folders_left"] == 0, row
    assert summary["problems"] == [], summary


@pytest.mark.emulated
def test_soak_probe_sees_an_open_session(emulator_ready, tmp_path):
    """The leak counts are not vacuous: an open session is one child and one work folder."""
    soak = _bench_soak()
    with soak.Server("cpp", tmp_path) as server:
        remote = server.board.connect()
        assert remote.cpu().exist
        assert len(soak.soak_probe.children(server.pid)) == 1 and len(soak.soak_probe.folders(server.tmpdir)) == 1
        del remote
        assert server.settle(10) == ([], [])
        assert server.rss() > 0


def _reset_mid_session(host, port):
    """A client that opens a session, promises a 1 MB packet, sends 100 bytes and resets the
    connection (SO_LINGER 0): what a client killed mid-upload leaves the server."""
    rpc_magic = 0xFF271  # TVM RPC handshake (tvm/rpc/base.py)
    sock = socket.create_connection((host, port), timeout=30)
    key = b"client:"
    sock.sendall(struct.pack("<i", rpc_magic) + struct.pack("<i", len(key)) + key)
    assert struct.unpack("<i", sock.recv(4))[0] == rpc_magic  # the server took the session
    sock.sendall(struct.pack("<q", 1 << 20) + b"x" * 100)
    time.sleep(1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _session_works(host, port, seconds=120):
    """A fresh session answers within `seconds` (a dead accept loop leaves connect hanging)."""
    answers = []

    def connect():
        try:
            remote = tvm.rpc.connect(host, port, session_timeout=60)
            answers.append(remote.cpu(0).exist)
        except Exception as error:  # noqa: BLE001 - reported in the assertion
            answers.append(repr(error))

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(seconds)
    return answers[0] if answers else f"no answer in {seconds} s"


@pytest.mark.emulated
def test_python_board_server_keeps_serving_after_a_client_resets_mid_session(emulated_python_board):
    """TVM 0.27's own server ends its accept loop when a session's process exits with an error
    (a reset client); deploy/device/board_server.py, what the README has a board run, logs it and
    serves the next client."""
    host, port = emulated_python_board("rpi4")
    assert _session_works(host, port) is True
    _reset_mid_session(host, port)
    assert _session_works(host, port) is True
    _reset_mid_session(host, port)
    assert _session_works(host, port) is True
