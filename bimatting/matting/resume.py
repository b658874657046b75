"""Ctrl-C and `--resume` for `bimatting matte`: an interrupted run keeps a playable partial output
and the network's recurrent state, and a second run continues where it stopped.

    session = Session(source, output, options, resume, kind)   # bimatting.matting.runner drives this
    with deferred_interrupt() as stop:      # the first Ctrl-C only sets stop.requested; the loop
        ...                                 # finishes the frame in hand, then calls session.stop
    keep_partial(output, sinks, matter, count, fingerprint)   -> raises MatteInterrupted
    resume = load(output, fingerprint)      # InputError when there is nothing (valid) to resume
    restore(resume, output, sinks, matter)  # copy the partial frames into the new outputs, set the state
    discard(output)                         # after success: remove the partial output and the state

Files beside OUTPUT (all written atomically):
    <stem>.partial<ext> / <name>.partial/   the frames done so far: a complete, playable video
                                            (the writer was closed and the file read back) or PNGs
    <name>.resume.npz                       pickle-free: frame count, downsample ratio, frame size,
                                            a fingerprint of input and options, the states r1..r4

A resumed run refuses another input or other options (the fingerprint). The frames before the
interruption are copied from the partial output: exact for PNG folders, re-encoded once more for
videos (their codecs are lossy). The network's state is the one after the last kept frame, so the
continued frames equal those of an uninterrupted run. Torch-free (the torch backend's states
are converted by the backend's own tensors).
"""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import threading
from pathlib import Path

import numpy as np

from bimatting.atomic import atomic_path
from bimatting.errors import InputError, RuntimeFailure

STATE_SUFFIX = ".resume.npz"
META_KEY = "meta.json"


class MatteInterrupted(KeyboardInterrupt):
    """Ctrl-C during `matte`: the message says what was kept and how to continue."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message

    def __str__(self):
        return self.message


class _Stop:
    requested = False


@contextlib.contextmanager
def deferred_interrupt():
    """Within the block the first SIGINT only sets `stop.requested` (a second one interrupts at
    once). Outside the main thread signals cannot be caught: Ctrl-C then interrupts as usual."""
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def first(signum, frame):
        stop.requested = True
        signal.signal(signal.SIGINT, previous)  # the next Ctrl-C is not deferred

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


class Session:
    """The resume bookkeeping of one `matte` run (what bimatting.matting.runner calls).

    session = Session(source, output, options, resume, reader.kind)   # checks --resume up front
    frames, done = session.start(reader, sinks, matter)  # frames still to matte, frames restored
    ... on the first Ctrl-C the loop calls session.stop(sinks, matter, count) (raises) ...
    session.finish()                                     # after the outputs were renamed in place
    """

    def __init__(self, source, output, options, resume, kind):
        self.output, self.saved = Path(output), None
        if kind == "webcam":
            if resume:
                raise InputError("--resume continues a video or an image folder; a webcam cannot be resumed")
            self.identity = None
            return
        self.identity = fingerprint(source, options)
        if resume:
            self.saved = load(output, self.identity)

    @property
    def resumable(self):
        return self.identity is not None

    def start(self, reader, sinks, matter):
        frames = iter(reader)
        if self.saved is None:
            return frames, 0
        restore(self.saved, self.output, sinks, matter)
        for _ in range(self.saved["count"]):  # decode and drop the frames already matted
            if next(frames, None) is None:
                raise InputError(f"cannot resume: the input has fewer than {self.saved['count']} frames now")
        return frames, self.saved["count"]

    def stop(self, sinks, matter, count):
        keep_partial(self.output, sinks, matter, count, self.identity)

    def finish(self):
        """The run completed: an earlier run's partial output and state are obsolete."""
        discard(self.output)


# -- names and identity ------------------------------------------------------------------------------


def state_path(output):
    output = Path(output)
    return output.with_name(output.name + STATE_SUFFIX)


def partial_path(output, sink_path):
    """Where the partial copy of one sink's output goes."""
    output, sink_path = Path(output), Path(sink_path)
    if output.suffix and sink_path.suffix:  # videos: out.avi -> out.partial.avi, out_alpha.avi -> ...
        return sink_path.with_name(f"{sink_path.stem}.partial{sink_path.suffix}")
    root = output.with_name(output.name + ".partial")  # PNG folders: out/ -> out.partial/
    return root / sink_path.relative_to(output) if sink_path != output else root


def fingerprint(source, options):
    """What a resumed run must share with the interrupted one: the input (path, size, time) and
    every option that changes the output."""
    path = Path(str(source))
    if path.is_dir():
        entries = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())
        identity = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    elif path.is_file():
        stat = path.stat()
        identity = f"{stat.st_size}:{stat.st_mtime_ns}"
    else:
        raise InputError(f"--resume needs a video file or an image folder, not '{source}'")
    return {
        "input": str(path.resolve()),
        "identity": identity,
        "options": json.dumps(options, sort_keys=True, default=str),
    }


# -- the recurrent state of each backend -------------------------------------------------------------


def get_states(matter):
    """The states after the last frame, as numpy arrays (r1..r4 order), or [] before any frame."""
    runner = getattr(matter, "runner", None)
    if runner is not None:  # tvm: device tensors keyed by input name
        return [runner._state_values[name].numpy() for name in runner.states]
    return [np.asarray(state.numpy() if hasattr(state, "numpy") else state) for state in (matter.states or [])]


