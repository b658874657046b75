"""`bimatting.matte(...)`: matte a video from Python, as RVM's users call `convert_video(...)`.

    import bimatting
    written = bimatting.matte("street.mp4", "composite.mp4")                 # packaged model
    written = bimatting.matte("street.mp4", "alpha/", output_type="alpha",
                              model="bimatting-host.tar")                     # a compiled artifact
    written["outputs"]   # the files it wrote

`bimatting matte` (the CLI) is this function with options; both return the same summary.
"""

from pathlib import Path

from bimatting.errors import InputError
from bimatting.matting.runner import matte as run

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".npz")
KEYWORDS = ("default", "rvm")


def model_source(model, backend=None):
    """(checkpoint, artifact) of `model`: "default" / "rvm" / a .pth, .pt or .npz file are networks
    PyTorch runs (as is anything with backend="torch": an .onnx is then read as RVM's official
    export); an .onnx file runs in onnxruntime; anything else that exists is a compiled artifact
    (the TVM runtime)."""
    if not isinstance(model, (str, Path)):
        raise InputError(
            f"model must be 'default', 'rvm' or a path, got {type(model).__name__}; "
            "save a network with bimatting.weights.checkpoints.save_checkpoint first"
        )
    path = Path(model)
    if str(model) in KEYWORDS or path.suffix.lower() in CHECKPOINT_SUFFIXES or backend == "torch":
        return str(model), None
    if not path.exists():
        raise InputError(
            f"model '{model}' does not exist; expected 'default', 'rvm', a checkpoint "
            "(.pth .pt .npz), an .onnx file or a compiled artifact from `bimatting compile`"
        )
    return None, str(model)


def matte(
    source,
    output,
    model="default",
    *,
    output_type="composite",
    downsample_ratio="auto",
    backend=None,
    background="green",
    start=0.0,
    frames=None,
    rgba=False,
    progress=True,
    resume=False,
    threads=0,
):
    """Matte `source` into `output` with `model`; returns the summary of what was done:
    {'outputs': [paths written], 'frames', 'size', 'fps', 'seconds', 'model', 'backend', ...}.

    source       a video file, a folder of images (30 frames/s) or a webcam index
    output       a video file (.mp4 .mov .m4v .avi .mkv) or a folder for PNGs
    model        "default" (the packaged BiMatting), "rvm", a checkpoint, an .onnx file or a
                 compiled artifact (see model_source)
    output_type  "composite", "alpha", "foreground" or "all"
    downsample_ratio  "auto" (RVM's rule: long side to about 512 px) or s in (0, 1]

    Bad input raises bimatting.InputError before anything is written; outputs appear only once
    complete. Ctrl-C keeps the frames done (bimatting.matting.resume.MatteInterrupted) and
    `resume=True` continues them.
    """
    checkpoint, artifact = model_source(model, backend)
    return run(
        source,
        output,
        checkpoint=checkpoint,
        artifact=artifact,
        backend=backend,
        output_type=output_type,
        background=background,
        downsample_ratio=downsample_ratio,
        start=start,
        frames=frames,
        rgba=rgba,
        progress=progress,
        threads=threads,
        resume=resume,
    )
