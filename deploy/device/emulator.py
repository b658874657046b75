"""Emulated ARM boards: a TVM RPC server for an aarch64 target, run under qemu-user on this machine.

`scripts/setup_arm_emu.sh` prepares the emulator once (qemu, an arm64 CPython sysroot, the
aarch64 TVM runtime, and `native/mini_rpc_server.cc` built for aarch64). `start_board("rpi4")`
then starts an RPC server that restricts the instruction set to the board's core (QEMU_CPU from
the target's TOML, e.g. cortex-a72), so a module compiled with the wrong `-mcpu`/`-mattr` fails
here as it would on the board. Timings under emulation say nothing about the board's speed.

Two servers: "cpp" (our mini server on libtvm_runtime: starts in ~0.5 s, serves clients
concurrently, no trackers) and "python" (TVM's `tvm.exec.rpc_server` through board_server.py,
the program the README has a real board run: ~10 s to start, one client at a time, supports
`--tracker`/`--key`).

SECURITY: a TVM RPC server runs whatever code a client uploads. Boards bind to 127.0.0.1 unless
told otherwise; expose one only on a trusted network or through an SSH tunnel.

Torch- and TVM-free (only `Board.connect` imports tvm).
"""

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bimatting.errors import InputError, RuntimeFailure
from bimatting.targets import list_targets, load_target

SERVERS = ("cpp", "python")
START_TIMEOUT_S = {"cpp": 60.0, "python": 240.0}  # typical: 0.5 s and 10 s on a busy 2-core host
SETUP_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "setup_arm_emu.sh"
BOARD_SERVER = Path(__file__).resolve().parent / "board_server.py"  # what a board runs (README)
_running = set()  # boards started by this process, stopped at exit if the caller forgot


class EmulatorNotSetUp(InputError):
    """The emulator files or qemu are missing (tests skip on this one)."""


def emulator_dir():
    """Where setup_arm_emu.sh puts the emulator: $BIMATTING_ARM_EMU, else the user's cache."""
    if os.environ.get("BIMATTING_ARM_EMU"):
        return Path(os.environ["BIMATTING_ARM_EMU"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "bimatting" / "arm-emu"


def setup_hint(root=None):
    where = "" if root is None or Path(root) == emulator_dir() else f" {root}"
    return f"run scripts/setup_arm_emu.sh{where} (as root it also installs qemu-user-static and the cross compiler)"


def load_emulator(root=None):
    """The emulator's manifest (emu.json) with absolute paths; EmulatorNotSetUp if incomplete."""
    root = Path(root) if root is not None else emulator_dir()
    manifest = root / "emu.json"
    if not manifest.is_file():
        raise EmulatorNotSetUp(f"the emulated ARM board is not set up ({root} has no emu.json); {setup_hint(root)}")
    info = json.loads(manifest.read_text())
    for key in ("python_launcher", "cpp_server", "sysroot"):
        info[key] = str(root / info[key])
        if not Path(info[key]).exists():
            raise EmulatorNotSetUp(
                f"the emulated ARM board in {root} is incomplete ({info[key]} is missing); {setup_hint(root)}"
            )
    if not Path(info["qemu"]).is_file():
        raise EmulatorNotSetUp(f"qemu is missing ({info['qemu']}); {setup_hint(root)}")
    info["root"] = str(root)
    return info


def run_setup(root=None, stdout=None):
    """Runs scripts/setup_arm_emu.sh (needs a source checkout); RuntimeFailure if it fails."""
    if not SETUP_SCRIPT.is_file():
        raise EmulatorNotSetUp(
            f"the emulated ARM board is not set up and {SETUP_SCRIPT.name} is not beside this "
            "installation; run it from a bimatting source checkout"
        )
    command = ["bash", str(SETUP_SCRIPT)] + ([str(root)] if root is not None else [])
    env = dict(os.environ, PYTHON=os.environ.get("PYTHON") or sys.executable)
    if subprocess.run(command, stdout=stdout, env=env).returncode != 0:
        raise RuntimeFailure(f"{SETUP_SCRIPT.name} failed (see its output above)")


def emulated_targets():
    """Targets that can be emulated: aarch64 boards with a `qemu_cpu`."""
    return [name for name in list_targets() if _is_emulated(load_target(name))]


def _is_emulated(target):
    return target.get("isa") == "aarch64" and bool(target.get("qemu_cpu"))


@dataclass(eq=False)
class Board:
    """A running emulated board: connect over TVM RPC to `host:port`; `stop()` ends it."""

    target: str
    server: str
    host: str
    port: int
    key: str
    qemu_cpu: str
    process: subprocess.Popen = field(repr=False)
    log_path: Path
    start_seconds: float = 0.0
    owns_log: bool = False  # a temporary log, deleted by stop()

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    @property
    def pgid(self):
        return self.process.pid  # started as a session leader: its pid is the group id

    @property
    def connect_host(self):
        """Where a local client connects (a wildcard bind is reachable on loopback)."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)

    def connect(self, **kwargs):
        """A TVM RPC session with this board (imports tvm)."""
        from tvm import rpc

        return rpc.connect(self.connect_host, self.port, key=self.key, **kwargs)

    def alive(self):
        return self.process.poll() is None

    def processes(self):
        """Live (non-zombie) pids in the board's process group: the server and its workers."""
        return group_pids(self.pgid)

    def log_tail(self, lines=20):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout=10.0):
        """Stops the whole process group (TERM, then KILL); idempotent."""
        _running.discard(self)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and (self.alive() or self.processes()):
                time.sleep(0.05)
            if not self.alive() and not self.processes():
                break
        self.process.wait()
        if self.owns_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()


def start_board(
    target="rpi4",
    port=None,
    server="cpp",
    tracker=None,
    key=None,
    *,
    host="127.0.0.1",
    timeout=None,
    emulator_root=None,
    log_path=None,
    env=None,
):
    """Starts an emulated `target` board running an RPC server; returns a Board once it listens.

    port: None picks a free one. tracker: "HOST:PORT" of a TVM RPC tracker (python server only);
    key: the RPC key (default: the target's `rpc_key` with a tracker, else none).
    env: extra environment for the server, e.g. {"TMPDIR": folder} to keep its work folders apart.
    """
    board_target = _check_target(target)
    if server not in SERVERS:
        raise InputError(f"unknown server '{server}'; expected one of {', '.join(SERVERS)}")
    if tracker is not None:
        if server != "python":
            raise InputError("the C++ server cannot register with a tracker; use server 'python' with a tracker")
        _check_tracker(tracker)
        key = key if key is not None else board_target["rpc_key"]
    key = key or ""
    port = free_port(host) if port is None else _check_port_free(host, port)
    emulator = load_emulator(emulator_root)
    command = _server_command(emulator, server, host, port, key, tracker)
    env = dict(os.environ, **(env or {}), QEMU_CPU=board_target["qemu_cpu"])
    env.pop("QEMU_LD_PREFIX", None)  # the launchers pass the sysroot themselves
    owns_log = log_path is None
    if owns_log:
        handle, log_path = tempfile.mkstemp(prefix=f"bimatting-{target}-{server}-", suffix=".log")
        os.close(handle)
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    board = Board(target, server, host, port, key, board_target["qemu_cpu"], process, Path(log_path), owns_log=owns_log)
    _running.add(board)
    _wait_listening(board, timeout if timeout is not None else START_TIMEOUT_S[server])
    board.start_seconds = time.monotonic() - started
    return board


def _check_target(name):
    target = load_target(name)
    if not _is_emulated(target):
        raise InputError(
            f"target '{name}' cannot be emulated (ISA {target.get('isa')}); "
            f"emulated targets: {', '.join(emulated_targets())}"
        )
    return target


def _check_tracker(tracker):
    host, _, port = str(tracker).rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"tracker '{tracker}' is not HOST:PORT (e.g. 127.0.0.1:9190)")


