#!/usr/bin/env python
"""Soak of the RPC servers on the emulated rpi4 board: many sessions, concurrent clients, killed clients.

    python bench/soak.py [--servers cpp,python] [--sessions 1000] [--clients 8] [--per-client 25]
                         [--kills 20] [--upload-mb 20] [--run-seconds 2] [--rss-bound-mb 20] [--json]

For each server kind `emulator.start_board` knows (our C++ mini server, TVM's Python server) it
starts an emulated rpi4 board and runs four phases:
  sequential   --sessions sessions, one after another
  concurrent   --clients threads, --per-client sessions each
  kill-upload  --kills client processes SIGKILLed while uploading --upload-mb MB
  kill-run     --kills client processes SIGKILLed while a remote call runs (a ~--run-seconds
               time_evaluator loop of the kernel on the board)
A session: connect, upload a tiny cross-compiled vector add (.so), load it, run it once and check
the sum, close. Without the cross compiler a session uploads a few bytes and asks the board for its
CPU instead, and kill-run is skipped (there is then nothing that runs long on the board).

After each phase the server must still serve a fresh session; the table shows its resident memory
(VmRSS of the server process: the qemu process running it) before and after the phase, and the
child processes and work folders left once ended sessions have settled. The server runs with its
own TMPDIR, so every work folder it makes is counted.

Exit code 1 when a server died or stopped serving, a sequential or concurrent session failed,
children or folders were left, or the server's RSS grew by more than --rss-bound-mb from the end
of the warm-up (the first 20 sessions) to the end. Why 20 MB: at default sizes (1,280 sessions
and 40 kills per server) the C++ server grew by 2.1 MB (once, when 8 sessions first ran at the
same time) and the Python server by 0.7 MB: allocator and qemu code-cache noise. A leak of
16 KB per session crosses the bound over 1,280 sessions.

"refused" counts sessions whose connect was reset before the server saw them. TVM's Python
server listens with a backlog of 1 and serves one client at a time, so 8 clients connecting at
once overflow the kernel's accept queue and an occasional connect is reset (SYN cookies): a
limitation of that server (a real board runs the same program), reported but not failed.
Emulated timings say nothing about a real board; the seconds are only for scale.
"""

import argparse
import json
import os
import random
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # soak_probe beside this file

import numpy as np  # noqa: E402

import soak_probe  # noqa: E402
from bimatting.deploy.device import emulator  # noqa: E402
from bimatting.deploy.device.rpc import deadline  # noqa: E402
from bimatting.targets import load_target  # noqa: E402

N = 1024  # vector length of the kernel each session runs
WARMUP = 20  # sessions before the reference RSS: qemu translates the session code paths first
SESSION_TIMEOUT_S = 60.0  # a hung session is a failure, not a hung bench


def build_library(folder, target="rpi4"):
    """A vector add cross-compiled for the board, or None without the cross compiler."""
    import tvm
    from tvm import te
    from tvm.support import cc

    board = load_target(target)
    if shutil.which(board["cross_compiler"]) is None:
        return None
    a = te.placeholder((N,), "float32", name="A")
    b = te.placeholder((N,), "float32", name="B")
    c = te.compute((N,), lambda i: a[i] + b[i], name="C")
    module = tvm.IRModule({"vadd": te.create_prim_func([a, b, c]).with_attr("global_symbol", "vadd")})
    path = Path(folder) / "soak_vadd.so"
    tvm.compile(module, target=tvm.target.Target(board["llvm"])).export_library(
        str(path), fcompile=cc.cross_compiler(board["cross_compiler"])
    )
    return path


def _session_body(remote, library):
    import tvm

    if library is None:
        remote.upload(bytearray(b"soak" * 256), target="soak.bin")
        return remote.cpu().exist
    remote.upload(str(library))
    module = remote.load_module(library.name)
    dev = remote.cpu()
    values = np.arange(N, dtype=np.float32)
    a, c = tvm.runtime.tensor(values, dev), tvm.runtime.empty((N,), "float32", dev)
    module["vadd"](a, a, c)
    return np.array_equal(c.numpy(), values + values)
    # returning drops remote, module and tensors: the session closes here


