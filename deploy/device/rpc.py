"""Reaching a board over TVM RPC: addresses, connections with deadlines, the architecture check.

    device = open_device(rpc="pi.local:9090")             # or tracker="host:9190", key="rpi4";
    with device:                                           # neither: this machine (no RPC)
        device.check_isa("aarch64", "rpi4")               # clear error before anything runs
        with deadline(120, "frame 3"):
            ...                                            # remote calls, bounded in time
    print(device.describe())                               # JSON-ready: kind, address, isa

Why the extra care: TVM's client blocks without limit. Connecting to a filtered host waits for
the kernel's TCP timeout (minutes), `connect_tracker` retries a refused port for 60 s, and a board
that hangs mid-call blocks the client forever. So every connection is first probed with a plain
socket (`connect_timeout`, 10 s by default) and every remote operation runs under `deadline`, a
SIGALRM timer: TVM's socket loop retries on EINTR after running Python's signal handlers, so the
handler's exception ends the blocked call (the session is unusable afterwards).

The architecture check uploads a tiny library built for the artifact's architecture (generic CPU,
cached per process): if the board cannot load it, a second probe names the board's own
architecture, and the user gets one line instead of a dlopen error or a crashed server.

`LocalTracker` starts `python -m tvm.exec.rpc_tracker` on this machine (its own process group,
stopped as a whole): boards register with it, clients ask it for a board by key.

Torch-free; tvm is imported only when a connection is made.
"""

import contextlib
import gc
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

from bimatting.deploy.device.emulator import free_port, listening_ports
from bimatting.errors import InputError, RuntimeFailure

CONNECT_TIMEOUT_S = 10.0
# The architectures a probe library can be built for: LLVM triple and default cross compiler.
PROBE_TRIPLES = {
    "aarch64": ("aarch64-linux-gnu", "aarch64-linux-gnu-g++"),
    "x86_64": ("x86_64-linux-gnu", "x86_64-linux-gnu-g++"),
}


class DeviceTimeout(RuntimeFailure):
    """A remote operation took longer than its deadline."""


class DeviceLost(RuntimeFailure):
    """The board closed the connection or failed a call."""


def parse_address(text, option="--rpc"):
    """'HOST:PORT' -> (host, port); InputError naming the option otherwise."""
    host, sep, port = str(text).strip().rpartition(":")
    host = host.strip("[]")  # [::1]:9090
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"{option} '{text}' is not HOST:PORT (e.g. 192.168.1.20:9090)")
    return host, int(port)