def _server_command(emulator, server, host, port, key, tracker):
    if server == "cpp":
        return [emulator["qemu"], "-L", emulator["sysroot"], emulator["cpp_server"], host, str(port), key]
    command = [
        emulator["python_launcher"],
        str(BOARD_SERVER),
        "--host",
        host,
        "--port",
        str(port),
        "--port-end",
        str(port + 1),
    ]  # exactly this port, no search
    if tracker is not None:
        command += ["--tracker", tracker]
    return command + (["--key", key] if key else [])


def _bind_probe(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
    try:
        probe.bind((host, port))
        return probe.getsockname()[1]
    finally:
        probe.close()


def free_port(host="127.0.0.1"):
    """A TCP port that nothing listens on now (the OS picks it)."""
    try:
        return _bind_probe(host, 0)
    except OSError as error:
        raise InputError(
            f"cannot bind to host '{host}' ({error.strerror}); expected an address of this machine"
        ) from None


def _check_port_free(host, port):
    if not 0 < int(port) < 65536:
        raise InputError(f"port {port} is out of range; expected 1..65535")
    try:
        return _bind_probe(host, int(port))
    except OSError as error:
        raise InputError(f"cannot listen on {host}:{port} ({error.strerror}); pick another port or omit it") from None


def _wait_listening(board, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not board.alive():
            tail = board.log_tail()
            board.stop()
            raise RuntimeFailure(
                f"the {board.server} RPC server for {board.target} exited with code "
                f"{board.process.returncode} before listening; log tail:\n{tail}"
            )
        if board.port in listening_ports():
            return
        time.sleep(0.05)
    tail = board.log_tail()
    board.stop()
    raise RuntimeFailure(
        f"the {board.server} RPC server for {board.target} did not listen on {board.address} "
        f"within {timeout:.0f} s; log tail:\n{tail}"
    )


def listening_sockets():
    """(port, socket inode) of every TCP socket in LISTEN state on this machine (from
    /proc/net/tcp*, no connection made)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A":  # 0A = TCP_LISTEN
                yield int(fields[1].rsplit(":", 1)[1], 16), int(fields[9])


def listening_ports():
    """TCP ports in LISTEN state on this machine."""
    return {port for port, _ in listening_sockets()}


def group_pids(pgid):
    """Live (non-zombie) processes whose process group is `pgid`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


@atexit.register
def _stop_forgotten_boards():
    for board in list(_running):
        board.stop(timeout=2.0)