def one_session(board, library, timeout=SESSION_TIMEOUT_S):
    """None when a session ran and gave the right answer, else a one-line reason. The exception is
    turned into text so that no traceback keeps the session open (the Python server serves one
    client at a time)."""
    step = "connect"
    try:
        with deadline(timeout, "a soak session"):  # main thread only; threads run unbounded
            remote = board.connect()
            step = "session"
            return None if _session_body(remote, library) else "session: wrong result"
    except Exception as error:  # noqa: BLE001 - any failure is counted, the bench goes on
        text = str(error).strip()
        return f"{step}: {type(error).__name__}: {text.splitlines()[-1][:200] if text else ''}"


def sequential(board, library, sessions):
    failures = [reason for reason in (one_session(board, library) for _ in range(sessions)) if reason]
    return sessions - len(failures), failures


def concurrent(board, library, clients, per_client):
    results = []
    lock = threading.Lock()

    def client():
        for _ in range(per_client):
            reason = one_session(board, library)
            with lock:
                results.append(reason)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SESSION_TIMEOUT_S * per_client)
    failures = [reason for reason in results if reason]
    failures += ["client thread hung"] * sum(thread.is_alive() for thread in threads)
    return len(results) - len([r for r in results if r]), failures


def _killed_child(board, library, mode, upload_bytes, run_seconds, pipe):
    """In a forked client: connect, set up, write 's' just before the long operation, 'd' after."""
    import tvm

    remote = board.connect()
    if mode == "upload":
        blob = bytearray(upload_bytes)
        os.write(pipe, b"s")
        remote.upload(blob, target="big.bin")
    else:
        remote.upload(str(library))
        module = remote.load_module(library.name)
        dev = remote.cpu()
        a, c = tvm.runtime.tensor(np.ones(N, np.float32), dev), tvm.runtime.empty((N,), "float32", dev)
        timer = module.time_evaluator("vadd", dev, number=1, repeat=1, min_repeat_ms=int(run_seconds * 1000))
        os.write(pipe, b"s")
        timer(a, a, c)  # the board loops the kernel for >= run_seconds
    os.write(pipe, b"d")


def killed_client(board, library, mode, delay, upload_bytes, run_seconds):
    """Forks a client, SIGKILLs it `delay` s into its long operation: 'killed' (mid-operation),
    'finished' (too late: it had ended) or 'failed' (never got there)."""
    read_end, write_end = os.pipe()
    pid = os.fork()  # no other threads run now (the concurrent phase has joined them)
    if pid == 0:
        os.close(read_end)
        code = 0
        try:
            _killed_child(board, library, mode, upload_bytes, run_seconds, write_end)
        except BaseException:  # noqa: BLE001 - the parent reads the outcome from the pipe
            code = 1
        os._exit(code)
    os.close(write_end)
    seen = b""
    try:
        if select.select([read_end], [], [], SESSION_TIMEOUT_S)[0]:
            seen = os.read(read_end, 2)
        if seen == b"s":
            time.sleep(delay)
            if select.select([read_end], [], [], 0)[0]:
                seen += os.read(read_end, 2)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
    return {b"s": "killed", b"sd": "finished"}.get(seen, "failed")


def kill_phase(board, library, mode, kills, upload_bytes, run_seconds, operation_s):
    outcomes = []
    rng = random.Random(0)
    for _ in range(kills):
        # kill somewhere in the first 80 % of the operation (its measured length)
        outcomes.append(
            killed_client(board, library, mode, rng.uniform(0.1, 0.8) * operation_s, upload_bytes, run_seconds)
        )
    failures = [f"client {outcome}" for outcome in outcomes if outcome == "failed"]
    return outcomes.count("killed"), failures, outcomes.count("finished")


def timed_upload(board, upload_bytes):
    """Seconds one full upload of `upload_bytes` takes (to aim the kills at its middle)."""
    remote = board.connect()
    blob = bytearray(upload_bytes)
    started = time.monotonic()
    remote.upload(blob, target="big.bin")
    return time.monotonic() - started