def ensure_reachable(host, port, timeout=CONNECT_TIMEOUT_S, what="RPC server"):
    """Open and close a TCP connection to host:port within `timeout` s; InputError otherwise."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except socket.timeout:
        reason = f"no answer within {timeout:g} s (host down, unreachable or filtered)"
    except socket.gaierror as error:
        reason = f"unknown host ({error.strerror})"
    except OSError as error:
        reason = error.strerror or str(error)
    hint = (
        "start `python -m tvm.exec.rpc_tracker` there"
        if what == "RPC tracker"
        else "start `python -m tvm.exec.rpc_server --host 127.0.0.1 --port PORT` on the board and "
        "reach it through `ssh -N -L PORT:127.0.0.1:PORT board`, or `bimatting device emulate`"
    )
    raise InputError(f"cannot reach the {what} at {host}:{port}: {reason}; check the address, or {hint}")


@contextlib.contextmanager
def deadline(seconds, what):
    """Raise DeviceTimeout if the block runs longer than `seconds` (None or 0: no limit). Yields
    an object whose `expired` says whether the alarm went off: code inside that retries on
    RuntimeError (TVM's TrackerSession.request does) may have caught the DeviceTimeout.

    Works in the main thread only (SIGALRM); elsewhere the block runs unbounded."""
    state = types.SimpleNamespace(expired=False)
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield state
        return

    def _expired(signum, frame):
        state.expired = True
        raise DeviceTimeout(f"the device did not finish {what} within {seconds:g} s (raise --timeout for slow boards)")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield state
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def explain(error, where):
    """A one-line RuntimeFailure for an error raised by a remote call during `where`."""
    if isinstance(error, RuntimeFailure):
        return error
    # TVM's errors may start with a C++ traceback: search every line, show the message line.
    text = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    message = [
        line for line in text if not line.startswith(("Traceback", "File ", 'File "')) and not line[:1].isdigit()
    ]
    first = message[-1] if message else (text[-1] if text else type(error).__name__)
    whole = " ".join(text)
    # RPCCode:: / HandleUntilReturnEvent: TVM's RPC protocol checks, which fail when the peer is gone
    if (
        "RPCCode::" in whole
        or "HandleUntilReturnEvent" in whole
        or "kShutdown" in whole
        or "connection" in whole.lower()
        or "Socket" in whole
        or isinstance(error, (ConnectionError, BrokenPipeError))
    ):
        return DeviceLost(
            f"the device closed the connection during {where} (its server stopped or "
            "crashed; a library built for another CPU dies with an illegal instruction)"
        )
    return DeviceLost(f"the device failed during {where}: {first[:300]}")


class Device:
    """Where an artifact runs: this machine (`session` None) or a board over RPC."""

    def __init__(self, kind, session=None, address=None, key=None, timeout=None):
        self.kind, self.session, self.address, self.key = kind, session, address, key
        self.timeout = timeout  # seconds for one remote operation (None: unbounded)
        self.isa = platform.machine() if session is None else None
        self._sockets = {}  # fd -> 'socket:[inode]' opened for this session (see abort)

    @property
    def is_remote(self):
        return self.kind != "local"

    def describe(self):
        return {"kind": self.kind, "address": self.address, "key": self.key, "isa": self.isa}

    def check_isa(self, wanted, name):
        """InputError unless this device runs `wanted` code (e.g. 'aarch64'); `name` says who needs
        it ("the artifact (rpi4)"). Over RPC it uploads probe libraries."""
        if not self.is_remote:
            if wanted != self.isa:
                raise InputError(
                    f"{name} needs an {wanted} device but this machine is {self.isa}; use the board "
                    "with --rpc HOST:PORT, or use --target host"
                )
            return self.isa
        if _probe(self, wanted) is True:
            self.isa = wanted
            return wanted
        others = [isa for isa in PROBE_TRIPLES if isa != wanted and _probe(self, isa) is True]
        if others:
            self.isa = others[0]
            raise InputError(
                f"{name} needs an {wanted} device but the device at {self.address} is "
                f"{others[0]}: it cannot load {wanted} code; compile for that device "
                f"(e.g. `bimatting compile --target host` for an x86_64 server) or connect to the board"
            )
        raise InputError(
            f"the device at {self.address} cannot load {wanted} libraries ({name} needs them); "
            "check that it is the board the code was compiled for"
        )

    def abort(self):
        """Shut the session's sockets down, so that every later remote call (and the remote
        objects' destructors, which free their handles over RPC) fails at once instead of
        waiting for a board that stopped answering. The file descriptors stay TVM's."""
        for fd, link in self._sockets.items():
            try:
                if not _still_open(fd, link):
                    continue  # closed meanwhile, or the number reused: not ours
                duplicate = socket.socket(fileno=os.dup(fd))
                try:
                    duplicate.shutdown(socket.SHUT_RDWR)
                finally:
                    duplicate.close()
            except OSError:
                pass
        self._sockets = {}

    def close(self):
        """Drop the session: the connection closes when its last reference goes. If it is still
        open, a reference cycle holds it (remote modules and tensors keep the session), so the
        cycle collector runs now: a tracker lends the board to the next client only once the
        connection closed, and would otherwise keep it busy until a collection happened to run."""
        self.session = None
        if any(_still_open(fd, link) for fd, link in self._sockets.items()):
            gc.collect()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc_info):
        if exc_type is not None:
            self.abort()
        self.close()


