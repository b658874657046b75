"""Operations written so that every runtime computes the same float32 bits.

A binary network is only as reproducible as the values its signs read: a last-bit difference at
a value near 0 flips a sign, and the flip spreads through later layers and the recurrent state.
Each function here has a torch forward and its ONNX emitter side by side, built from steps
whose rounding no runtime can choose: two-term sums (a + b is correctly rounded, whatever the
order), scaling by powers of two (exact), and no sum of three or more floats whose order a
runtime may pick.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ONNX_INT64, ONNX_DOUBLE = 7, 11  # onnx.TensorProto element types (models do not import onnx)


def average_pool2(x):
    """2x2 average, stride 2, ceil_mode (an odd last row or column averages its real pixels):
        y = ((x00 + x01) / 2 + (x10 + x11) / 2) / 2
    as two 2-tap averages, along the width then along the height. [N, C, H, W] -> [N, C, ceil(H/2), ceil(W/2)]
    (nn.AvgPool2d(2, 2, ceil_mode=True) sums four values in an order each runtime picks.)"""
    if x.dim() == 4 and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0:
        return _EvenAveragePool2.apply(x)
    rows = F.avg_pool2d(x, (1, 2), (1, 2), ceil_mode=True, count_include_pad=False)
    return F.avg_pool2d(rows, (2, 1), (2, 1), ceil_mode=True, count_include_pad=False)


class _EvenAveragePool2(torch.autograd.Function):
    """average_pool2 of an even-sized [N, C, H, W] with the same bits, from views of x: on CPU,
    F.avg_pool2d's kernel and its backward cost ~10x and ~3x these adds (bench/train_speed.py).

    Forward:  y = ((x00 + x01) * 1/2 + (x10 + x11) * 1/2) * 1/2   (as avg_pool2d's two-tap means)
    Backward: dL/dx_ij = dL/dy / 4 for each of the four pixels (exact: powers of two)."""

    @staticmethod
    def forward(ctx, x):
        n, c, h, w = x.shape
        pairs = x.view(n, c, h, w // 2, 2)
        rows = ((pairs[..., 0] + pairs[..., 1]) * 0.5).view(n, c, h // 2, 2, w // 2)
        return (rows[:, :, :, 0] + rows[:, :, :, 1]) * 0.5

    @staticmethod
    def backward(ctx, grad_output):
        quarter = grad_output * 0.25
        return quarter.repeat_interleave(2, dim=3).repeat_interleave(2, dim=2)


def emit_average_pool2(b, x):
    """average_pool2 as two ONNX AveragePool nodes of two taps each (`b`: export's layers.Builder)."""
    rows = b.op("AveragePool", [x], kernel_shape=[1, 2], strides=[1, 2], ceil_mode=1, count_include_pad=0)
    return b.op("AveragePool", [rows], kernel_shape=[2, 1], strides=[2, 1], ceil_mode=1, count_include_pad=0)


def average2(a, b):
    """(a + b) / 2: one rounding, the same in every runtime."""
    return (a + b) * 0.5


def _shifted(x, axis):
    """(x[i-1], x[i+1]) along `axis`, the edges repeated (align_corners=False clamps there)."""
    n = x.shape[axis]
    first, last = x.narrow(axis, 0, 1), x.narrow(axis, n - 1, 1)
    return (torch.cat([first, x.narrow(axis, 0, n - 1)], axis), torch.cat([x.narrow(axis, 1, n - 1), last], axis))


def _upsample2_axis(x, axis):
    previous, following = _shifted(x, axis)
    even = average2(x, average2(previous, x))  # 3/4 x[i] + 1/4 x[i-1]
    odd = average2(x, average2(x, following))  # 3/4 x[i] + 1/4 x[i+1]
    shape = list(x.shape)
    shape[axis] *= 2
    return torch.stack([even, odd], axis + 1).reshape(shape)


def upsample2(x):
    """Bilinear x2 (align_corners=False): [N, C, h, w] -> [N, C, 2h, 2w], each output
        y[2i] = (x[i] + (x[i-1] + x[i]) / 2) / 2 = 3/4 x[i] + 1/4 x[i-1]   (and x[i+1] for y[2i+1])
    along the width, then the height: only 2-term averages. (A Resize weighs 3/4 and 1/4 with
    products whose rounding, and whose fusing into FMAs, each runtime picks.)"""
    return _upsample2_axis(_upsample2_axis(x, 3), 2)


def _emit_average2(b, a, c):
    return b.op("Mul", [b.op("Add", [a, c]), b.const(0.5, np.float32)])


def _emit_upsample2_axis(b, x, axis):
    def part(start, end):
        return b.op("Slice", [x, b.const([start]), b.const([end]), b.const([axis])])

    big = np.iinfo(np.int64).max
    previous = b.op("Concat", [part(0, 1), part(0, -1)], axis=axis)
    following = b.op("Concat", [part(1, big), part(-1, big)], axis=axis)
    even = _emit_average2(b, x, _emit_average2(b, previous, x))
    odd = _emit_average2(b, x, _emit_average2(b, x, following))
    after = b.const([axis + 1])
    pair = b.op("Concat", [b.op("Unsqueeze", [even, after]), b.op("Unsqueeze", [odd, after])], axis=axis + 1)
    shape = b.op("Concat", [b.shape_slice(x, 0, axis), b.const([-1]), b.shape_slice(x, axis + 1, 4)], axis=0)
    return b.op("Reshape", [pair, shape])


def emit_upsample2(b, x):
    """upsample2 as ONNX nodes (Slice, Concat, Add, Mul by 0.5, Reshape)."""
    return _emit_upsample2_axis(b, _emit_upsample2_axis(b, x, 3), 2)


class GlobalAveragePool(nn.Module):
    """[N, C, H, W] -> [N, C, 1, 1]: the mean summed in float64, rounded once to float32.

    A float64 sum of float32 values whose exponents span less than 29 bits minus log2(H*W) is
    exact in any order; beyond that the order shows only at 2^-53, below float32's last bit.
    (A float32 sum of hundreds of values differs in the last bits between runtimes.)"""

    def forward(self, x):
        return x.double().mean(dim=(2, 3), keepdim=True).float()

    def emit_onnx(self, b, x):
        wide = b.op("Cast", [x], to=ONNX_DOUBLE)
        mean = b.op("ReduceMean", [wide, b.const([2, 3])], keepdims=1)
        return b.op("Cast", [mean], to=b.FLOAT)


# tanh(x) ~ x P(x^2) / Q(x^2) on |x| <= 7.90531 (clamped outside, where tanh is 1 in float32), the
# float32 rational approximation of Eigen's generic_fast_tanh_float (about 2 ulp).
TANH_CLAMP = 7.90531110763549805
TANH_P = (
    -2.76076847742355e-16,
    2.00018790482477e-13,
    -8.60467152213735e-11,
    5.12229709037114e-08,
    1.48572235717979e-05,
    6.37261928875436e-04,
    4.89352455891786e-03,
)  # x^12 ... x^0 of P
TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)  # x^6 ... x^0


def _horner(t, coefficients, constant):
    value = constant(coefficients[0])
    for c in coefficients[1:]:
        value = value * t + constant(c)
    return value


class Tanh(nn.Module):
    """tanh from +, *, / only, evaluated in one fixed order: the same bits in every runtime (library
    tanh and sigmoid are each runtime's own approximation). Differentiable; used in training too."""

    elementwise = True  # the exporter may apply it after a masked conv

    def forward(self, x):
        x = x.clamp(-TANH_CLAMP, TANH_CLAMP)
        t = x * x

        def const(c):
            return torch.tensor(c, dtype=x.dtype, device=x.device)

        return x * _horner(t, TANH_P, const) / _horner(t, TANH_Q, const)

    def emit_onnx(self, b, x):
        x = b.op("Clip", [x, b.const(-TANH_CLAMP, np.float32), b.const(TANH_CLAMP, np.float32)])
        t = b.op("Mul", [x, x])

        def horner(coefficients):
            value = b.const(coefficients[0], np.float32)
            for c in coefficients[1:]:
                value = b.op("Add", [b.op("Mul", [value, t]), b.const(c, np.float32)])
            return value

        return b.op("Div", [b.op("Mul", [x, horner(TANH_P)]), horner(TANH_Q)])


class Sigmoid(nn.Module):
    """sigmoid(x) = tanh(x / 2) / 2 + 1/2 with the fixed-order Tanh (halving is exact)."""

    elementwise = True

    def __init__(self):
        super().__init__()
        self.tanh = Tanh()

    def forward(self, x):
        return self.tanh(x * 0.5) * 0.5 + 0.5

    def emit_onnx(self, b, x):
        half = b.const(0.5, np.float32)
        return b.op("Add", [b.op("Mul", [self.tanh.emit_onnx(b, b.op("Mul", [x, half])), half]), half])


def _ratio32(ratio):
    return torch.tensor(float(ratio), dtype=torch.float32)


def _resize_axis(x, axis, ratio):
    length = x.shape[axis]
    size = int(torch.floor(torch.tensor(float(length), dtype=torch.float32) * ratio))
    position = ((torch.arange(size, dtype=torch.float32) + 0.5) / ratio - 0.5).clamp_min(0.0)
    floor = torch.floor(position)
    weight = (position - floor).to(x.device)
    first = floor.long().clamp_max(length - 1)
    second = (first + 1).clamp_max(length - 1)
    a, b = x.index_select(axis, first.to(x.device)), x.index_select(axis, second.to(x.device))
    shape = [1] * x.ndim
    shape[axis] = size
    return a + (b - a) * weight.view(shape)


def resize_by(x, ratio):
    """Bilinear resize by `ratio` (align_corners=False, RVM's size floor(L * ratio)): [N, C, H, W]
    -> [N, C, floor(H r), floor(W r)], along the width then the height, every step one float32
    operation in a fixed order (r in float32, as the graph's input holds it):
        p = max((i + 1/2) / r - 1/2, 0),  j = floor(p),  y[i] = x[j] + (x[j+1] - x[j]) * (p - j)
    with j + 1 clamped to the last pixel. (A Resize computes its coordinates and weights each
    runtime's own way: the last bits of the image then differ before the network's first sign.)"""
    r = _ratio32(ratio)
    return _resize_axis(_resize_axis(x, 3, r), 2, r)


def _emit_resize_axis(b, x, axis, ratio):
    f32, i64 = b.FLOAT, ONNX_INT64
    length = b.op("Gather", [b.op("Shape", [x]), b.const(axis)], axis=0)  # scalar int64
    size = b.op("Cast", [b.op("Floor", [b.op("Mul", [b.op("Cast", [length], to=f32), ratio])])], to=i64)
    index = b.op("Cast", [b.op("Range", [b.const(0), size, b.const(1)])], to=f32)
    position = b.op(
        "Sub", [b.op("Div", [b.op("Add", [index, b.const(0.5, np.float32)]), ratio]), b.const(0.5, np.float32)]
    )
    position = b.op("Max", [position, b.const(0.0, np.float32)])
    floor = b.op("Floor", [position])
    weight = b.op("Sub", [position, floor])
    last = b.op("Sub", [length, b.const(1)])
    first = b.op("Min", [b.op("Cast", [floor], to=i64), last])
    second = b.op("Min", [b.op("Add", [first, b.const(1)]), last])
    a, c = b.op("Gather", [x, first], axis=axis), b.op("Gather", [x, second], axis=axis)
    if axis == 2:
        weight = b.op("Unsqueeze", [weight, b.const([1])])  # [h', 1]
    return b.op("Add", [a, b.op("Mul", [b.op("Sub", [c, a]), weight])])


def emit_resize_by(b, x, ratio):
    """resize_by as ONNX nodes; `ratio` a value name (runtime float32 scalar or [1]) or a float."""
    if not isinstance(ratio, str):
        ratio = b.const(float(ratio), np.float32)
    ratio = b.op("Reshape", [ratio, b.const([], np.int64)]) if isinstance(ratio, str) else ratio
    return _emit_resize_axis(b, _emit_resize_axis(b, x, 3, ratio), 2, ratio)


def channel_mean3(x):
    """mean over 3 channels as ((x0 + x1) + x2) * float32(1/3): [N, 3, H, W] -> [N, 1, H, W]."""
    third = torch.tensor(1.0 / 3.0, dtype=x.dtype, device=x.device)
    return (x[:, 0:1] + x[:, 1:2] + x[:, 2:3]) * third


def emit_channel_mean3(b, x):
    """channel_mean3 as ONNX nodes (Split, Add, Add, Mul)."""
    r, g, blue = b.op("Split", [x, b.const([1, 1, 1])], n_out=3, axis=1)
    return b.op("Mul", [b.op("Add", [b.op("Add", [r, g]), blue]), b.const(1.0 / 3.0, np.float32)])


def depthwise3x3(x, weight):
    """Depthwise 3x3 conv, zero padding 1, stride 1 (the guided filter's box): [N, C, H, W] ->
    [N, C, H, W], with weight [C, 1, 3, 3] summed tap by tap in row-major order,
        y = (...((w00 x00 + w01 x01) + w02 x02) + ...) + w22 x22
    each product rounded, then each sum (a depthwise Conv orders its nine terms each runtime's way)."""
    height, width = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    total = None
    for i in range(3):
        for j in range(3):
            term = weight[:, 0, i, j].view(1, -1, 1, 1) * padded[..., i : i + height, j : j + width]
            total = term if total is None else total + term
    return total


def emit_depthwise3x3(b, x, weight, name):
    """depthwise3x3 as ONNX nodes (Pad, Slice, Mul, Add); `weight` [C, 1, 3, 3] float32 (initializers
    `name`.tap<i><j>, shared by every call with the same name)."""
    taps = b.cached(
        ("depthwise3x3", name),
        lambda: [b.channel_vector(weight[:, 0, i, j], f"{name}.tap{i}{j}") for i in range(3) for j in range(3)],
    )
    padded = b.op("Pad", [x, b.const([0, 0, 1, 1, 0, 0, 1, 1])])
    total = None
    for i in range(3):
        for j in range(3):
            ends = [i - 2 if i < 2 else np.iinfo(np.int64).max, j - 2 if j < 2 else np.iinfo(np.int64).max]
            window = b.op("Slice", [padded, b.const([i, j]), b.const(ends), b.const([2, 3])])
            term = b.op("Mul", [taps[3 * i + j], window])
            total = term if total is None else b.op("Add", [total, term])
    return total
