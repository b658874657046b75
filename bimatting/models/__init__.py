"""Model registry: architecture name -> network class (imported on demand; needs torch).

rvm        Robust Video Matting, MobileNetV3-Large, full precision (the reference/teacher)
bimatting  BiMatting: binarized RVM (BiMobileNet, binary LR-ASPP, SAB decoder, BiDGF)
"""

import importlib

from bimatting.errors import InputError

ARCHS = {
    "rvm": ("bimatting.models.rvm.model", "RVM"),
    "bimatting": ("bimatting.models.bimatting.model", "BiMatting"),
}


def model_class(arch):
    if arch not in ARCHS:
        raise InputError(f"unknown architecture '{arch}'; expected one of: {', '.join(ARCHS)}")
    module, name = ARCHS[arch]
    return getattr(importlib.import_module(module), name)


def build_model(arch, **config):
    """A freshly initialised network of the given architecture (train mode, like nn.Module)."""
    return model_class(arch)(**config)