class Server:
    """An emulated board with its own TMPDIR, and what /proc says about its server process."""

    def __init__(self, kind, tmp_root):
        self.kind = kind
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"soak-{kind}-", dir=tmp_root))
        self.board = emulator.start_board(
            "rpi4", server=kind, env={"TMPDIR": str(self.tmpdir)}, log_path=Path(tmp_root) / f"{kind}.log"
        )
        self.pid = soak_probe.server_pid(self.board.processes(), self.board.port)
        # children the server keeps of its own (none for either today); sessions come on top
        self.baseline_children = len(soak_probe.children(self.pid))

    def alive(self):
        return self.board.alive() and soak_probe.server_pid(self.board.processes(), self.board.port) == self.pid

    def rss(self):
        return soak_probe.rss_mb(self.pid)

    def settle(self, timeout):
        return soak_probe.settle(self.pid, self.tmpdir, self.baseline_children, timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.board.stop()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def run_phase(server, name, work, library, settle_s):
    rss_before, started = server.rss(), time.monotonic()
    done, failures, *extra = work()
    seconds = time.monotonic() - started
    kids, left = server.settle(settle_s)
    # a fresh session after the phase: the server still accepts and serves
    serves = server.alive() and one_session(server.board, library) is None
    kids, left = server.settle(settle_s)
    return {
        "server": server.kind,
        "phase": name,
        "sessions": done,
        "failures": len(failures),
        "refused": sum(reason.startswith("connect:") for reason in failures),
        "failure_examples": sorted(set(failures))[:3],
        "missed": extra[0] if extra else 0,
        "seconds": round(seconds, 1),
        "rss_before_mb": _mb(rss_before),
        "rss_after_mb": _mb(server.rss()),
        "children_left": len(kids) - server.baseline_children,
        "folders_left": len(left),
        "serves": serves,
    }


def _mb(value):
    return None if value is None else round(value, 1)


def soak_server(kind, args, library, tmp_root):
    """All phases on one server kind; returns (rows, summary)."""
    with Server(kind, tmp_root) as server:
        warmup_failures = [r for r in (one_session(server.board, library) for _ in range(WARMUP)) if r]
        rss_warm = server.rss()
        upload_bytes = int(args.upload_mb * (1 << 20))
        phases = [
            ("sequential", lambda: sequential(server.board, library, args.sessions)),
            ("concurrent", lambda: concurrent(server.board, library, args.clients, args.per_client)),
        ]
        if args.kills:
            upload_s = timed_upload(server.board, upload_bytes)
            phases.append(
                (
                    "kill-upload",
                    lambda: kill_phase(
                        server.board, library, "upload", args.kills, upload_bytes, args.run_seconds, upload_s
                    ),
                )
            )
            if library is not None:
                phases.append(
                    (
                        "kill-run",
                        lambda: kill_phase(
                            server.board, library, "run", args.kills, upload_bytes, args.run_seconds, args.run_seconds
                        ),
                    )
                )
        rows = []
        for name, work in phases:
            rows.append(run_phase(server, name, work, library, args.settle_seconds))
            if not rows[-1]["serves"]:
                break  # a dead server: the later phases would only time out
        rss_end = server.rss()
        summary = {
            "server": kind,
            "start_seconds": round(server.board.start_seconds, 1),
            "warmup_failures": len(warmup_failures),
            "rss_after_warmup_mb": _mb(rss_warm),
            "rss_end_mb": _mb(rss_end),
            "rss_growth_mb": _mb(rss_end - rss_warm) if rss_end and rss_warm else None,
            "upload_seconds": round(upload_s, 2) if args.kills else None,
            "log_tail": server.board.log_tail(5),
        }
        summary["problems"] = problems(rows, summary, args.rss_bound_mb, len(phases))
        return rows, summary


def problems(rows, summary, rss_bound_mb, phases):
    found = [f"warm-up: {summary['warmup_failures']} failed sessions"] if summary["warmup_failures"] else []
    if len(rows) < phases or not all(row["serves"] for row in rows):
        found.append("the server died or stopped serving")
    for row in rows:
        failed = row["failures"]
        if row["phase"] == "concurrent" and row["server"] == "python":
            # TVM's Python server listens with a backlog of 1 and serves one client at a time:
            # concurrent connects overflow the kernel's accept queue and some are reset before
            # the server sees them. A limitation of that server, counted but not failed here.
            failed -= row["refused"]
        if failed and row["phase"] in ("sequential", "concurrent"):
            found.append(f"{row['phase']}: {failed} failed sessions")
        if row["children_left"] > 0:
            found.append(f"{row['phase']}: {row['children_left']} child processes left")
        if row["folders_left"]:
            found.append(f"{row['phase']}: {row['folders_left']} work folders left")
    if summary["rss_growth_mb"] is None or summary["rss_growth_mb"] > rss_bound_mb:
        found.append(f"RSS grew by {summary['rss_growth_mb']} MB after warm-up (bound {rss_bound_mb} MB)")
    return found


def print_table(rows, summaries):
    header = (
        "server",
        "phase",
        "sessions",
        "failures",
        "refused",
        "missed",
        "seconds",
        "RSS before MB",
        "RSS after MB",
        "children left",
        "folders left",
        "serves",
    )
    keys = (
        "server",
        "phase",
        "sessions",
        "failures",
        "refused",
        "missed",
        "seconds",
        "rss_before_mb",
        "rss_after_mb",
        "children_left",
        "folders_left",
        "serves",
    )
    table = [header] + [
        tuple("yes" if row[k] is True else "NO" if row[k] is False else str(row[k]) for k in keys) for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)))
    print(
        "refused: failures at connect (reset before the server saw them); "
        "missed: killed clients whose operation had already ended (not a failure)"
    )
    for summary in summaries:
        verdict = "; ".join(summary["problems"]) or "ok"
        print(
            f"{summary['server']}: started in {summary['start_seconds']} s, RSS {summary['rss_after_warmup_mb']} MB "
            f"after warm-up -> {summary['rss_end_mb']} MB at the end ({_signed(summary['rss_growth_mb'])} MB), "
            + (f"{summary['upload_seconds']} s per full upload" if summary["upload_seconds"] else "no kills")
            + f": {verdict}"
        )


