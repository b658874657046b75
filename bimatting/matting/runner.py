"""Matting videos frame by frame on any backend, with the network's recurrent state carried along.

    matte(source, output, checkpoint=..., backend=..., output_type=...) -> summary dict
    open_matter(checkpoint=None, artifact=None, backend=None, downsample_ratio="auto") -> Matter

A `Matter` runs one network on one backend, one frame at a time (RVM's call convention: src and
the states r1..r4 in, fgr, pha and the next states out):

    torch        the PyTorch network from bimatting.load_model (checkpoint, "rvm" or "default")
    onnxruntime  an .onnx in RVM's interface: a file given as artifact/checkpoint, RVM's official
                 export for "rvm", else the checkpoint exported in memory by bimatting.export
    tvm          a compiled artifact (bimatting compile), run by bimatting.deploy.device.runtime

Only the torch backend and the in-memory export import torch: a board with onnxruntime or the TVM
runtime mattes without it. Frames are RGB float32 [H, W, 3] in [0, 1] (bimatting.matting.frames).
"""

import contextlib
import importlib.util
import inspect
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bimatting.downsample import auto_downsample_ratio
from bimatting.errors import InputError, RuntimeFailure
from bimatting.matting import resume as matte_resume
from bimatting.matting.frames import to_nchw
from bimatting.matting.resume import deferred_interrupt
from bimatting.matting.video_io import FrameSource, open_sinks, parse_background
from bimatting.models import model_class
from bimatting.recurrent import recurrent_step

BACKENDS = ("torch", "onnxruntime", "tvm")
OUTPUT_TYPES = ("composite", "alpha", "foreground", "all")
ONNX_SUFFIXES = (".onnx",)


def parse_ratio(value):
    """'auto' or a float in (0, 1] (RVM's s)."""
    if value is None or str(value).lower() == "auto":
        return "auto"
    try:
        ratio = float(value)
    except ValueError:
        raise InputError(f"downsample ratio '{value}' is neither 'auto' nor a number; expected e.g. 0.25") from None
    if not 0.0 < ratio <= 1.0:
        raise InputError(f"downsample ratio {ratio} is outside (0, 1]; the network runs at the input size times it")
    return ratio


# -- backends ----------------------------------------------------------------------------------


class Matter:
    """One network on one backend; `step` mattes the next frame of a video."""

    backend = None

    def __init__(self, downsample_ratio="auto", model="?"):
        self.downsample_ratio = parse_ratio(downsample_ratio)
        self.model = model
        self.ratio = None  # the s in use, fixed by the first frame
        self.size = None  # (width, height) of the first frame
        self.states = None

    def reset(self):
        """Forget the recurrent state (a new, unrelated clip follows)."""
        self.states, self.ratio, self.size = None, None, None

    def step(self, frame):
        """[H, W, 3] float32 RGB -> (fgr [H, W, 3], pha [H, W]) float32; advances the state."""
        fgr, pha = self.infer(to_nchw(frame))  # [1,3,H,W], [1,1,H,W]
        height, width = frame.shape[:2]
        if tuple(fgr.shape) != (1, 3, height, width) or tuple(pha.shape) != (1, 1, height, width):
            raise InputError(
                f"'{self.model}' returned fgr {list(fgr.shape)} and pha {list(pha.shape)} for a "
                f"{width}x{height} frame; expected [1, 3, {height}, {width}] and [1, 1, {height}, "
                f"{width}] (not a matting network in RVM's interface, or a corrupt one)"
            )
        return np.transpose(fgr[0], (1, 2, 0)), pha[0, 0]

    def infer(self, src):
        """src [1, 3, H, W] float32 -> (fgr [1, 3, H, W], pha [1, 1, H, W]); advances the state."""
        height, width = src.shape[-2:]
        if self.size is None:
            self.size = (width, height)
            auto = self.downsample_ratio == "auto"
            self.ratio = auto_downsample_ratio(height, width) if auto else self.downsample_ratio
        elif self.size != (width, height):
            raise InputError(
                f"frame of {width}x{height} after frames of {self.size[0]}x{self.size[1]}; "
                "a clip must keep one size (call reset() between clips)"
            )
        return self._run(src, self.ratio)

    def describe(self):
        return {"backend": self.backend, "model": str(self.model), "downsample_ratio": self.ratio}

    def _run(self, src, ratio):
        raise NotImplementedError


