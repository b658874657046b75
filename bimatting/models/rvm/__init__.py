"""Robust Video Matting (MobileNetV3-Large), full precision: the reference network.

Components, one per file: `mobilenetv3` (encoder), `lraspp`, `conv_gru`, `decoder`,
`projection`, `guided_filter` (refiner); `model.RVM` wires them. Weights come from RVM's
official ONNX (`bimatting.weights.rvm_onnx`) or an official .pth (`bimatting.weights.checkpoints`).
"""

from bimatting.models.rvm.model import RVM

__all__ = ["RVM"]
