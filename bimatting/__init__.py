"""bimatting: binarized video matting, from PyTorch training to XNOR/popcount kernels on ARM.

Importing the package is cheap and torch-free (deploy/ runs on boards without torch); the
PyTorch entry points load on first use.
"""

from bimatting._version import __version__
from bimatting.errors import BimattingError, InputError, RuntimeFailure

__all__ = ["__version__", "load_model", "matte", "BimattingError", "InputError", "RuntimeFailure"]


def __getattr__(name):
    # Lazy: `bimatting.load_model` needs torch and `bimatting.matte` OpenCV; `import bimatting` needs neither.
    if name == "load_model":
        from bimatting.weights.checkpoints import load_model  # noqa: PLC0415 - torch loads on first use

        return load_model
    if name == "matte":
        from bimatting.matting.api import matte  # noqa: PLC0415 - numpy and the runner load on first use

        return matte
    raise AttributeError(f"module 'bimatting' has no attribute {name!r}")
