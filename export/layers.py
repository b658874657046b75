"""PyTorch layers -> ONNX nodes: BN folding, FP convs, binary convs with packed weights.

Folding (eval-mode BatchNorm directly after a conv, as RVM's official export does):
    a = gamma / sqrt(running_var + eps),  b = beta - running_mean * a
    FP conv:     W' = W * a[o],                bias' = b + conv_bias * a
    binary conv: scale = alpha * a,            bias  = b + conv_bias * a
where the binary conv computes alpha * D + conv_bias with D the +-1 dot product (BiConv2d's
weights are alpha * sign(w - mean(w))). Folding happens in float64, then rounds once to float32.
LearnableBias modules stay separate Add nodes: they sit between sign and conv or after the
BN, and keeping them apart reproduces the model's order of float additions.
"""
import numpy as np
from torch import nn

from bimatting.binops import reference
from bimatting.export.graph import to_array


def bn_affine(bn):
    """(a, b) float64 [C] with BN(x) = a * x + b in eval mode."""
    var = to_array(bn.running_var).astype(np.float64)
    mean = to_array(bn.running_mean).astype(np.float64)
    gamma = to_array(bn.weight).astype(np.float64) if bn.weight is not None else np.ones_like(var)
    beta = to_array(bn.bias).astype(np.float64) if bn.bias is not None else np.zeros_like(var)
    a = gamma / np.sqrt(var + bn.eps)
    return a, beta - mean * a


def _conv_attrs(conv):
    ph, pw = conv.padding if isinstance(conv.padding, tuple) else (conv.padding, conv.padding)
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise ValueError(f"cannot export conv padding {conv.padding!r} / mode {conv.padding_mode!r}; "
                         "expected explicit zero padding")
    return dict(kernel_shape=list(conv.kernel_size), strides=list(conv.stride), pads=[ph, pw, ph, pw],
                dilations=list(conv.dilation))


def _cached(builder, key, make):
    """Initializer names for `key`, made once: a module applied several times shares its weights."""
    if key not in builder.param_cache:
        builder.param_cache[key] = make()
    return builder.param_cache[key]


def conv(builder, module, x, bn=None):
    """nn.Conv2d (+ following BatchNorm2d folded in) -> ONNX Conv.  [N,Cin,H,W] -> [N,O,OH,OW]"""
    def make():
        name = builder.module_name(module)
        weight = to_array(module.weight).astype(np.float64)
        bias = to_array(module.bias).astype(np.float64) if module.bias is not None else None
        if bn is not None:
            a, b = bn_affine(bn)
            weight = weight * a[:, None, None, None]
            bias = b + (bias * a if bias is not None else 0.0)
        names = [builder.initializer(weight.astype(np.float32), f"{name}.weight")]
        if bias is not None:
            names.append(builder.initializer(bias.astype(np.float32), f"{name}.bias"))
        return names

    params = _cached(builder, ("conv", id(module), id(bn)), make)
    return builder.op("Conv", [x] + params, group=module.groups, **_conv_attrs(module))


def add_channel_bias(builder, module, x):
    """LearnableBias: x + b, b [1, C, 1, 1]."""
    bias = _cached(builder, ("shift", id(module)),
                   lambda: builder.initializer(to_array(module.bias), f"{builder.module_name(module)}.bias"))
    return builder.op("Add", [x, bias])


def prelu(builder, module, x):
    """nn.PReLU(C): slope stored [C, 1, 1] to broadcast over NCHW."""
    def make():
        name = f"{builder.module_name(module)}.weight"
        if module.weight.numel() == 1:
            return builder.initializer(to_array(module.weight).reshape(1), name)
        return builder.channel_vector(to_array(module.weight), name)

    return builder.op("PRelu", [x, _cached(builder, ("prelu", id(module)), make)])


def binarize_pack(builder, x, shift=None):
    """[shift ->] sign -> bit-pack: float [N,C,H,W] -> uint8 [N,ceil(C/8),H,W] (ai.bimatting.BinarizePack)."""
    if shift is not None:
        x = add_channel_bias(builder, shift, x)
    return builder.custom("BinarizePack", [x])


def binary_weights(module):
    """A BiConv2d's (packed uint8 [O, ceil(C/8), KH, KW], alpha float64 [O])."""
    if module.groups != 1:
        raise ValueError(f"binary conv with groups={module.groups} cannot be exported; expected groups=1")
    sign, alpha = module.binary_weight()
    return reference.pack_weights(to_array(sign)), to_array(alpha).astype(np.float64)


