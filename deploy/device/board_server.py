"""TVM's RPC server for a board, kept serving when a client vanishes mid-session.

Copy this one file to the board (it needs only TVM's runtime wheel) and run it with the
arguments of `python -m tvm.exec.rpc_server`:

    python board_server.py --host 0.0.0.0 --port 9090

Why: TVM 0.27's server runs each session in a child process and, in its accept loop, raises
when that child exits with an error. A client killed mid-upload or mid-run makes the child exit
with code 1 (its socket reset), the exception ends the accept loop, and the server is gone for
every later client (bench/soak.py's kill phases). Here a failed session is logged, its work
folder removed and the server's working directory restored, and the server accepts the next
client. Everything else is TVM's own `tvm.rpc.Server`, unchanged: the wrapper is installed in the
server's worker process through the `server_init_callback` hook TVM provides.
"""

import argparse


def keep_serving_after_failed_sessions():
    """Runs in TVM's server process: wraps tvm.rpc.server._serving (one session)."""
    import logging  # noqa: PLC0415 - runs in TVM's server process
    import os  # noqa: PLC0415 - runs in TVM's server process
    import shutil  # noqa: PLC0415 - runs in TVM's server process
    import tempfile  # noqa: PLC0415 - runs in TVM's server process

    from tvm.rpc import server as tvm_server

    tvm_serving = tvm_server._serving  # noqa: SLF001 - the one function this file wraps
    log = logging.getLogger("RPCServer")

    def serving(sock, addr, opts, load_library):
        cwd = os.getcwd()
        session_tmp = tempfile.mkdtemp(prefix="tvm-rpc-session-")
        previous = tempfile.tempdir
        tempfile.tempdir = session_tmp  # the session's work folder is made in here, removed below
        try:
            tvm_serving(sock, addr, opts, load_library)
        except RuntimeError as error:  # TVM's: the session's child exited non-zero
            log.warning("session from %s ended abnormally (%s); still serving", addr, error)
            try:
                sock.close()
            except OSError:
                pass
        finally:
            tempfile.tempdir = previous
            os.chdir(cwd)
            shutil.rmtree(session_tmp, ignore_errors=True)

    tvm_server._serving = serving


def parse_args(argv=None):
    """The command line of `python -m tvm.exec.rpc_server` (the options a board uses)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=9090, help="first port to try")
    parser.add_argument("--port-end", type=int, default=9199, help="end of the port search")
    parser.add_argument("--tracker", help="HOST:PORT of an RPC tracker to register with")
    parser.add_argument("--key", default="", help="the key to register under (with --tracker)")
    parser.add_argument("--load-library", help="an extra library to load in each session")
    parser.add_argument("--custom-addr", help="the address to report to the tracker")
    parser.add_argument("--through-proxy", action="store_true", help="serve through an RPC proxy")
    parser.add_argument("--silent", action="store_true", help="less logging")
    parser.add_argument("--no-fork", action="store_true", help="spawn session processes instead of forking")
    args = parser.parse_args(argv)
    if args.tracker and not args.key:
        parser.error("--tracker needs --key (the kind of board, e.g. rpi4)")
    return args


def main(argv=None):
    from tvm import rpc

    args = parse_args(argv)
    tracker = None
    if args.tracker:
        host, _, port = args.tracker.rpartition(":")
        tracker = (host, int(port))
    server = rpc.Server(
        args.host,
        args.port,
        args.port_end,
        is_proxy=args.through_proxy,
        key=args.key,
        tracker_addr=tracker,
        load_library=args.load_library,
        custom_addr=args.custom_addr,
        silent=args.silent,
        no_fork=args.no_fork,
        server_init_callback=keep_serving_after_failed_sessions,
    )
    server.proc.join()


if __name__ == "__main__":
    main()
