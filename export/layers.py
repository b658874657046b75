"""The builder every module's `emit_onnx(b, ...)` receives: graph ops plus torch layers -> nodes.

`Builder` adds to graph.GraphBuilder the op-level toolkit, which knows no network: BN folding, FP
convs, binary convs with packed weights, sign + bit-packing, the Sequential walker and the resizes.
The networks are written once, in bimatting/models: each module type emits its own nodes beside
its forward and receives this builder as `b`, so the models import nothing from export/.

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
from bimatting.export.graph import GraphBuilder, to_array
from bimatting.models.bimatting.binarize import bn_affine, folded_output
from bimatting.models.bimatting.fixed_point import chain_at


def _conv_attrs(conv):
    ph, pw = conv.padding if isinstance(conv.padding, tuple) else (conv.padding, conv.padding)
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise ValueError(
            f"cannot export conv padding {conv.padding!r} / mode {conv.padding_mode!r}; expected explicit zero padding"
        )
    return dict(
        kernel_shape=list(conv.kernel_size),
        strides=list(conv.stride),
        pads=[ph, pw, ph, pw],
        dilations=list(conv.dilation),
    )


def binary_weights(module):
    """A BiConv2d's (packed uint8 [O, ceil(C/8), KH, KW], alpha float64 [O])."""
    if module.groups != 1:
        raise ValueError(f"binary conv with groups={module.groups} cannot be exported; expected groups=1")
    sign, alpha = module.binary_weight()
    return reference.pack_weights(to_array(sign)), to_array(alpha).astype(np.float64)


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


def _is_global(pool):
    size = pool.output_size
    return size == 1 or tuple(size) == (1, 1)


