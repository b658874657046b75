"""`bimatting tune`: MetaSchedule with every candidate measured on the emulated rpi4 board (our C++
RPC server, no tracker) or on this machine; the database resumes, `bimatting compile --tuning-db`
uses it and the tuned artifact still matches onnxruntime on the board. Ctrl-C stops cleanly.
(The tracker path is tested with bench in test_bench.py.) Timings are never asserted.
"""

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner
from tvm.s_tir.meta_schedule.runner.rpc_runner import RPCRunnerFuture

import bench_models
from bimatting.cli import cli
from bimatting.deploy.compiler import tuning_database as tuning
from bimatting.deploy.device import emulator
from bimatting.deploy.tuning.measure import CancelledOnInterrupt

CLI = [sys.executable, "-c", "import sys; from bimatting.cli import main; main(sys.argv[1:])"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="session")
def bimatting_rpi4(tmp_path_factory):
    """The tie-free random BiMatting of tests/bench_models.py, compiled for rpi4 (shared with bench)."""
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("cross compiler aarch64-linux-gnu-g++ is not installed")
    return bench_models.compiled_artifact(tmp_path_factory.mktemp("bench-models"), "rpi4")


def tune_args(onnx_path, db, trials, *where):
    return [
        "tune",
        onnx_path,
        "--target",
        "rpi4",
        *where,
        "--trials",
        trials,
        "--kernels",
        "binary",
        "--resolution",
        "128x96",
        "-o",
        db,
    ]


@pytest.mark.emulated
def test_tune_resumes_and_compile_uses_the_database(emulated_board, bimatting_rpi4, tmp_path):
    host, port = emulated_board("rpi4")
    onnx_path, db = bimatting_rpi4.parent / "tiefree.onnx", tmp_path / "rpi4.db"
    first = invoke(*tune_args(onnx_path, db, 3, "--rpc", f"{host}:{port}"), "--json")
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["trials"] == 3 and summary["failed"] == 0 and summary["total_trials"] == 3
    (task,) = summary["tuned"]  # round robin, largest kernel first: its batch took the 3 trials
    assert task["kind"] == "bconv" and task["records"] >= 2  # candidates + the hand-written baseline
    assert task["best_ms"] <= task["baseline_ms"]  # the baseline is a record: best can only beat it
    for name in (tuning.WORKLOADS, tuning.RECORDS, tuning.MANIFEST):
        assert (db / name).is_file()

    again = invoke(*tune_args(onnx_path, db, 1, "--rpc", f"{host}:{port}"), "--json")
    assert again.exit_code == 0, again.output
    resumed = json.loads(again.stdout)
    assert resumed["total_trials"] == 4 == tuning.read_manifest(db)["trials"]
    assert [t["name"] for t in resumed["tuned"]] != [task["name"]]  # an untuned kernel came first
    assert len(tuning.read_manifest(db)["tasks"]) == 2
    records = tuning.open_database(db).get_all_tuning_records()
    assert len(records) >= 6  # 3 + 1 candidates and two baselines, all kept

    tuned_tar = tmp_path / "tuned-rpi4.tar"
    built = invoke(
        "compile", onnx_path, "--target", "rpi4", "--resolution", "128x96", "--tuning-db", db, "-o", tuned_tar, "--json"
    )
    assert built.exit_code == 0, built.output
    meta = json.loads(built.stdout)
    assert meta["tuning"]["trials"] == 4 and meta["tuning"]["tuned_kernels"] == 2
    shutil.copyfile(onnx_path, tmp_path / onnx_path.name)  # the reference, found beside the artifact
    bench = invoke(
        "bench", tuned_tar, "--rpc", f"{host}:{port}", "--frames", bench_models.FRAMES, "--warmup", 0, "--json"
    )
    assert bench.exit_code == 0, bench.output
    data = json.loads(bench.stdout)
    assert data["verify"]["passed"] is True and data["artifact"]["tuning"]["trials"] == 4


