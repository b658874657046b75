"""The emulated aarch64 board end to end: cross-compile with TVM, upload over RPC, run under qemu.

Nothing is mocked: real qemu-user processes, real TVM RPC servers (our C++ one and TVM's Python
one), real cross-compiled libraries. Tests needing the emulator skip when it is not set up
(scripts/setup_arm_emu.sh); those needing the cross compiler skip without it.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tvm
from click.testing import CliRunner
from tvm import relax, rpc, te
from tvm.script import ir as I, relax as R
from tvm.support import cc

from bimatting.cli import cli
from bimatting.deploy.device import emulator
from bimatting.errors import InputError, RuntimeFailure
from bimatting.targets import load_target

LOOPBACK_HEX = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it (little-endian)


# ---- compiling (client side) ---------------------------------------------------------------


def board_target(name):
    """The TVM target of a board, straight from its TOML (a dict: TVM 0.27 rejects strings)."""
    return tvm.target.Target(load_target(name)["llvm"])


def export_for(executable, target_name, path):
    compiler = load_target(target_name)["cross_compiler"]
    if shutil.which(compiler) is None:
        pytest.skip(f"cross compiler {compiler} is not installed")
    executable.export_library(str(path), fcompile=cc.cross_compiler(compiler))
    return path


def vector_add(n=1024):
    a = te.placeholder((n,), "float32", name="A")
    b = te.placeholder((n,), "float32", name="B")
    c = te.compute((n,), lambda i: a[i] + b[i], name="C")
    return tvm.IRModule({"vadd": te.create_prim_func([a, b, c]).with_attr("global_symbol", "vadd")})


def xor_popcount(n=1024, lanes=4):
    """C[i] = popcount(A[i] ^ B[i]) on uint32, vectorized by 4 lanes (one 128-bit NEON register)."""
    a = te.placeholder((n,), "uint32", name="A")
    b = te.placeholder((n,), "uint32", name="B")
    c = te.compute((n,), lambda i: tvm.tirx.popcount(a[i] ^ b[i]).astype("uint32"), name="C")
    func = te.create_prim_func([a, b, c]).with_attr("global_symbol", "xor_popcount")
    schedule = tvm.s_tir.Schedule(tvm.IRModule({"xor_popcount": func}))
    (loop,) = schedule.get_loops(schedule.get_sblock("C", func_name="xor_popcount"))
    _, inner = schedule.split(loop, [None, lanes])
    schedule.vectorize(inner)
    return schedule.mod


@pytest.fixture(scope="module")
def vadd_rpi4(tmp_path_factory):
    executable = tvm.compile(vector_add(), target=board_target("rpi4"))
    return export_for(executable, "rpi4", tmp_path_factory.mktemp("vadd") / "vadd_rpi4.so")


def run_vadd(remote, library, n=1024):
    remote.upload(str(library))
    module = remote.load_module(library.name)
    dev = remote.cpu()
    rng = np.random.default_rng(0)
    a, b = rng.random(n, dtype=np.float32), rng.random(n, dtype=np.float32)
    c = tvm.runtime.empty((n,), "float32", dev)
    module["vadd"](tvm.runtime.tensor(a, dev), tvm.runtime.tensor(b, dev), c)
    # One IEEE float32 addition per element, correctly rounded on both machines: bit-exact.
    np.testing.assert_array_equal(c.numpy(), a + b)
    return module, c


def run_popcount(remote, library, n=1024):
    remote.upload(str(library))
    module = remote.load_module(library.name)
    dev = remote.cpu()
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**32, n, dtype=np.uint32)
    b = rng.integers(0, 2**32, n, dtype=np.uint32)
    a[:2], b[:2] = [0, 0xFFFFFFFF], [0, 0]  # the extremes: 0 and 32 set bits
    c = tvm.runtime.empty((n,), "uint32", dev)
    module["xor_popcount"](tvm.runtime.tensor(a, dev), tvm.runtime.tensor(b, dev), c)
    return c.numpy(), np.bitwise_count(a ^ b).astype(np.uint32)


def listening_address(port):
    """Local address (hex, as in /proc/net/tcp) of the LISTEN socket on `port`, or None."""
    with open("/proc/net/tcp") as table:
        for row in table.read().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and int(local.split(":")[1], 16) == port:
                return local.split(":")[0]
    return None


# ---- the C++ server (fast; shared per target for the session) --------------------------------


@pytest.mark.emulated
def test_vector_add_runs_on_emulated_rpi4(emulated_board, vadd_rpi4):
    host, port = emulated_board("rpi4")
    remote = rpc.connect(host, port)
    module, c = run_vadd(remote, vadd_rpi4)
    timer = module.time_evaluator("vadd", remote.cpu(), number=3, repeat=2)
    args = [tvm.runtime.tensor(np.ones(1024, np.float32), remote.cpu())] * 2 + [c]
    result = timer(*args)  # the shape of a report, never the speed: emulated times mean nothing
    assert len(result.results) == 2 and result.mean > 0


@pytest.mark.emulated
def test_popcount_kernel_is_bit_exact_on_rpi4(emulated_board, tmp_path):
    executable = tvm.compile(xor_popcount(), target=board_target("rpi4"))
    assembly = executable.mod.inspect_source("asm")
    assert re.search(r"\bcnt\s+v\d+\.16b", assembly)  # NEON byte popcount
    assert "udot" not in assembly  # Cortex-A72 has no dotprod
    host, port = emulated_board("rpi4")
    got, expected = run_popcount(rpc.connect(host, port), export_for(executable, "rpi4", tmp_path / "pc.so"))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.emulated
def test_relax_vm_matmul_relu_on_rpi4(emulated_board, tmp_path):
    @I.ir_module
    class MatmulRelu:
        @R.function
        def main(x: R.Tensor((16, 32), "float32"), w: R.Tensor((32, 8), "float32")):
            with R.dataflow():
                y = R.nn.relu(R.matmul(x, w))
                R.output(y)
            return y

    executable = tvm.compile(relax.get_pipeline("zero")(MatmulRelu), target=board_target("rpi4"))
    library = export_for(executable, "rpi4", tmp_path / "matmul_relu.so")
    host, port = emulated_board("rpi4")
    remote = rpc.connect(host, port)
    remote.upload(str(library))
    dev = remote.cpu()
    vm = relax.VirtualMachine(remote.load_module(library.name), dev)
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((16, 32), np.float32), rng.standard_normal((32, 8), np.float32)
    y = vm["main"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(w, dev)).numpy()
    # 32-term float32 dot products summed in another order (and maybe fused multiply-adds) than
    # numpy's: |error| <~ 32 * eps32 * sum|x*w| ~ 32 * 1.2e-7 * 32 ~ 1e-4 for N(0,1) inputs.
    np.testing.assert_allclose(y, np.maximum(x @ w, 0), rtol=1e-5, atol=1e-4)


@pytest.mark.emulated
def test_code_for_another_cpu_fails_like_on_the_board(emulated_board, emulator_ready, tmp_path):
    """Orin code (dotprod `udot`) crashes the Cortex-A72 board's session, runs on the Orin board."""
    executable = tvm.compile(xor_popcount(), target=board_target("jetson-orin"))
    assert "udot" in executable.mod.inspect_source("asm")  # ARMv8.2 dotprod reduces the byte counts
    library = export_for(executable, "jetson-orin", tmp_path / "pc_orin.so")

    with emulator.start_board("rpi4") as rpi4:  # its own board, to read the server's log
        with pytest.raises(tvm.error.InternalError, match="kShutdown"):  # the session ended mid-call
            run_popcount(rpi4.connect(), library)
        _wait_until(lambda: "Illegal instruction" in rpi4.log_tail(), 10, "the server to log SIGILL")
        assert rpi4.connect().cpu().exist  # only that session died: the board serves the next client

    host, port = emulated_board("jetson-orin")
    got, expected = run_popcount(rpc.connect(host, port), library)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.emulated
