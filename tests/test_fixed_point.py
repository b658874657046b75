"""fixed_point.py: decode0's float convs computed exactly, the heads summed in float64, the refiner's
box filter and gray channel in one order: close to the float layers, the same bits in onnxruntime,
and (the point) the same bits whatever order a runtime sums in."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bimatting.models.bimatting import fixed_order
from bimatting.models.bimatting.binarize import BiConv2d, BinaryActivation, LearnableBias
from bimatting.models.bimatting.fixed_point import EXACT_LIMIT, chain_at, emit_wide_conv1x1, wide_conv1x1
from bimatting.models.bimatting.units import BinarySequential
from test_fixed_order import activations, run_onnx


def output_branch(in_channels=35, channels=16, kernel=3, seed=7):
    """decode0's branch (bias, sign, BiConv, BN, ReLU, float conv, BN, ReLU) with trained-like numbers."""
    gen = torch.Generator().manual_seed(seed)
    seq = BinarySequential(
        LearnableBias(in_channels),
        BinaryActivation(),
        BiConv2d(in_channels, channels, kernel, 1, kernel // 2, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, kernel, 1, kernel // 2, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
    )
    with torch.no_grad():
        for module in seq.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.1)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(channels, generator=gen))
                module.running_var.copy_(torch.rand(channels, generator=gen) + 0.5)
                module.weight.copy_(torch.randn(channels, generator=gen))  # some negative: sigma = -1
                module.bias.copy_(torch.randn(channels, generator=gen))
    return seq.eval()


def coarsest_power_of_two_step(values):
    """The largest 2^e of which every value is an integer multiple."""
    exponent = np.floor(np.log2(np.abs(values).max()))
    while not np.array_equal(values / 2.0**exponent, np.round(values / 2.0**exponent)):
        exponent -= 1
    return 2.0**exponent


@pytest.mark.parametrize("kernel", [3, 1])
def test_integer_chain_is_exact_in_any_order_close_to_the_float_layers_and_the_same_in_onnxruntime(kernel):
    seq = output_branch(kernel=kernel)
    chain = chain_at(list(seq), 2)
    assert chain is not None and chain_at(list(seq), 0) is None
    weight, _ = chain.integer_weights()
    _, whole, fraction, _ = chain.threshold_form()
    assert np.array_equal(whole, np.round(whole)) and (fraction > 0).all() and (fraction <= 1).all()
    fan_in = seq[2].weight[0].numel()
    largest = np.concatenate([np.maximum(fan_in + whole.astype(np.float64), 0), np.ones(16)])
    for w in weight.astype(np.float64):  # integers times one power of 2; partial sums below 2^24
        step = coarsest_power_of_two_step(w)
        assert (np.abs(w / step) * largest[:, None, None]).sum() < EXACT_LIMIT
        assert np.abs(w / step).max() >= 2**9  # and not coarser than needed: 10 bits or more

    x = activations(2, 35, 13, 17, seed=8)
    with torch.no_grad():
        ours = seq(x)
        float_layers = nn.Sequential(*list(seq)).eval()(x)  # BN after each conv, the float conv in float32
        # exact in any order: the same conv summed in float64 (other order, no rounding) gives the same bits
        sign_x = torch.where(x + seq[0].bias >= 0, 1.0, -1.0)
        m = seq[2](sign_x, output=(chain.threshold_form()[0], whole))
        n_and_a = torch.cat([F.relu(m), (m + 1).clamp(0, 1)], 1)
        wide = F.conv2d(n_and_a.double(), torch.from_numpy(weight).double(), padding=kernel // 2)
        assert torch.equal(wide, wide.float().double())  # the float64 sum is a float32 value: no rounding anywhere
    # the weights' rounding only: a relative 2^-10 of each output channel's largest weight, or finer
    scale = float_layers.abs().max()
    assert (ours - float_layers).abs().max() <= 2e-3 * scale, float((ours - float_layers).abs().max() / scale)
    for optimized in (True, False):
        np.testing.assert_array_equal(run_onnx(lambda b, v: b.sequential(seq, v), x, optimized), ours.numpy())


def test_wide_conv1x1_is_the_float64_sum_rounded_once_and_the_same_in_onnxruntime():
    gen = torch.Generator().manual_seed(9)
    conv = nn.Conv2d(16, 4, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
    x = F.relu(activations(2, 16, 11, 9, seed=10))
    with torch.no_grad():
        ours = wide_conv1x1(conv, x)
        exact = (
            np.einsum("oc,nchw->nohw", conv.weight.double().numpy()[:, :, 0, 0], x.double().numpy())
            + conv.bias.double().numpy()[None, :, None, None]
        )
        np.testing.assert_array_equal(ours.numpy(), exact.astype(np.float32))
        torch.testing.assert_close(ours, conv(x), rtol=1e-5, atol=1e-5)
    for optimized in (True, False):
        np.testing.assert_array_equal(run_onnx(lambda b, v: emit_wide_conv1x1(b, conv, v), x, optimized), ours.numpy())


def test_the_refiners_box_filter_and_gray_are_their_float_layers_in_one_order():
    gen = torch.Generator().manual_seed(11)
    weight = (torch.rand(4, 1, 3, 3, generator=gen) * 0.2).float()
    x = activations(1, 4, 10, 14, seed=12)
    ours = fixed_order.depthwise3x3(x, weight)
    torch.testing.assert_close(ours, F.conv2d(x, weight, padding=1, groups=4), rtol=1e-5, atol=1e-5)
    in_order = torch.zeros_like(x)
    padded = F.pad(x, (1, 1, 1, 1))
    for i in range(3):
        for j in range(3):
            in_order = (
                in_order + weight[:, 0, i, j].view(1, -1, 1, 1) * padded[..., i : i + 10, j : j + 14]
                if (i, j) != (0, 0)
                else weight[:, 0, 0, 0].view(1, -1, 1, 1) * padded[..., :10, :14]
            )
    assert torch.equal(ours, in_order)  # row-major, each product rounded, then each sum
    np.testing.assert_array_equal(
        run_onnx(lambda b, v: fixed_order.emit_depthwise3x3(b, v, weight.numpy(), "box"), x), ours.numpy()
    )
    image = torch.rand(1, 3, 6, 5, generator=gen)
    gray = fixed_order.channel_mean3(image)
    third = np.float32(1 / 3)
    expected = (image[:, 0:1].numpy() + image[:, 1:2].numpy() + image[:, 2:3].numpy()) * third
    np.testing.assert_array_equal(gray.numpy(), expected)
    torch.testing.assert_close(gray, image.mean(1, keepdim=True))
    np.testing.assert_array_equal(run_onnx(lambda b, v: fixed_order.emit_channel_mean3(b, v), image), gray.numpy())
