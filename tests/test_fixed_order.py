"""Operations that every runtime must compute to the same bits (bimatting/models/bimatting/fixed_order.py,
the eval-mode stem and folded binary convs, deploy's float_order pass).

Each is checked twice: against the textbook operation it replaces (torch's own, within float
rounding: the function did not change), and bit for bit between PyTorch and onnxruntime running
the emitted nodes (the reason it exists). A sign reads these values; a last-bit difference there
flips decisions in one runtime and not in another.
"""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tvm
from onnx import TensorProto, helper
from torch import nn
from torch.nn import functional as F
from tvm import te

from bimatting.deploy.compiler.float_order import fence_products
from bimatting.export.layers import Builder
from bimatting.models.bimatting import fixed_order
from bimatting.models.bimatting.bimobilenet import INPUT_GRID, STEM_WEIGHT_LIMIT, Stem, snap_to_grid
from bimatting.models.bimatting.binarize import BiConv2d, folded_output


def run_onnx(emit, x, optimized=True):
    """Emit nodes for one input with export's Builder and run them in onnxruntime."""
    b = Builder(18, name="t")
    b.inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape)))
    y = emit(b, "x")
    b.nodes.append(helper.make_node("Identity", [y], ["y"]))
    b.outputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    model = b.model()
    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.numpy()})[0]


def activations(*shape, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen) * scale


@pytest.mark.parametrize("height,width", [(8, 12), (9, 7), (1, 5), (17, 30)])
def test_average_pool2_is_the_ceil_mode_average_and_the_same_bits_in_onnxruntime(height, width):
    x = activations(2, 5, height, width)
    ours = fixed_order.average_pool2(x)
    torch.testing.assert_close(ours, nn.AvgPool2d(2, 2, ceil_mode=True)(x), rtol=0, atol=2e-6)
    np.testing.assert_array_equal(run_onnx(fixed_order.emit_average_pool2, x), ours.numpy())


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_average_pool2_of_even_sizes_has_avg_pool2ds_bits_and_gradient(memory_format):
    """Even sizes take a faster path (views and adds, a custom backward): the same forward bits
    as the two-tap F.avg_pool2d chain, and the same gradient (each pixel gets dL/dy / 4)."""
    x = activations(3, 4, 8, 12, seed=2).to(memory_format=memory_format).requires_grad_(True)
    reference = x.detach().clone().requires_grad_(True)
    upstream = activations(3, 4, 4, 6, seed=3)
    rows = F.avg_pool2d(reference, (1, 2), (1, 2), ceil_mode=True, count_include_pad=False)
    expected = F.avg_pool2d(rows, (2, 1), (2, 1), ceil_mode=True, count_include_pad=False)
    ours = fixed_order.average_pool2(x)
    assert torch.equal(ours, expected)
    (ours * upstream).sum().backward()
    (expected * upstream).sum().backward()
    assert torch.equal(x.grad, reference.grad)
    assert torch.equal(x.grad[:, :, 1::2, ::2], upstream / 4)


@pytest.mark.parametrize("height,width", [(4, 6), (5, 3), (1, 1), (17, 30)])
def test_upsample2_is_bilinear_x2_and_the_same_bits_in_onnxruntime(height, width):
    x = activations(1, 4, height, width, seed=1)
    ours = fixed_order.upsample2(x)
    reference = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=0, atol=4e-6)
    np.testing.assert_array_equal(run_onnx(fixed_order.emit_upsample2, x), ours.numpy())


def test_tanh_and_sigmoid_are_within_a_few_ulp_and_the_same_bits_in_onnxruntime():
    x = torch.cat([torch.linspace(-20, 20, 40001), activations(3000, seed=2)]).reshape(1, 1, 1, -1)
    for module, reference in ((fixed_order.Tanh(), torch.tanh), (fixed_order.Sigmoid(), torch.sigmoid)):
        ours = module(x)
        torch.testing.assert_close(ours, reference(x), rtol=0, atol=6e-7)
        np.testing.assert_array_equal(run_onnx(module.emit_onnx, x), ours.numpy())
    x.requires_grad_(True)
    fixed_order.Tanh()(x).sum().backward()  # trainable: the gradient is tanh's
    inside = x.detach().abs() < 7
    torch.testing.assert_close(x.grad[inside], (1 - torch.tanh(x.detach()) ** 2)[inside], rtol=0, atol=1e-5)