def _still_open(fd, link):
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == link
    except OSError:
        return False


def _open_sockets():
    """{fd: 'socket:[inode]'} of this process (Linux /proc; empty elsewhere)."""
    found = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:"):
            found[int(name)] = link
    return found


def open_device(rpc=None, tracker=None, key=None, connect_timeout=CONNECT_TIMEOUT_S, timeout=None):
    """A Device: local (no rpc/tracker), a plain RPC server, or a board requested from a tracker."""
    if rpc and tracker:
        raise InputError("give either --rpc HOST:PORT or --tracker HOST:PORT --key KEY, not both")
    if tracker and not key:
        raise InputError("--tracker needs --key KEY (the key the board registered with, e.g. rpi4)")
    if key and not tracker:
        raise InputError("--key is used with --tracker HOST:PORT; for a plain server give --rpc HOST:PORT")
    before = _open_sockets()
    if rpc:
        host, port = parse_address(rpc, "--rpc")
        session = connect(host, port, connect_timeout=connect_timeout)
        device = Device("rpc", session, f"{host}:{port}", timeout=timeout)
    elif tracker:
        host, port = parse_address(tracker, "--tracker")
        session = request(host, port, key, connect_timeout=connect_timeout)
        device = Device("tracker", session, f"{host}:{port}", key, timeout=timeout)
    else:
        return Device("local", timeout=timeout)
    device._sockets = {fd: link for fd, link in _open_sockets().items() if before.get(fd) != link}
    return device


def connect(host, port, connect_timeout=CONNECT_TIMEOUT_S, session_timeout=None):
    """tvm.rpc.connect with a reachability probe and a handshake deadline.

    session_timeout: seconds after which the server ends the whole session (TVM's Python server
    honours it; None: no limit). Per-call limits are the client's `deadline`s."""
    from tvm import rpc

    ensure_reachable(host, port, connect_timeout)
    try:
        with deadline(connect_timeout, f"the RPC handshake with {host}:{port}"):
            return rpc.connect(host, port, session_timeout=session_timeout or 0)
    except DeviceTimeout:
        raise InputError(
            f"{host}:{port} accepts connections but does not answer as a TVM RPC server "
            f"within {connect_timeout:g} s; check the port"
        ) from None
    except Exception as error:  # noqa: BLE001 - tvm raises InternalError/TVMError for a failed handshake
        raise InputError(
            f"{host}:{port} is not a TVM RPC server (handshake failed: {str(error).strip().splitlines()[0][:200]})"
        ) from None


def request(host, port, key, connect_timeout=CONNECT_TIMEOUT_S, session_timeout=None):
    """A session with a board registered under `key` at the tracker host:port."""
    from tvm import rpc

    ensure_reachable(host, port, connect_timeout, what="RPC tracker")
    with deadline(connect_timeout, f"the handshake with the tracker {host}:{port}"):
        tracker = rpc.connect_tracker(host, port)
        keys = tracker_keys(tracker)
    if key not in keys:
        known = ", ".join(sorted(keys)) or "none"
        raise InputError(
            f"no board is registered under key '{key}' at the tracker {host}:{port} "
            f"(registered keys: {known}); start the board's server with --tracker {host}:{port} --key {key}"
        )
    # One attempt: TVM retries on RuntimeError, and the deadline's DeviceTimeout is one, so a second
    # attempt would wait for a busy board with no alarm left (a tune after a bench once hung so).
    waiting = None
    try:
        with deadline(max(connect_timeout, 30.0), f"waiting for a free '{key}' board at {host}:{port}") as waiting:
            return tracker.request(key, priority=1, session_timeout=session_timeout or 0, max_retry=1)
    except RuntimeError as error:
        if waiting is not None and waiting.expired:
            raise RuntimeFailure(
                f"every '{key}' board at the tracker {host}:{port} stayed busy; try again later"
            ) from None
        raise RuntimeFailure(f"the tracker {host}:{port} could not give a '{key}' board: {error}") from None


