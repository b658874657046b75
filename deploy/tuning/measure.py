"""Building and timing tuning candidates on a board, for `bimatting tune` (deploy/tune.py).

* `build_kernel` / `export_kernel`: MetaSchedule's f_build / f_export. The export links a shared
  library here with the target's (cross) compiler: MetaSchedule's default exports a tar that the
  board itself would have to link.
* `BoardRunner`: uploads each candidate to the board and times it with `time_evaluator`, one at a
  time, in a worker process with a timeout. MetaSchedule's RPCRunner reaches boards only through a
  tracker; a plain server (TVM's Python one, or our C++ one, which cannot register anywhere) is
  invisible to a tracker started here, and TVM's proxy needs the board to connect to it. So the
  runner connects straight to the server (`--rpc`), or asks a tracker for a board per candidate
  (`--tracker`), or runs here (`--local`). Arguments are filled safely: MetaSchedule fills them
  with random values, but a binary conv reads int32 row/column classes as indices (random ones
  read out of bounds and crash the board), so integer tensors are zeros and float ones are uniform
  in [0, 1).
* `Watcher`: after each measured batch, the progress bar, a database snapshot, and the stop.

Ctrl-C. A KeyboardInterrupt raised inside a Python callback that TVM's C++ task scheduler called
ends in std::terminate (a segfault), and killing pool workers under TVM's PopenPoolExecutor can
leave its lock held (a hang at exit). So while tuning, Ctrl-C only sets `Interrupt`: the build and
measurement in flight finish, the builder and runner refuse new work, the batch's measurements not
started yet are cancelled, the Watcher raises a plain error from the scheduler's thread, and tune()
turns it back into KeyboardInterrupt after the pools were shut down normally.
"""

import concurrent.futures
import functools
import os
import signal
import sys
import tempfile
import threading

import numpy as np
import psutil

from bimatting.errors import RuntimeFailure


def build_kernel(mod, target, _params=None):
    """MetaSchedule f_build: compile one candidate (its `main` exported under that name)."""
    import tvm

    func = mod["main"]
    if func.attrs is None or "global_symbol" not in func.attrs:
        func = func.with_attr("global_symbol", "main")
    return tvm.compile(tvm.IRModule({"main": func}), target=target)


def export_kernel(module, compiler=None):
    """MetaSchedule f_export: a shared library linked here (cross compiler for boards)."""
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="bimatting-tune-"), "kernel.so")
    module.export_library(path, fcompile=cc.cross_compiler(compiler) if compiler else None)
    return path


def measure_kernel(connect, artifact_path, args_info, number, repeat):
    """In a worker: load one candidate (on the board via `connect()`, or here) and time it.

    Returns the run times in seconds (see the module doc for the arguments)."""
    import tvm

    session = connect() if connect is not None else None
    name = os.path.basename(artifact_path)
    if session is None:
        module, device = tvm.runtime.load_module(artifact_path), tvm.cpu()
    else:
        session.upload(artifact_path, name)
        module, device = session.load_module(name), session.cpu()
    rng = np.random.default_rng(0)
    args = []
    for _, dtype, shape in args_info:  # ["TENSOR", dtype, shape]
        array = rng.random(shape).astype(dtype) if np.dtype(dtype).kind == "f" else np.zeros(shape, dtype)
        args.append(tvm.runtime.tensor(array, device))
    timer = module.time_evaluator("main", device, number=number, repeat=repeat)
    costs = [float(c) for c in timer(*args).results]
    if session is not None:
        try:
            session.remove(name)
        except Exception:  # noqa: BLE001 - a server without remove: the file goes with its session
            pass
    return costs


class Interrupt:
    """Ctrl-C during tuning, handled off the callbacks' path (see the module doc).

    SIGINT is blocked in this thread, in the threads it starts and in the worker processes (a
    blocked signal stays blocked across fork and exec, so the terminal's Ctrl-C, sent to the whole
    process group, does not kill a build or a measurement halfway); a thread waits for it with
    sigwait. Threads TVM started earlier may still take the signal: a handler that only sets the
    flag covers them. A second Ctrl-C kills the workers and exits at once (code 130)."""

    def __init__(self):
        self.event = threading.Event()
        self._closing = False
        self._thread = self._mask = self._handler = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask"):
            self._handler = signal.signal(signal.SIGINT, lambda signum, frame: self._on_sigint())
            self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            self._thread = threading.Thread(target=self._wait, name="bimatting-sigint", daemon=True)
            self._thread.start()
        return self

    def _wait(self):
        while True:
            signal.sigwait({signal.SIGINT})
            if self._closing:
                return
            self._on_sigint()

    def _on_sigint(self):
        if self.event.is_set():  # the second Ctrl-C: stop now
            kill_workers()
            os._exit(130)
        self.event.set()
        print("\nstopping after the current batch (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc_info):
        if self._thread is not None:
            self._closing = True
            signal.pthread_kill(self._thread.ident, signal.SIGINT)  # wakes its sigwait
            self._thread.join()
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)
            signal.signal(signal.SIGINT, self._handler)

    def is_set(self):
        return self.event.is_set()