class Builder(GraphBuilder):
    """GraphBuilder + torch layers -> nodes. Shapes NCHW; every size is read from the modules."""

    def cached(self, key, make):
        """Initializer names for `key`, made once: a module applied several times shares its weights."""
        if key not in self.param_cache:
            self.param_cache[key] = make()
        return self.param_cache[key]

    def tensor(self, value, name):
        """A torch tensor (buffer or parameter) as a float32 initializer of the same shape."""
        return self.initializer(to_array(value), name)

    def conv(self, module, x, bn=None):
        """nn.Conv2d (+ following BatchNorm2d folded in) -> ONNX Conv.  [N,Cin,H,W] -> [N,O,OH,OW]"""

        def make():
            name = self.module_name(module)
            weight = to_array(module.weight).astype(np.float64)
            bias = to_array(module.bias).astype(np.float64) if module.bias is not None else None
            if bn is not None:
                a, b = bn_affine(bn)
                weight = weight * a[:, None, None, None]
                bias = b + (bias * a if bias is not None else 0.0)
            names = [self.initializer(weight.astype(np.float32), f"{name}.weight")]
            if bias is not None:
                names.append(self.initializer(bias.astype(np.float32), f"{name}.bias"))
            return names

        params = self.cached(("conv", id(module), id(bn)), make)
        return self.op("Conv", [x] + params, group=module.groups, **_conv_attrs(module))

    def add_channel_bias(self, module, x):
        """LearnableBias: x + b, b [1, C, 1, 1]."""
        bias = self.cached(
            ("shift", id(module)), lambda: self.initializer(to_array(module.bias), f"{self.module_name(module)}.bias")
        )
        return self.op("Add", [x, bias])

    def prelu(self, module, x):
        """nn.PReLU(C): slope stored [C, 1, 1] to broadcast over NCHW."""

        def make():
            name = f"{self.module_name(module)}.weight"
            if module.weight.numel() == 1:
                return self.initializer(to_array(module.weight).reshape(1), name)
            return self.channel_vector(to_array(module.weight), name)

        return self.op("PRelu", [x, self.cached(("prelu", id(module)), make)])

    def binarize_pack(self, x, shift=None):
        """[shift ->] sign -> bit-pack: float [N,C,H,W] -> uint8 [N,ceil(C/8),H,W] (ai.bimatting.BinarizePack)."""
        if shift is not None:
            x = self.add_channel_bias(shift, x)
        return self.custom("BinarizePack", [x])

    def binary_conv(self, module, packed, bn=None, mask=None, folded=None):
        """BiConv2d (+ conv bias, + following BN) on a packed input -> ai.bimatting.BinaryConv2d[Masked].

        uint8 [N,ceil(Cin/8),H,W] -> float [N,O,OH,OW]; with `mask` [N,1,OH,OW] exactly 0 where mask == 0.
        `folded` = (scale, bias) float32 [O] replaces the folded conv bias and BN (as BiConv2d's `output`).
        """

        def make():
            name = self.module_name(module)
            weight_packed, _ = binary_weights(module)
            scale, bias = folded_output(module, bn) if folded is None else folded  # what eval mode computes with
            return [
                self.initializer(weight_packed, f"{name}.weight_packed"),
                self.initializer(np.asarray(scale, np.float32), f"{name}.scale"),
                self.initializer(np.asarray(bias, np.float32), f"{name}.bias"),
            ]

        key = ("binary_conv", id(module), id(bn), folded is not None)
        inputs = [packed] + self.cached(key, make)
        attrs = dict(channels_in=module.in_channels, **_conv_attrs(module))
        if mask is not None:
            return self.custom("BinaryConv2dMasked", inputs + [mask], **attrs)
        return self.custom("BinaryConv2d", inputs, **attrs)

    def sequential(self, seq, x, mask=None):
        """Emit an nn.Sequential, left to right.

        LearnableBias + sign -> BinarizePack; BiConv2d [+ BN] -> BinaryConv2d (Masked when `mask` is
        given: computed where mask != 0, widened by the reach of later convs); Conv2d [+ BN] -> Conv;
        LearnableBias -> Add; PReLU, ReLU, Sigmoid, Tanh, Hardswish; AdaptiveAvgPool2d(1) -> GAP;
        a nested Sequential is walked in turn; any other module emits itself (its `emit_onnx(b, x)`).
        """
        layers = list(seq)
        index = 0
        while index < len(layers):
            layer = layers[index]
            after = layers[index + 1] if index + 1 < len(layers) else None
            kind = type(layer).__name__
            if kind == "LearnableBias" and type(after).__name__ == "BinaryActivation":
                x = self.binarize_pack(x, shift=layer)
                index += 2
                continue
            chain = chain_at(layers, index)
            if chain is not None:
                x = chain.emit_onnx(self, x, mask=self._conv_mask(mask, layers[index + 1 :]))
                index += chain.length
                continue
            if kind == "BinaryActivation":
                x = self.binarize_pack(x)
            elif isinstance(layer, nn.Conv2d):
                bn = after if isinstance(after, nn.BatchNorm2d) else None
                if is_binary_conv(layer):
                    x = self.binary_conv(layer, x, bn=bn, mask=self._conv_mask(mask, layers[index + 1 :]))
                else:
                    x = self.conv(layer, x, bn=bn)
                index += 2 if bn is not None else 1
                continue
            elif kind == "LearnableBias":
                x = self.add_channel_bias(layer, x)
            elif isinstance(layer, nn.PReLU):
                x = self.prelu(layer, x)
            elif isinstance(layer, nn.ReLU):
                x = self.op("Relu", [x])
            elif isinstance(layer, nn.Sigmoid):
                x = self.op("Sigmoid", [x])
            elif isinstance(layer, nn.Tanh):
                x = self.op("Tanh", [x])
            elif isinstance(layer, nn.Hardswish):
                x = self.hardswish(x)
            elif isinstance(layer, nn.AdaptiveAvgPool2d) and _is_global(layer):
                x = self.op("GlobalAveragePool", [x])
            elif isinstance(layer, nn.Sequential) and mask is None:
                x = self.sequential(layer, x)
            elif hasattr(layer, "emit_onnx") and (mask is None or getattr(layer, "elementwise", False)):
                x = layer.emit_onnx(self, x)
            else:
                raise ValueError(f"cannot export layer {kind} in {self.module_name(seq)}")
            index += 1
        return x

    def _conv_mask(self, mask, later_layers):
        """The mask of a masked binary conv, widened by the reach of the convs after it (None: dense)."""
        if mask is None:
            return None
        reach = _halo(later_layers)
        return mask if reach == 0 else self.op("MaxPool", [mask], kernel_shape=[2 * reach + 1] * 2, pads=[reach] * 4)

    def apply(self, module, x):
        """One module on x: a Sequential walked, a layer the walker knows, or the module's emit_onnx."""
        return self.sequential([module], x)

    def hardswish(self, x):
        """x * hardsigmoid(x) = x * clip(x / 6 + 1/2, 0, 1) (RVM's official decomposition)."""
        return self.op("Mul", [x, self.op("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)])

    def resize_by(self, x, ratio):
        """Bilinear resize by the downsample ratio: a value name (runtime [1] float32) or a float
        (baked in; 1.0 is the identity and emits no node)."""
        if isinstance(ratio, str):
            scales = self.op("Concat", [self.const([1.0, 1.0], np.float32), ratio, ratio], axis=0)
            return self.resize_scale(x, scales)
        if ratio == 1.0:
            return x
        return self.resize_scale(x, self.const([1.0, 1.0, ratio, ratio], np.float32))

    def upsample2_crop(self, x, like):
        """Bilinear x2 (align_corners=False), cropped to `like`'s H, W.  [N,C,h,w] -> [N,C,H,W]"""
        up = self.resize_scale(x, self.const([1.0, 1.0, 2.0, 2.0], np.float32))
        return self.crop_to(up, like)

    def expand_like(self, x, like):
        """x broadcast to `like`'s shape (a [1,1,1,1] zero state -> zeros [N,C,H,W])."""
        return self.op("Expand", [x, self.op("Shape", [like])])