def test_tune_local_float_convs(tmp_path):
    """MetaSchedule's own design space (float convs) measured on this machine."""
    onnx_path = bench_models.tiny_recurrent_onnx(tmp_path / "tiny.onnx")
    result = invoke(
        "tune",
        onnx_path,
        "--target",
        "host",
        "--local",
        "--trials",
        2,
        "--kernels",
        "float",
        "-o",
        tmp_path / "host.db",
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["trials"] == 2 and summary["failed"] == 0 and summary["tasks"] == 2
    assert all(t["kind"] == "conv" and t["best_ms"] <= t["baseline_ms"] for t in summary["tuned"])


def test_tune_rejects_bad_input(tmp_path):
    onnx_path = bench_models.tiny_recurrent_onnx(tmp_path / "tiny.onnx")
    other = bench_models.tiny_recurrent_onnx(tmp_path / "other.onnx", seed=1)
    cases = [
        (["tune", onnx_path, "--target", "host", "--trials", 2, "-o", tmp_path / "a"], "give where to measure"),
        (
            [
                "tune",
                onnx_path,
                "--target",
                "host",
                "--local",
                "--rpc",
                "127.0.0.1:1",
                "--trials",
                2,
                "-o",
                tmp_path / "a",
            ],
            "give where to measure",
        ),
        (
            ["tune", onnx_path, "--target", "rpi4", "--local", "--trials", 2, "-o", tmp_path / "a"],
            "--local measures on this",
        ),
        (["tune", onnx_path, "--target", "host", "--local", "--trials", 0, "-o", tmp_path / "a"], "--trials must be"),
        (
            [
                "tune",
                onnx_path,
                "--target",
                "host",
                "--rpc",
                f"127.0.0.1:{emulator.free_port()}",
                "--trials",
                1,
                "-o",
                tmp_path / "a",
            ],
            "cannot reach the RPC server",
        ),
        (["tune", onnx_path, "--target", "host", "--local", "--trials", 1, "-o", tmp_path], "is not a tuning database"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    made = invoke(
        "tune", onnx_path, "--target", "host", "--local", "--trials", 1, "--kernels", "float", "-o", tmp_path / "db"
    )
    assert made.exit_code == 0, made.output
    mixed = invoke("tune", other, "--target", "host", "--local", "--trials", 1, "-o", tmp_path / "db")
    assert mixed.exit_code == 2 and "holds another model" in mixed.output
    compiled = invoke(
        "compile", onnx_path, "--target", "rpi4", "--tuning-db", tmp_path / "db", "-o", tmp_path / "x.tar"
    )
    assert compiled.exit_code == 2 and "was tuned for target 'host'" in compiled.output


@pytest.mark.emulated
def test_ctrl_c_stops_tuning_without_stray_processes(emulated_board, bimatting_rpi4, tmp_path):
    host, port = emulated_board("rpi4")
    db = tmp_path / "rpi4.db"
    # Far more trials than can finish before the interrupt (64 once finished first, rc 0, on a busy
    # host): the check is that Ctrl-C stops a tuning run, so one must still be running.
    args = [str(a) for a in tune_args(bimatting_rpi4.parent / "tiefree.onnx", db, 1024, "--rpc", f"{host}:{port}")]
    process = subprocess.Popen(
        CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )  # its own group, as a terminal's foreground job
    deadline = time.monotonic() + 300
    while len(emulator.group_pids(process.pid)) < 2:  # builder workers running
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-3000:]
    assert "Interrupted" in stderr and "Traceback" not in stderr
    time.sleep(0.5)
    assert emulator.group_pids(process.pid) == []  # no builder, runner or board session left behind
    if db.exists():  # batches finished before Ctrl-C are kept in a readable database
        assert tuning.read_manifest(db)["trials"] >= 1


def test_a_measurement_not_started_is_cancelled_once_ctrl_c_was_pressed():
    """A batch's candidates are all submitted to the board's one-at-a-time runner; after Ctrl-C the
    one being measured finishes and the rest are cancelled, reported to the scheduler as errors."""
    interrupt, gate = threading.Event(), threading.Event()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        running = CancelledOnInterrupt(pool.submit(lambda: [float(gate.wait(30))]), interrupt)
        pending = CancelledOnInterrupt(pool.submit(lambda: [2.0]), interrupt)
        assert not pending.done()
        interrupt.set()
        assert pending.done() and not running.done()
        assert RPCRunnerFuture(pending, 10).result().error_msg is not None
        gate.set()
        assert RPCRunnerFuture(running, 10).result().error_msg is None and running.result() == [1.0]