def test_x86_library_is_rejected_with_a_clear_error(emulated_board, tmp_path):
    library = tmp_path / "vadd_x86.so"
    tvm.compile(vector_add(), target=tvm.target.Target({"kind": "llvm"})).export_library(str(library))
    host, port = emulated_board("rpi4")
    remote = rpc.connect(host, port)
    remote.upload(str(library))
    with pytest.raises(tvm.error.RPCError, match="built for x86_64, but this board is aarch64"):
        remote.load_module(library.name)
    assert remote.cpu().exist  # the session is still usable after the error


@pytest.mark.emulated
def test_board_listens_on_loopback_only(emulated_board):
    host, port = emulated_board("rpi4")
    assert host == "127.0.0.1"
    assert listening_address(port) == LOOPBACK_HEX


# ---- TVM's Python server (the program a real board runs) -----------------------------------


@pytest.mark.emulated
def test_python_board_fixture_runs_a_kernel(emulated_python_board, vadd_rpi4):
    host, port = emulated_python_board("rpi4")
    assert listening_address(port) == LOOPBACK_HEX
    remote = rpc.connect(host, port)
    run_vadd(remote, vadd_rpi4)
    del remote  # the Python server serves one client at a time


@pytest.mark.emulated
def test_python_server_registers_with_a_tracker_and_stops_cleanly(emulator_ready, vadd_rpi4):
    tracker_port = emulator.free_port("127.0.0.1")
    tracker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tvm.exec.rpc_tracker",
            "--host",
            "127.0.0.1",
            "--port",
            str(tracker_port),
            "--port-end",
            str(tracker_port + 1),
            "--silent",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ, TVM_USE_RUNTIME_LIB="1"),
    )  # a tracker needs no compiler: starts faster
    try:
        _wait_until(lambda: tracker_port in emulator.listening_ports(), 60, "the tracker to listen")
        board = emulator.start_board("rpi4", server="python", tracker=f"127.0.0.1:{tracker_port}")
        try:
            assert board.key == "rpi4"  # the target's rpc_key by default
            client = rpc.connect_tracker("127.0.0.1", tracker_port)
            _wait_until(lambda: "rpi4" in client.text_summary().split(), 60, "the board to register")
            remote = client.request("rpi4", session_timeout=120)
            run_vadd(remote, vadd_rpi4)
            del remote
            assert len(board.processes()) >= 2  # server + its worker, all in the board's group
        finally:
            board.stop()
        assert board.processes() == [] and board.port not in emulator.listening_ports()
    finally:
        os.killpg(tracker.pid, signal.SIGTERM)
        tracker.wait(timeout=30)