def set_states(matter, arrays):
    runner = getattr(matter, "runner", None)
    if runner is not None:
        runner._state_values = {name: runner.model.to_device(name, array) for name, array in zip(runner.states, arrays)}
    elif matter.backend == "torch":
        import torch

        matter.states = [torch.from_numpy(np.ascontiguousarray(array)) for array in arrays]
    else:
        matter.states = [np.ascontiguousarray(array) for array in arrays]


# -- interrupt -------------------------------------------------------------------------------------


def keep_partial(output, sinks, matter, count, identity):
    """Save the finished frames as partial outputs and the state beside OUTPUT; raises
    MatteInterrupted with what was kept (or that nothing was: a run without frames or a full disk)."""
    if count == 0:
        raise MatteInterrupted(f"Interrupted before the first frame; nothing written to '{output}'.")
    kept = []
    try:
        for sink in sinks:
            kept.append(_keep_sink(output, sink))
        arrays = {f"state{index}": array for index, array in enumerate(get_states(matter))}
        meta = {
            "count": count,
            "ratio": matter.ratio,
            "size": list(matter.size),
            "fingerprint": identity,
            "partials": [str(path) for path in kept],
        }
        arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        with atomic_path(state_path(output)) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
    except (OSError, RuntimeFailure) as error:
        for path in kept:
            _remove(path)
        raise MatteInterrupted(
            f"Interrupted after {count} frames; the partial output could not be kept "
            f"({error}); nothing written to '{output}'."
        ) from None
    raise MatteInterrupted(
        f"Interrupted after {count} frames; kept {', '.join(map(str, kept))} (playable) and "
        f"{state_path(output)}; continue with the same command and --resume."
    )


def _keep_sink(output, sink):
    target = partial_path(output, sink.path)
    if hasattr(sink, "writer"):  # a video: close and read back (VideoSink.finish), then link it aside
        sink.finish()
        with atomic_path(target) as tmp:
            os.unlink(tmp)
            os.link(sink.tmp, tmp)  # a hard link: the run's own temporary file is removed on exit
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for index in range(sink.index):
        name = f"{index:05d}.png"
        os.link(sink.folder / name, staging / name)
    _remove(target)
    os.replace(staging, target)
    return target


# -- resume --------------------------------------------------------------------------------------


def load(output, identity):
    """The saved state of an interrupted run of the same command; InputError otherwise."""
    path = state_path(output)
    if not path.is_file():
        raise InputError(
            f"nothing to resume: '{path}' does not exist (it is written when a run is interrupted "
            "with Ctrl-C); run without --resume"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
        count, states = int(meta["count"]), [arrays[f"state{i}"] for i in range(len(arrays))]
    except Exception as error:  # noqa: BLE001 - any unreadable state file is the same problem
        raise InputError(
            f"'{path}' is not a readable resume state ({type(error).__name__}); remove it and run without --resume"
        ) from None
    if meta.get("fingerprint") != identity:
        raise InputError(
            f"'{path}' belongs to a run with another input or other options; resume with the "
            "same command, or remove it and run without --resume"
        )
    partials = [Path(p) for p in meta.get("partials", [])]
    missing = [str(p) for p in partials if not p.exists()]
    if missing:
        raise InputError(
            f"cannot resume: the partial output {missing[0]} is gone; remove '{path}' and run without --resume"
        )
    return {"count": count, "states": states, "ratio": meta["ratio"], "size": tuple(meta["size"]), "partials": partials}


def restore(resume, output, sinks, matter):
    """Copy the kept frames into the new outputs and give the network its state back."""
    import cv2

    count = resume["count"]
    for sink in sinks:
        source = partial_path(output, sink.path)
        if hasattr(sink, "writer"):
            capture = cv2.VideoCapture(str(source))
            try:
                for _ in range(count):
                    ok, frame = capture.read()
                    if not ok:
                        raise InputError(
                            f"cannot resume: '{source}' holds fewer than {count} frames; remove "
                            f"'{state_path(output)}' and run without --resume"
                        )
                    sink.writer.write(frame)
                    sink.count += 1
            finally:
                capture.release()
        else:
            for index in range(count):
                name = f"{index:05d}.png"
                if not (source / name).is_file():
                    raise InputError(
                        f"cannot resume: '{source / name}' is missing; remove "
                        f"'{state_path(output)}' and run without --resume"
                    )
                shutil.copyfile(source / name, sink.folder / name)
            sink.index = count
    matter.size, matter.ratio = resume["size"], resume["ratio"]
    set_states(matter, resume["states"])


def discard(output):
    """Remove the partial outputs and the state left by an interrupted run of OUTPUT."""
    path = state_path(output)
    if not path.is_file():
        return
    try:
        with np.load(path, allow_pickle=False) as data:
            partials = json.loads(data[META_KEY].tobytes().decode("utf-8")).get("partials", [])
    except Exception:  # noqa: BLE001 - an unreadable state: remove only what the names say
        partials = []
    output = Path(output)
    for partial in partials + [output.with_name(output.name + ".partial")]:
        if Path(partial).parent == output.parent or Path(partial).parent.parent == output.parent:
            _remove(partial)  # only files beside OUTPUT (or inside its .partial folder)
    _remove(path)


def _remove(path):
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