def _signed(value):
    return "?" if value is None else f"{value:+}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=",".join(emulator.SERVERS), help="server kinds, comma-separated")
    parser.add_argument("--sessions", type=int, default=1000, help="sequential sessions")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--per-client", type=int, default=25, help="sessions per concurrent client")
    parser.add_argument("--kills", type=int, default=20, help="clients killed mid-upload, and as many mid-run")
    parser.add_argument("--upload-mb", type=float, default=20.0, help="size of the upload killed midway")
    parser.add_argument("--run-seconds", type=float, default=2.0, help="length of the remote call killed midway")
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=15.0,
        help="how long ended sessions may take to go away before they count as left",
    )
    parser.add_argument("--rss-bound-mb", type=float, default=20.0, help="allowed RSS growth after warm-up")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    args = parser.parse_args(argv)
    args.servers = [kind.strip() for kind in args.servers.split(",") if kind.strip()]
    unknown = sorted(set(args.servers) - set(emulator.SERVERS))
    if unknown:
        parser.error(f"unknown server {', '.join(unknown)}; expected {', '.join(emulator.SERVERS)}")
    return args


def soak(args):
    """Runs the soak; returns (rows, summaries). EmulatorNotSetUp when there is no emulator."""
    emulator.load_emulator()
    rows, summaries = [], []
    with tempfile.TemporaryDirectory(prefix="bimatting-soak-") as tmp_root:
        library = build_library(tmp_root)
        for kind in args.servers:
            server_rows, summary = soak_server(kind, args, library, tmp_root)
            rows += server_rows
            summaries.append(dict(summary, kernel=library is not None))
    return rows, summaries


def main(argv=None):
    args = parse_args(argv)
    try:
        rows, summaries = soak(args)
    except emulator.EmulatorNotSetUp as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"rows": rows, "servers": summaries}, indent=1))
    else:
        if not summaries[0]["kernel"]:
            print("no cross compiler: sessions upload bytes instead of running a kernel; kill-run skipped")
        print_table(rows, summaries)
    return 1 if any(summary["problems"] for summary in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
