"""bench/soak.py in small, on the C++ RPC server of the emulated rpi4 board: it keeps serving through
sequential, concurrent and killed clients and leaves no child process or work folder behind.

Only the C++ server: TVM's Python server takes ~20 s to start under qemu on a busy 2-core host;
`python bench/soak.py` soaks both at full size (minutes). No timing is asserted.
"""
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench_soak():
    spec = importlib.util.spec_from_file_location("bench_soak", REPO / "bench" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.emulated
def test_cpp_server_keeps_serving_and_leaks_nothing_under_a_small_soak(emulator_ready):
    soak = _bench_soak()
    args = soak.parse_args(["--servers", "cpp", "--sessions", "30", "--clients", "4", "--per-client", "5",
                            "--kills", "3", "--upload-mb", "8", "--run-seconds", "1.5"])
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