def test_global_average_pool_is_the_mean_and_the_same_bits_in_onnxruntime():
    x = activations(2, 64, 17, 30, seed=3, scale=10.0)
    pool = fixed_order.GlobalAveragePool()
    ours = pool(x)
    torch.testing.assert_close(ours, x.mean(dim=(2, 3), keepdim=True), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(run_onnx(pool.emit_onnx, x), ours.numpy())


def trained_stem(seed=4):
    gen = torch.Generator().manual_seed(seed)
    stem = Stem(3, 16)
    with torch.no_grad():
        stem.conv1.weight.copy_(torch.randn(stem.conv1.weight.shape, generator=gen) * 0.3)
        stem.bn1.running_mean.copy_(torch.randn(16, generator=gen))
        stem.bn1.running_var.copy_(torch.rand(16, generator=gen) + 0.5)
        stem.bn1.weight.copy_(torch.randn(16, generator=gen))
        stem.bn1.bias.copy_(torch.randn(16, generator=gen))
    return stem


def test_eval_stem_is_integer_exact_close_to_training_and_the_same_bits_in_onnxruntime():
    stem = trained_stem()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    weight, _, centre = stem.integer_weights(mean, std)
    assert np.array_equal(centre, np.round(centre)) and np.abs(centre).max() <= INPUT_GRID
    # every weight an integer of at most STEM_WEIGHT_LIMIT times one power of 2 per output channel
    for w in weight.astype(np.float64):
        step = np.abs(w).max() / STEM_WEIGHT_LIMIT
        exponent = np.floor(np.log2(np.abs(w[w != 0]))).min() - 10
        units = w / 2.0**exponent
        assert np.array_equal(units, np.round(units)) and step > 0
        assert np.abs(w / 2.0 ** np.ceil(np.log2(step))).max() <= STEM_WEIGHT_LIMIT
    # 8-bit pixels, then a 1/4 bilinear downsample: the grid keeps both exactly
    gen = torch.Generator().manual_seed(5)
    pixels = torch.randint(0, 256, (1, 3, 64, 96), generator=gen).float() / 255
    for image in (pixels, F.interpolate(pixels, scale_factor=0.25, mode="bilinear", align_corners=False)):
        n = torch.round(image * INPUT_GRID)
        assert torch.equal(snap_to_grid(image) * INPUT_GRID, n) or torch.allclose(snap_to_grid(image), image, atol=1e-7)
    stem.eval()
    ours = stem(pixels, mean, std)
    stem.train()
    with torch.no_grad():
        stem.bn1.eval()
        textbook = stem.bn1(stem.conv1((pixels - mean) / std))
    # Per output channel, 27 taps: each weight off by at most step/2 times |n - M| <= 1020, and
    # at the border a padded tap's centre M is within 1/2 of INPUT_GRID * mean.
    steps = 2.0 ** np.ceil(np.log2(np.abs(weight).max(axis=(1, 2, 3)) / STEM_WEIGHT_LIMIT))
    bound = torch.from_numpy(27 * steps * (INPUT_GRID / 2 + STEM_WEIGHT_LIMIT / 2)).float().view(1, -1, 1, 1)
    assert bool(((ours - textbook).abs() <= bound).all())
    assert (ours - textbook).abs().mean() <= 2 / STEM_WEIGHT_LIMIT * textbook.abs().mean()  # ~ one step
    np.testing.assert_array_equal(run_onnx(lambda b, x: stem.emit_onnx(b, x, mean, std), pixels), ours.detach().numpy())


def test_eval_binary_conv_computes_the_exported_output_transform():
    gen = torch.Generator().manual_seed(6)
    conv = BiConv2d(24, 8, 3, 1, 1, bias=True)
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        conv.bias.copy_(torch.randn(8, generator=gen))
        bn.running_mean.copy_(torch.randn(8, generator=gen))
        bn.running_var.copy_(torch.rand(8, generator=gen) + 0.5)
    x = torch.where(torch.randn(2, 24, 9, 11, generator=gen) >= 0, 1.0, -1.0)
    conv.eval(), bn.eval()
    scale, bias = folded_output(conv, bn)
    sign_weight, _ = conv.binary_weight()
    dot = F.conv2d(x, sign_weight, None, 1, 1)
    assert torch.equal(dot, torch.round(dot))  # the integer dot product, exact
    expected = dot * torch.from_numpy(scale).view(1, -1, 1, 1) + torch.from_numpy(bias).view(1, -1, 1, 1)
    assert torch.equal(conv.folded(x, bn), expected)
    conv.train(), bn.train()
    textbook = bn.eval()(conv(x))
    torch.testing.assert_close(expected, textbook, rtol=1e-5, atol=1e-5)


def test_the_float_order_pass_keeps_both_roundings_of_a_multiply_add():
    n = 1 << 14
    a, b, c = (te.placeholder((n,), "float32", name) for name in "abc")
    y = te.compute((n,), lambda i: a[i] * b[i] + c[i] * a[i], "y")
    func = fence_products(te.create_prim_func([a, b, c, y]))
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target({"kind": "llvm", "mcpu": "native"}))
    rng = np.random.default_rng(7)
    values = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    out = tvm.runtime.empty((n,), "float32")
    lib["main"](*(tvm.runtime.tensor(v) for v in values), out)
    two_roundings = values[0] * values[1] + values[2] * values[0]  # numpy: each op rounded
    np.testing.assert_array_equal(out.numpy(), two_roundings)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 512 / 960, 512 / 1920, 0.375])
def test_resize_by_is_rvms_bilinear_resize_and_the_same_bits_in_onnxruntime(ratio):
    gen = torch.Generator().manual_seed(8)
    x = torch.randint(0, 256, (1, 3, 54, 96), generator=gen).float() / 255
    ours = fixed_order.resize_by(x, ratio)
    reference = F.interpolate(x, scale_factor=ratio, mode="bilinear", align_corners=False, recompute_scale_factor=False)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=0, atol=2e-5)  # coordinates /r vs *(1/r)
    np.testing.assert_array_equal(run_onnx(lambda b, v: fixed_order.emit_resize_by(b, v, ratio), x), ours.numpy())