class TorchMatter(Matter):
    """A PyTorch network (RVM or BiMatting) in eval mode."""

    backend = "torch"

    def __init__(self, model, downsample_ratio="auto", name="?"):
        super().__init__(downsample_ratio, name)
        self.network = model.eval()
        # BiMatting also returns coarse outputs unless told not to; RVM has no such switch.
        self._extra = {"return_coarse": False} if "return_coarse" in inspect.signature(model.forward).parameters else {}

    def _run(self, src, ratio):
        import torch

        with torch.inference_mode():
            outputs, states = recurrent_step(self.network, torch.from_numpy(src), self.states, ratio, **self._extra)
        self.states = states
        return outputs[0].numpy(), outputs[1].numpy()  # fgr, pha


class OnnxMatter(Matter):
    """An ONNX file in RVM's interface run by onnxruntime (ai.bimatting ops run as ONNX functions)."""

    backend = "onnxruntime"

    def __init__(self, model, downsample_ratio="auto", name="?", threads=0):
        import onnxruntime as ort

        super().__init__(downsample_ratio, name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # no warnings about unused initializers
        # The graph as written, like the compiled artifact: onnxruntime's fusions reorder float
        # operations, and in a binary network a reordered rounding flips sign decisions at exact
        # ties, which then cascade (packaged model, sample clip: pha mean |diff| 8e-3 against the
        # TVM artifact optimized, 7e-10 unoptimized; the speed differs by ~5%).
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if not hasattr(model, "SerializeToString"):  # a file: untrusted until checked
            from bimatting.weights.onnx_check import load_checked  # noqa: PLC0415 - onnx loads only to check a file

            model = load_checked(model)
        source = model.SerializeToString()
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            first = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            raise InputError(
                f"onnxruntime cannot load model '{name}' ({first}); expected an .onnx from `bimatting export`"
            ) from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        missing = [n for n in ("src", "r1i", "r2i", "r3i", "r4i") if n not in inputs]
        if missing:
            raise InputError(
                f"'{name}' lacks the inputs {', '.join(missing)}; expected a matting "
                "network in RVM's interface (src, r1i..r4i[, downsample_ratio])"
            )
        self.has_ratio_input = "downsample_ratio" in inputs
        self.static_shape = inputs["src"].shape if all(isinstance(d, int) for d in inputs["src"].shape) else None
        self.baked_ratio = _metadata_ratio(self.session) if not self.has_ratio_input else None
        if self.baked_ratio is not None and self.downsample_ratio not in ("auto", self.baked_ratio):
            raise InputError(
                f"'{name}' is exported with downsample ratio {self.baked_ratio:g} baked in, not "
                f"{self.downsample_ratio:g}; export it again or use --downsample-ratio auto"
            )
        self._state_shapes = {k: inputs[f"r{k}i"].shape for k in range(1, 5)}
        self.outputs = ["fgr", "pha", "r1o", "r2o", "r3o", "r4o"]

    def _run(self, src, ratio):
        if self.static_shape is not None and list(src.shape) != list(self.static_shape):
            raise InputError(
                f"'{self.model}' was exported for input {self.static_shape}, the frames are "
                f"{list(src.shape)}; export it again with the frames' size"
            )
        if self.states is None:
            # RVM's convention: the first frame gets zero states of shape [1,1,1,1] (broadcast).
            # A static export has fixed state shapes instead.
            self.states = [
                np.zeros([d if isinstance(d, int) else 1 for d in self._state_shapes[k]], np.float32)
                for k in range(1, 5)
            ]
        feed = {"src": src, **{f"r{k}i": s for k, s in enumerate(self.states, 1)}}
        if self.has_ratio_input:
            feed["downsample_ratio"] = np.asarray([ratio], np.float32)
        elif self.baked_ratio is not None:
            self.ratio = self.baked_ratio
        try:
            fgr, pha, *self.states = self.session.run(self.outputs, feed)
        except Exception as error:  # onnxruntime's own types: a graph that loads but cannot run
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise RuntimeFailure(
                f"onnxruntime failed running '{self.model}' ({first}); the model is "
                "corrupt or not a matting network for these frames"
            ) from None
        return fgr, pha


def _metadata_ratio(session):
    # a static export bakes the ratio in and records it (bimatting.export.exporter)
    value = session.get_modelmeta().custom_metadata_map.get("bimatting.downsample_ratio")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def open_matter(checkpoint=None, artifact=None, backend=None, downsample_ratio="auto", threads=0):
    """The Matter for a model source on a backend (see the module docstring).

    checkpoint: a path, "rvm" or "default" (default when neither is given); artifact: an .onnx
    (onnxruntime) or a compiled TVM artifact. backend: inferred when None (artifact's kind, else torch).
    """
    downsample_ratio = parse_ratio(downsample_ratio)
    if checkpoint is not None and artifact is not None:
        raise InputError("give either --checkpoint or --artifact, not both")
    if backend is not None and backend not in BACKENDS:
        raise InputError(f"unknown backend '{backend}'; expected one of: {', '.join(BACKENDS)}")
    if artifact is not None:
        path = Path(artifact)
        if not path.exists():  # a compiled artifact may also be a folder
            raise InputError(
                f"artifact '{path}' does not exist; expected an .onnx file or a compiled "
                "artifact from `bimatting compile`"
            )
        is_onnx = path.suffix.lower() in ONNX_SUFFIXES
        backend = backend or ("onnxruntime" if is_onnx else "tvm")
        if backend == "torch":
            raise InputError(
                f"the torch backend runs checkpoints, not artifacts ('{path}'); use --checkpoint or another backend"
            )
        if backend == "onnxruntime" and not is_onnx:
            raise InputError(f"onnxruntime needs an .onnx file, got '{path}'; use --backend tvm for compiled artifacts")
        if backend == "tvm" and is_onnx:
            raise InputError(
                f"the tvm backend runs compiled artifacts, got the ONNX '{path}'; "
                f"compile it first (bimatting compile {path.name} --target host)"
            )
        if backend == "onnxruntime":
            return OnnxMatter(path, downsample_ratio, name=path, threads=threads)
        return _tvm_matter(path, downsample_ratio)
    checkpoint = "default" if checkpoint is None else checkpoint
    backend = backend or "torch"
    is_onnx_file = Path(str(checkpoint)).suffix.lower() in ONNX_SUFFIXES and checkpoint not in ("rvm", "default")
    if backend == "onnxruntime":
        if is_onnx_file:
            if not Path(checkpoint).is_file():
                raise InputError(
                    f"checkpoint '{checkpoint}' does not exist; expected a .pth/.pt/.onnx file, 'rvm' or 'default'"
                )
            return OnnxMatter(Path(checkpoint), downsample_ratio, name=checkpoint, threads=threads)
        return OnnxMatter(export_in_memory(checkpoint), downsample_ratio, name=checkpoint, threads=threads)
    if backend == "tvm":
        raise InputError("the tvm backend runs compiled artifacts; pass --artifact (from `bimatting compile`)")
    from bimatting.weights.checkpoints import load_model  # noqa: PLC0415 - torch loads for the torch backend only

    return TorchMatter(load_model(checkpoint), downsample_ratio, name=checkpoint)


def export_in_memory(checkpoint):
    """An ONNX ModelProto of a checkpoint (RVM's official export for "rvm")."""
    if checkpoint == "rvm":
        import onnx

        from bimatting.weights.rvm_onnx import official_onnx_path  # noqa: PLC0415 - torch loads only for RVM's file

        with official_onnx_path() as path:
            return onnx.load(str(path))
    from bimatting.weights.checkpoints import load_model  # noqa: PLC0415 - torch loads for a checkpoint only

    model = load_model(checkpoint)
    try:
        from bimatting.export.exporter import build_onnx  # noqa: PLC0415 - torch; an optional part (ImportError below)
    except ImportError:
        raise InputError(
            "this install has no ONNX exporter (bimatting.export.exporter); "
            "use --backend torch or pass an .onnx with --artifact"
        ) from None
    arch = "bimatting" if isinstance(model, model_class("bimatting")) else "rvm"
    return build_onnx(model, arch)


def _tvm_matter(path, downsample_ratio):
    if importlib.util.find_spec("bimatting.deploy.device.runtime") is None:
        raise InputError(
            "this install has no TVM runtime (bimatting.deploy.device.runtime); use --backend onnxruntime or torch"
        )
    return TvmMatter(path, downsample_ratio)


class TvmMatter(Matter):
    """A compiled artifact run by the TVM runtime, on this machine or on a board (`session`: TVM RPC).

    An artifact has its input size and ratio baked in: frames of another size are refused, and an
    explicit ratio must be the compiled one ("auto" takes it).
    """

    backend = "tvm"

    def __init__(self, path, downsample_ratio="auto", session=None):
        # the TVM runtime is an optional part of an install (see _tvm_matter)
        from bimatting.deploy.device.runtime import CompiledModel, RecurrentRunner  # noqa: PLC0415

        super().__init__(downsample_ratio, path)
        self.compiled = CompiledModel(path, session=session)
        self.runner = RecurrentRunner(self.compiled)
        meta = self.compiled.metadata
        self.resolution = tuple(meta["resolution"])  # (width, height)
        self.compiled_ratio = meta.get("downsample_ratio")
        if (
            self.downsample_ratio != "auto"
            and self.compiled_ratio is not None
            and abs(self.downsample_ratio - self.compiled_ratio) > 1e-9
        ):
            raise InputError(
                f"artifact '{path}' is compiled for downsample ratio {self.compiled_ratio:g}, not "
                f"{self.downsample_ratio:g}; compile it again with --downsample-ratio "
                f"{self.downsample_ratio:g} or use --downsample-ratio auto"
            )

    def reset(self):
        super().reset()
        self.runner.reset()

    def infer(self, src):
        width, height = src.shape[-1], src.shape[-2]
        if (width, height) != self.resolution:
            raise InputError(
                f"artifact '{self.model}' is compiled for {self.resolution[0]}x{self.resolution[1]} "
                f"frames, these are {width}x{height}; compile it with --resolution {width}x{height}"
            )
        return super().infer(src)

    def _run(self, src, ratio):
        if self.compiled_ratio is not None:
            self.ratio = self.compiled_ratio
        out = self.runner.step(src, fetch=["fgr", "pha"])
        return out["fgr"], out["pha"]


# -- the loop ----------------------------------------------------------------------------------


def matte(
    source,
    output,
    *,
    checkpoint=None,
    artifact=None,
    backend=None,
    output_type="composite",
    background="green",
    downsample_ratio="auto",
    start=0.0,
    frames=None,
    rgba=False,
    progress=True,
    threads=0,
    resume=False,
):
    """Matte `source` (video file, image folder or webcam index) into `output` (video or PNG folder).

    Everything the user gave is checked before the model loads; outputs appear only complete
    (written to temporary names, renamed at the end). Ctrl-C keeps the frames done as a playable
    partial output and the recurrent state; `resume` continues from them (bimatting.matting.resume).
    Returns a summary dict.
    """
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"unknown output type '{output_type}'; expected one of: {', '.join(OUTPUT_TYPES)}")
    if backend is not None and backend not in BACKENDS:
        raise InputError(f"unknown backend '{backend}'; expected one of: {', '.join(BACKENDS)}")
    parse_ratio(downsample_ratio)
    if frames is not None and frames < 1:
        raise InputError(f"--frames must be at least 1, got {frames}")
    if start < 0:
        raise InputError(f"--start must be >= 0 seconds, got {start}")
    kinds = ("composite", "alpha", "foreground") if output_type == "all" else (output_type,)
    options = dict(
        checkpoint=checkpoint,
        artifact=artifact,
        backend=backend,
        output_type=output_type,
        background=background,
        downsample_ratio=downsample_ratio,
        start=start,
        frames=frames,
        rgba=rgba,
    )
    with FrameSource(source, start=start, limit=frames) as reader:
        session = matte_resume.Session(source, output, options, resume, reader.kind)
        color = parse_background(background, reader.size) if "composite" in kinds else None
        with open_sinks(output, kinds, reader.fps, reader.size, rgba=rgba) as sinks:
            matter = open_matter(checkpoint, artifact, backend, downsample_ratio, threads)
            todo, done = session.start(reader, sinks, matter)
            count, began = _loop(
                reader,
                matter,
                sinks,
                color,
                progress,
                todo,
                done,
                (lambda n: session.stop(sinks, matter, n)) if session.resumable else None,
            )
    session.finish()
    seconds = time.perf_counter() - began
    summary = {
        "input": str(source),
        "outputs": [str(sink.path) for sink in sinks],
        "frames": count,
        "size": list(reader.size),
        "fps": reader.fps,
        "seconds": round(seconds, 3),
        "frames_per_second": round((count - done) / seconds, 3) if seconds > 0 else None,
        **matter.describe(),
        **({"resumed_after": done} if resume else {}),
    }
    if reader.kind == "video" and reader.total is not None and count < reader.total:
        summary["warning"] = (
            f"the input declares {reader.total} frames but only {count} could be decoded "
            "(a truncated or corrupt stream?); the output holds those"
        )
    return summary


def _loop(reader, matter, sinks, background, progress, frames=None, done=0, on_stop=None):
    """Matte `frames` (default: all of `reader`) after `done` restored ones. With `on_stop`, the
    first Ctrl-C lets the frame in hand finish, then on_stop(count) keeps the work (and raises)."""
    count, began = done, time.perf_counter()
    bar = tqdm(total=reader.total, initial=done, unit="frame", desc="matte", disable=not progress, dynamic_ncols=True)
    with bar, contextlib.ExitStack() as stack:
        stop = None
        if reader.kind == "webcam":
            stack.enter_context(contextlib.suppress(KeyboardInterrupt))  # Ctrl-C ends a live recording
        elif on_stop is not None:
            stop = stack.enter_context(deferred_interrupt())
        for frame in reader if frames is None else frames:
            fgr, pha = matter.step(frame)
            for sink in sinks:
                sink.write(frame=frame, fgr=fgr, pha=pha, background=background)
            count += 1
            bar.update(1)
            if stop is not None and stop.requested:
                on_stop(count)
    return count, began