def kill_workers():
    """Kill this process's TVM worker processes (the builder and runner pools it started)."""
    for child in psutil.Process().children(recursive=True):
        try:
            if "tvm.exec.popen_worker" in " ".join(child.cmdline()):
                child.kill()
        except psutil.Error:
            pass


def make_builder(compiler, timeout_sec, interrupt):
    """A LocalBuilder with our f_build/f_export that stops building once interrupted."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, LocalBuilder, PyBuilder

    inner = LocalBuilder(
        f_build=build_kernel,
        f_export=functools.partial(export_kernel, compiler=compiler),
        timeout_sec=timeout_sec,
        max_workers=os.cpu_count(),
    )

    @derived_object
    class StoppableBuilder(PyBuilder):
        def build(self, build_inputs):
            if interrupt.is_set():
                return [BuilderResult(None, "interrupted") for _ in build_inputs]
            return inner.build(build_inputs)

    return StoppableBuilder()


def make_runner(connect, timeout_sec, interrupt, number=3, repeat=1):
    """A BoardRunner (module doc): one candidate at a time, each within `timeout_sec`."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner
    from tvm.s_tir.meta_schedule.runner.rpc_runner import RPCRunnerFuture
    from tvm.support.popen_pool import PopenPoolExecutor

    @derived_object
    class BoardRunner(PyRunner):
        def __init__(self):
            super().__init__()
            self.pool = PopenPoolExecutor(max_workers=1, timeout=timeout_sec)

        def run(self, runner_inputs):
            futures = []
            for item in runner_inputs:
                if interrupt.is_set():
                    future = concurrent.futures.Future()
                    future.set_exception(RuntimeFailure("interrupted"))
                else:
                    args_info = tuple(tuple(a.as_json()) for a in item.args_info)
                    future = CancelledOnInterrupt(
                        self.pool.submit(measure_kernel, connect, str(item.artifact_path), args_info, number, repeat),
                        interrupt,
                    )
                futures.append(RPCRunnerFuture(future, timeout_sec))
            return futures

        def shutdown(self):
            self.pool.shutdown()

    return BoardRunner()


class CancelledOnInterrupt:
    """A measurement's future that, once Ctrl-C was pressed, cancels the measurement if it has not
    started. A batch submits all its candidates at once (64), one board measures them one at a
    time, and on an emulated board that is minutes: without this, Ctrl-C waited for all of them.
    The scheduler only polls done() and result() (RPCRunnerFuture); a cancelled one reports an error."""

    def __init__(self, future, interrupt):
        self.future, self.interrupt = future, interrupt

    def done(self):
        if self.interrupt.is_set():
            self.future.cancel()  # False (and no effect) once it runs: that one finishes
        return self.future.done()

    def result(self, timeout=None):
        return self.future.result(timeout)


def make_watcher(bar, snapshot, interrupt, give_up_after=16):
    """The measure callback: progress, snapshot, stop on Ctrl-C or a dead board (`abort_reason`)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Watcher(PyMeasureCallback):
        def __init__(self):
            super().__init__()
            self.measured, self.failed, self.failed_in_a_row, self.abort_reason = 0, 0, 0, None

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            if interrupt.is_set():  # the batch was cut short: keep the snapshot of finished ones
                raise RuntimeFailure("interrupted")
            for built, ran in zip(builder_results, runner_results):
                error = built.error_msg or ran.error_msg
                self.measured += 1
                if error is None:
                    self.failed_in_a_row = 0
                    continue
                self.failed += 1
                self.failed_in_a_row += 1
                if self.failed_in_a_row >= give_up_after and self.abort_reason is None:
                    last = [line for line in str(error).splitlines() if line.strip()][-1:]
                    self.abort_reason = (
                        f"the last {self.failed_in_a_row} measurements failed (is the board "
                        f"still up?); last error: {' '.join(last)[:300]}"
                    )
            bar.update(len(measure_candidates))
            bar.set_postfix_str(f"failed {self.failed}" if self.failed else "")
            snapshot()
            if self.abort_reason:
                raise RuntimeFailure(self.abort_reason)

    return Watcher()