def _wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


# ---- the CLI ---------------------------------------------------------------------------------


@pytest.mark.emulated
def test_cli_emulate_prints_address_and_stops_on_ctrl_c(emulator_ready):
    command = [
        sys.executable,
        "-c",
        "import sys; from bimatting.cli import main; main(sys.argv[1:])",
        "device",
        "emulate",
        "--target",
        "rpi4",
        "--no-setup",
    ]
    # Ctrl-C's default action even when the test run itself was started in the background (a
    # shell's background jobs ignore SIGINT, and children inherit that).
    cli = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first_line = cli.stdout.readline()
        found = re.match(r"listening on 127\.0\.0\.1:(\d+) \(rpi4: qemu cortex-a72, cpp server, pid (\d+)", first_line)
        assert found, f"unexpected first line {first_line!r}; stderr: {cli.stderr.read() if cli.poll() else ''}"
        port, server_pgid = int(found[1]), int(found[2])
        assert listening_address(port) == LOOPBACK_HEX
        assert rpc.connect("127.0.0.1", port).cpu().exist
        assert emulator.group_pids(server_pgid)  # the server runs in its own process group

        os.kill(cli.pid, signal.SIGINT)  # Ctrl-C
        assert cli.wait(timeout=30) == 0
        assert emulator.group_pids(server_pgid) == []  # no stray qemu or session process
        assert port not in emulator.listening_ports()
        assert "stopping the board" in cli.stderr.read()
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)


def test_cli_emulate_refuses_a_target_without_emulation():
    result = CliRunner().invoke(cli, ["device", "emulate", "--target", "host", "--no-setup"])
    assert result.exit_code == 2
    assert "cannot be emulated" in result.output and "rpi4" in result.output


def test_cli_help_warns_about_code_execution():
    result = CliRunner().invoke(cli, ["device", "emulate", "--help"])
    assert result.exit_code == 0 and "executes any code" in result.output and "127.0.0.1" in result.output


# ---- bad input (no emulator needed) -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target="host"), "cannot be emulated"),
        (dict(target="pi9"), "unknown target"),
        (dict(server="java"), "unknown server"),
        (dict(tracker="127.0.0.1:9190"), "cannot register with a tracker"),
        (dict(server="python", tracker="nowhere"), "is not HOST:PORT"),
    ],
)
def test_start_board_rejects_bad_input(kwargs, message):
    with pytest.raises(InputError, match=message):
        emulator.start_board(**kwargs)


def test_busy_port_is_an_input_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        with pytest.raises(InputError, match="cannot listen on 127.0.0.1"):
            emulator.start_board("rpi4", port=busy.getsockname()[1])


def test_missing_emulator_says_how_to_set_up(tmp_path):
    with pytest.raises(emulator.EmulatorNotSetUp, match="setup_arm_emu.sh"):
        emulator.start_board("rpi4", emulator_root=tmp_path)
    (tmp_path / "emu.json").write_text(
        json.dumps({"qemu": "/usr/bin/true", "python_launcher": "bin/python3", "cpp_server": "x", "sysroot": "rootfs"})
    )
    with pytest.raises(emulator.EmulatorNotSetUp, match="incomplete"):
        emulator.load_emulator(tmp_path)


def test_server_that_dies_at_start_reports_its_log(tmp_path):
    # A stand-in for qemu that fails the way qemu does on an unknown CPU model.
    fake_qemu = tmp_path / "qemu-aarch64-static"
    fake_qemu.write_text("#!/bin/sh\necho \"qemu: unable to find CPU model '$QEMU_CPU'\" >&2\nexit 1\n")
    fake_qemu.chmod(0o755)
    for name in ("bin/python3", "mini_rpc_server", "rootfs"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    (tmp_path / "emu.json").write_text(
        json.dumps(
            {
                "qemu": str(fake_qemu),
                "python_launcher": "bin/python3",
                "cpp_server": "mini_rpc_server",
                "sysroot": "rootfs",
            }
        )
    )
    with pytest.raises(RuntimeFailure, match="exited with code 1 before listening(.|\n)*'cortex-a72'"):
        emulator.start_board("rpi4", emulator_root=tmp_path, timeout=30)


def test_emulated_targets_are_the_aarch64_boards():
    targets = emulator.emulated_targets()
    assert "rpi4" in targets and "host" not in targets
    for name in targets:
        assert load_target(name)["isa"] == "aarch64" and load_target(name)["qemu_cpu"]


def test_emulator_and_cli_import_neither_torch_nor_tvm():
    code = (
        "import sys, bimatting.deploy.device.emulator, bimatting.cli.device_cmd; "
        "print(sorted(m for m in ('torch', 'tvm') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
