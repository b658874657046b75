"""Float layers after the binary part, computed so that every runtime gets the same float32 bits.

Signs read the values these layers make (the refiner's first sign reads decode0's output and the
guided filter's statistics; the SAB mask reads pha_s through the projection). A float conv sums
its products in an order each runtime picks, and the last bits then differ; near 0 a sign flips.
Two remedies, both eval mode only (training computes the plain float layers):

1. `IntegerChain`: binary conv -> BN -> ReLU -> float conv -> BN (decode0's branches). The ReLU
   reads D * s + b, D the integer dot product of +-1 values; with sigma = sign(s), gamma = b / |s|
   and its split gamma = g + f (g integer, 0 < f <= 1):
       v = relu(D s + b) = |s| (n + f a),   m = sigma D + g,  n = relu(m),  a = [m >= 0]
   (m is an integer, so m + f > 0 exactly when m >= 0). n and a are exact integers, n <= K + g
   (K the binary conv's fan-in). The float conv and its BN then read both:
       y = conv([n, a], [W_n, W_a]) + c,   W_n ~ a2 * W * |s|,  W_a ~ a2 * W * |s| * f,  c = b2
   with every weight w_int * 2^-e (e per output channel) and sum |w_int| * max(n or a) < 2^24:
   every product and partial sum is an integer multiple of 2^-e below 2^24 of them, exact in float32
   in any order (FMA included); only `+ c` rounds. The threshold is not moved: v is what the float
   layers compute, up to the weights' rounding (a relative 2^-10 of a channel's largest, or finer).
   The graph holds the same: BinaryConv2d with (scale, bias) = (sigma, g), Relu and Clip(m + 1, 0, 1)
   for n and a, Concat, Conv, Add. The float conv reads twice the channels (the cost of exactness).

2. `wide_conv1x1`: a 1x1 conv summed in float64 and rounded once to float32 (the projection
   heads). float32 products are exact in float64; the order of a float64 sum shows only ~2^-53,
   far below float32's last bit, so the rounded result is the same except where the exact sum
   lies within that of a float32 rounding boundary (~1e-8 of values). ONNX has no float64 Conv
   in onnxruntime: the graph computes it as a MatMul over the channel axis.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .binarize import BiConv2d, bn_affine, folded_output

ONNX_DOUBLE = 11  # onnx.TensorProto.DOUBLE (models do not import onnx)
EXACT_LIMIT = 2**24  # float32 holds every integer below this exactly


def _array(tensor):
    return tensor.detach().cpu().numpy()


def chain_at(layers, index):
    """An IntegerChain over layers[index:index + 5] when they are BiConv2d, BatchNorm2d, ReLU,
    float Conv2d (stride 1, groups 1), BatchNorm2d; else None."""
    part = list(layers[index : index + 5])
    kinds = (BiConv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d)
    if len(part) < 5 or not all(isinstance(m, k) for m, k in zip(part, kinds)):
        return None
    float_conv = part[3]
    if isinstance(float_conv, BiConv2d) or float_conv.groups != 1 or tuple(float_conv.stride) != (1, 1):
        return None
    return IntegerChain(*part)


class IntegerChain:
    """A view over five modules of a Sequential (see module doc, 1.); holds no parameters."""

    length = 5

    def __init__(self, binary_conv, bn1, relu, float_conv, bn2):
        self.binary_conv, self.bn1, self.relu, self.float_conv, self.bn2 = binary_conv, bn1, relu, float_conv, bn2

    def threshold_form(self):
        """(sigma, g) float32 [C] of m = sigma D + g; f float64 [C] in (0, 1]; |s| float64 [C]."""
        scale, bias = (v.astype(np.float64) for v in folded_output(self.binary_conv, self.bn1))
        magnitude = np.maximum(np.abs(scale), np.finfo(np.float32).tiny)
        sigma = np.where(scale < 0, -1.0, 1.0)
        gamma = bias / magnitude
        whole = np.ceil(gamma) - 1.0
        return sigma.astype(np.float32), whole.astype(np.float32), gamma - whole, magnitude

    def integer_weights(self):
        """(W_q float32 [O, 2C, KH, KW]: the weights of [n, a], exact multiples of 2^-e per output
        channel; c float32 [O])."""
        _, whole, fraction, magnitude = self.threshold_form()
        fan_in = self.binary_conv.weight[0].numel()
        largest = np.concatenate([np.maximum(fan_in + whole.astype(np.float64), 0.0), np.ones_like(fraction)])
        a, b = bn_affine(self.bn2)
        weight = (
            _array(self.float_conv.weight).astype(np.float64) * a[:, None, None, None] * magnitude[None, :, None, None]
        )
        real = np.concatenate([weight, weight * fraction[None, :, None, None]], axis=1)  # per unit of n, of a
        bias = b + (a * _array(self.float_conv.bias).astype(np.float64) if self.float_conv.bias is not None else 0.0)
        quantized = np.empty_like(real)
        for o in range(real.shape[0]):
            load = (np.abs(real[o]) * largest[:, None, None]).sum()
            e = np.floor(np.log2(max(load, np.finfo(np.float64).tiny) / EXACT_LIMIT))
            while True:  # the finest step whose integers keep every partial sum below 2^24
                w_int = np.round(real[o] / 2.0**e)
                if (np.abs(w_int) * largest[:, None, None]).sum() < EXACT_LIMIT:
                    break
                e += 1
            quantized[o] = w_int * 2.0**e
        return quantized.astype(np.float32), np.broadcast_to(bias, real.shape[:1]).astype(np.float32)

    def forward(self, x):
        """x: +-1 [N, C, H, W] -> BN2(conv(ReLU(BN1(binary_conv(x))))) in eval mode (before the last ReLU)."""
        sigma, whole, _, _ = self.threshold_form()
        m = self.binary_conv(x, output=(sigma, whole))  # sigma D + g: exact integers
        n_and_a = torch.cat([F.relu(m), (m + 1.0).clamp(0.0, 1.0)], dim=1)
        weight, bias = (torch.from_numpy(v).to(x.device) for v in self.integer_weights())
        # the float conv called as the module, so that hooks (profile, probes) still see it
        y = torch.func.functional_call(self.float_conv, {"weight": weight, "bias": None}, (n_and_a,))
        return y + bias.view(1, -1, 1, 1)

    def emit_onnx(self, b, packed, mask=None):
        """As forward: packed input (uint8) -> BinaryConv2d[Masked] (sigma, g) -> [Relu, Clip(+1)] -> Conv -> Add."""

        def make():
            name = b.module_name(self.float_conv)
            weight, bias = self.integer_weights()
            return b.initializer(weight, f"{name}.integer_weight"), b.channel_vector(bias, f"{name}.folded_bias")

        sigma, whole, _, _ = self.threshold_form()
        m = b.binary_conv(self.binary_conv, packed, mask=mask, folded=(sigma, whole))
        active = b.op(
            "Clip", [b.op("Add", [m, b.const(1.0, np.float32)]), b.const(0.0, np.float32), b.const(1.0, np.float32)]
        )
        n_and_a = b.op("Concat", [b.op("Relu", [m]), active], axis=1)
        weight, bias = b.cached(("integer_chain", id(self.float_conv)), make)
        conv = self.float_conv
        conv_out = b.op(
            "Conv",
            [n_and_a, weight],
            group=1,
            kernel_shape=list(conv.kernel_size),
            strides=[1, 1],
            pads=[conv.padding[0], conv.padding[1]] * 2,
            dilations=list(conv.dilation),
        )
        return b.op("Add", [conv_out, bias])


def wide_conv1x1(conv, x):
    """1x1 conv (with bias) summed in float64, rounded once to float32: [N, C, H, W] -> [N, O, H, W]."""
    wide = {
        "weight": conv.weight.detach().double(),
        "bias": conv.bias.detach().double() if conv.bias is not None else None,
    }
    # called as the module, so that hooks (profile, probes) still see it
    return torch.func.functional_call(conv, wide, (x.double(),)).float()


def emit_wide_conv1x1(b, conv, x):
    """wide_conv1x1 as Reshape, Cast, MatMul and Add in float64, Cast back, Reshape."""

    def make():
        name = b.module_name(conv)
        weight = _array(conv.weight).astype(np.float64).reshape(conv.out_channels, conv.in_channels)
        bias = _array(conv.bias).astype(np.float64) if conv.bias is not None else np.zeros(conv.out_channels)
        return b.initializer(weight, f"{name}.weight"), b.initializer(bias.reshape(-1, 1), f"{name}.bias")

    weight, bias = b.cached(("wide_conv1x1", id(conv)), make)
    flat_shape = b.op("Concat", [b.shape_slice(x, 0, 2), b.const([-1])], axis=0)  # [N, C, H*W]
    # flattened, then widened: a reshape of the float32 input is a view, and the cast is read by
    # the MatMul as it goes (cast first, a compiler writes the float64 copy out: 16.6 MB at 1080p)
    flat = b.op("Cast", [b.op("Reshape", [x, flat_shape])], to=ONNX_DOUBLE)
    product = b.op("Add", [b.op("MatMul", [weight, flat]), bias])  # [N, O, H*W]
    out_shape = b.op("Concat", [b.shape_slice(x, 0, 1), b.const([conv.out_channels]), b.shape_slice(x, 2, 4)], axis=0)
    return b.op("Reshape", [b.op("Cast", [product], to=b.FLOAT), out_shape])