def tracker_keys(tracker):
    """Keys of the servers registered at a tracker (from its summary)."""
    keys = set()
    for item in tracker.summary().get("server_info", []):
        keys.add(str(item.get("key", "")).split(":", 1)[-1])  # 'server:rpi4' -> 'rpi4'
    return keys


# ---- the architecture probe ------------------------------------------------------------------

_probes = {}  # ISA -> library path (built once per process)
_probe_dir = None


def _probe_library(isa):
    """A tiny TVM library for `isa` (generic CPU), or None when no compiler can link it here."""
    global _probe_dir
    if isa in _probes:
        return _probes[isa]

    import tvm
    from tvm import te
    from tvm.support import cc

    triple, compiler = PROBE_TRIPLES[isa]
    native = isa == platform.machine()
    if not native and shutil.which(compiler) is None:
        _probes[isa] = None
        return None
    if _probe_dir is None:
        _probe_dir = tempfile.TemporaryDirectory(prefix="bimatting-probe-")
    a = te.placeholder((4,), "float32", name="a")
    b = te.compute((4,), lambda i: a[i] + 1.0, name="b")
    mod = tvm.IRModule({"bimatting_probe": te.create_prim_func([a, b]).with_attr("global_symbol", "bimatting_probe")})
    executable = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm", "mtriple": triple}))
    path = Path(_probe_dir.name) / f"bimatting-probe-{isa}.so"
    executable.export_library(str(path), fcompile=None if native else cc.cross_compiler(compiler))
    _probes[isa] = path
    return path


def _probe(device, isa):
    """True if the device loads an `isa` library, False if not, None if no probe can be built."""
    library = _probe_library(isa)
    if library is None:
        return None
    with deadline(device.timeout or 60.0, f"the {isa} probe"):
        try:
            device.session.upload(str(library), library.name)
        except Exception as error:  # noqa: BLE001
            raise explain(error, "the upload of a probe library") from None
        try:
            device.session.load_module(library.name)
            return True
        except Exception:  # noqa: BLE001 - the server reports a wrong-architecture library as an error
            return False


# ---- a local tracker -------------------------------------------------------------------------


class LocalTracker:
    """`python -m tvm.exec.rpc_tracker` on this machine, in its own process group.

    with LocalTracker() as tracker:      # tracker.address == "127.0.0.1:PORT"
        ...                              # boards: --tracker tracker.address --key rpi4
    """

    def __init__(self, host="127.0.0.1", port=None, start_timeout=60.0):
        self.host = host
        self.port = port or free_port(host)
        # The tracker needs only TVM's runtime library: it starts in a fraction of the time.
        env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tvm.exec.rpc_tracker",
                "--host",
                host,
                "--port",
                str(self.port),
                "--port-end",
                str(self.port + 1),
                "--silent",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=env,
        )
        deadline_at = time.monotonic() + start_timeout
        while self.port not in listening_ports():
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace").strip().splitlines()[-1:]
                raise RuntimeFailure(f"the RPC tracker exited before listening: {' '.join(err)}")
            if time.monotonic() > deadline_at:
                self.stop()
                raise RuntimeFailure(f"the RPC tracker did not listen on {self.address} within {start_timeout:g} s")
            time.sleep(0.05)

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    def keys(self):
        from tvm import rpc

        with deadline(CONNECT_TIMEOUT_S, "a tracker query"):
            return tracker_keys(rpc.connect_tracker(self.host, self.port))

    def wait_for(self, key, timeout=120.0):
        """Block until a board registered under `key` (RuntimeFailure after `timeout` s)."""
        deadline_at = time.monotonic() + timeout
        while key not in self.keys():
            if time.monotonic() > deadline_at:
                raise RuntimeFailure(f"no board registered under '{key}' at {self.address} within {timeout:g} s")
            time.sleep(0.2)

    def stop(self):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process.stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()
