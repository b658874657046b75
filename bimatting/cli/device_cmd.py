"""`bimatting device ...`: boards as TVM RPC servers (`device emulate`: an aarch64 board under qemu)."""

import json
import signal
import sys
import time

import click

from bimatting.deploy.device import emulator
from bimatting.errors import RuntimeFailure


@click.group()
def device():
    """Run or emulate a board (TVM RPC server).

    \b
    Examples:
      bimatting device emulate --target rpi4                    # C++ server on 127.0.0.1, free port
      bimatting device emulate --target rpi4 --port 9090 --server python
    """


class _Stop(Exception):
    """Raised by the signal handlers so the board is stopped on SIGTERM/SIGHUP as on Ctrl-C."""


def _raise_stop(signum, frame):
    raise _Stop(signal.Signals(signum).name)


@device.command()
@click.option("--target", default="rpi4", show_default=True, help="Board to emulate (an aarch64 target).")
@click.option("--port", type=int, default=None, help="Port to listen on [default: a free one].")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; anything but loopback exposes code execution to the network.",
)
@click.option(
    "--server",
    type=click.Choice(["cpp", "python"]),
    default="cpp",
    show_default=True,
    help="cpp: fast mini server; python: TVM's own rpc_server (trackers, as on a real board).",
)
@click.option("--tracker", default=None, metavar="HOST:PORT", help="Register with a TVM RPC tracker (python server).")
@click.option("--key", default=None, help="RPC key [default: the target's rpc_key with --tracker, else none].")
@click.option(
    "--setup/--no-setup",
    default=True,
    show_default=True,
    help="Run scripts/setup_arm_emu.sh first if the emulator is not set up.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the address as one JSON line.")
def emulate(target, port, host, server, tracker, key, setup, as_json):
    """Emulate an ARM board (qemu-user) serving TVM RPC until Ctrl-C.

    The first line printed is the address clients connect to (`tvm.rpc.connect(host, port)`).
    The instruction set is restricted to the board's core (e.g. cortex-a72 for rpi4), so code
    built for the wrong CPU fails here as on the board; timings are meaningless.

    WARNING: a TVM RPC server executes any code a client uploads. Keep the default 127.0.0.1,
    or bind only on a trusted network, or reach it through an SSH tunnel.

    \b
    Examples:
      bimatting device emulate --target rpi4
      bimatting device emulate --target jetson-orin --port 9091 --json
      bimatting device emulate --target rpi4 --server python --tracker 127.0.0.1:9190 --key rpi4
    """
    if setup:
        try:
            emulator.load_emulator()
        except emulator.EmulatorNotSetUp:
            click.echo("the emulated board is not set up yet: running setup_arm_emu.sh", err=True)
            emulator.run_setup(stdout=sys.stderr)
    if host not in ("127.0.0.1", "::1", "localhost"):
        click.echo(f"warning: binding {host}: anyone who reaches this address can run code on this machine", err=True)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    board = emulator.start_board(target, port=port, server=server, tracker=tracker, key=key, host=host)
    try:
        _announce(board, as_json)
        _follow_log(board)
    except (KeyboardInterrupt, _Stop):
        click.echo("stopping the board", err=True)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        board.stop()


def _announce(board, as_json):
    if as_json:
        fields = ("target", "server", "host", "port", "key", "qemu_cpu", "pgid", "start_seconds")
        click.echo(json.dumps({name: getattr(board, name) for name in fields}))
    else:
        click.echo(
            f"listening on {board.address} ({board.target}: qemu {board.qemu_cpu}, {board.server} server, "
            f"pid {board.pgid}, started in {board.start_seconds:.1f} s); Ctrl-C stops it"
        )
    sys.stdout.flush()


def _follow_log(board):
    """Copies the server's log to stderr until the server ends (an unexpected end is a failure)."""
    with open(board.log_path, errors="replace") as log:
        while board.alive():
            line = log.readline()
            if line:
                click.echo(line.rstrip("\n"), err=True)
            else:
                time.sleep(0.2)
        rest = log.read()
    raise RuntimeFailure(
        f"the board's RPC server exited with code {board.process.returncode}; log tail:\n{rest or board.log_tail()}"
    )
