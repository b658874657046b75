"""BiMatting network: binarized RVM (BiMobileNet encoder, binary LR-ASPP, SAB decoder, BiDGF).

One file per component: binarize (primitives), bimobilenet, lraspp, gru, decoder,
guided_filter, model (the `BiMatting` class, registered as architecture "bimatting").
"""

from .binarize import BiConv2d, BinaryActivation, LearnableBias, binary_activation, sign
from .model import BiMatting

__all__ = ["BiMatting", "BiConv2d", "BinaryActivation", "LearnableBias", "binary_activation", "sign"]