def binary_conv(builder, module, packed, bn=None, mask=None):
    """BiConv2d (+ conv bias, + following BN) on a packed input -> ai.bimatting.BinaryConv2d[Masked].

    uint8 [N,ceil(Cin/8),H,W] -> float [N,O,OH,OW]; with `mask` [N,1,OH,OW] exactly 0 where mask == 0.
    """
    def make():
        name = builder.module_name(module)
        weight_packed, alpha = binary_weights(module)
        scale, bias = alpha, np.zeros_like(alpha)
        if module.bias is not None:
            bias = to_array(module.bias).astype(np.float64)
        if bn is not None:
            a, b = bn_affine(bn)
            scale, bias = scale * a, b + bias * a
        return [builder.initializer(weight_packed, f"{name}.weight_packed"),
                builder.initializer(scale.astype(np.float32), f"{name}.scale"),
                builder.initializer(bias.astype(np.float32), f"{name}.bias")]

    inputs = [packed] + _cached(builder, ("binary_conv", id(module), id(bn)), make)
    attrs = dict(channels_in=module.in_channels, **_conv_attrs(module))
    if mask is not None:
        return builder.custom("BinaryConv2dMasked", inputs + [mask], **attrs)
    return builder.custom("BinaryConv2d", inputs, **attrs)


def is_binary_conv(module):
    return isinstance(module, nn.Conv2d) and getattr(module, "binary", False)


def _halo(layers):
    """How far (pixels) the stride-1 convs in `layers` reach: a masked conv before them must also
    be computed this far outside the mask so they read true values there."""
    reach = 0
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            if tuple(layer.stride) != (1, 1):
                raise ValueError("a masked binary conv may only be followed by stride-1 convs")
            reach += max((k - 1) // 2 * d for k, d in zip(layer.kernel_size, layer.dilation))
    return reach


def sequential(builder, seq, x, mask=None):
    """Emit an nn.Sequential of the layers the two networks use, left to right.

    LearnableBias + sign -> BinarizePack; BiConv2d [+ BN] -> BinaryConv2d (Masked when `mask` is
    given: computed where mask != 0, widened by the reach of later convs); Conv2d [+ BN] -> Conv;
    LearnableBias -> Add; PReLU, ReLU, Sigmoid, Tanh, Hardswish; AdaptiveAvgPool2d(1) -> GAP.
    """
    layers = list(seq)
    index = 0
    while index < len(layers):
        layer = layers[index]
        after = layers[index + 1] if index + 1 < len(layers) else None
        kind = type(layer).__name__
        if kind == "LearnableBias" and type(after).__name__ == "BinaryActivation":
            x = binarize_pack(builder, x, shift=layer)
            index += 2
            continue
        if kind == "BinaryActivation":
            x = binarize_pack(builder, x)
        elif isinstance(layer, nn.Conv2d):
            bn = after if isinstance(after, nn.BatchNorm2d) else None
            if is_binary_conv(layer):
                conv_mask = None
                if mask is not None:
                    reach = _halo(layers[index + 1:])
                    conv_mask = mask if reach == 0 else builder.op(
                        "MaxPool", [mask], kernel_shape=[2 * reach + 1] * 2, pads=[reach] * 4)
                x = binary_conv(builder, layer, x, bn=bn, mask=conv_mask)
            else:
                x = conv(builder, layer, x, bn=bn)
            index += 2 if bn is not None else 1
            continue
        elif kind == "LearnableBias":
            x = add_channel_bias(builder, layer, x)
        elif isinstance(layer, nn.PReLU):
            x = prelu(builder, layer, x)
        elif isinstance(layer, nn.ReLU):
            x = builder.op("Relu", [x])
        elif isinstance(layer, nn.Sigmoid):
            x = builder.op("Sigmoid", [x])
        elif isinstance(layer, nn.Tanh):
            x = builder.op("Tanh", [x])
        elif isinstance(layer, nn.Hardswish):
            x = hardswish(builder, x)
        elif isinstance(layer, nn.AdaptiveAvgPool2d) and _is_global(layer):
            x = builder.op("GlobalAveragePool", [x])
        else:
            raise ValueError(f"cannot export layer {kind} in {builder.module_name(seq)}")
        index += 1
    return x


def hardswish(builder, x):
    """x * hardsigmoid(x) = x * clip(x / 6 + 1/2, 0, 1) (RVM's official decomposition)."""
    return builder.op("Mul", [x, builder.op("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)])


def _is_global(pool):
    size = pool.output_size
    return size == 1 or tuple(size) == (1, 1)
