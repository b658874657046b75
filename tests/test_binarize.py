"""Binarization primitives: sign convention, STE gradients, binary conv vs the packed numpy reference."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from bimatting.binops import layout, reference as numpy_reference
from bimatting.models.bimatting.binarize import (
    BiConv2d,
    LearnableBias,
    binary_activation,
    sign,
    spread_binary_activation,
)
from bimatting.models.bimatting.units import binary_conv_unit


def test_sign_of_zero_is_plus_one_and_matches_the_numpy_sign():
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-45, -1e-45, 2.5, -2.5, float("inf"), float("-inf"), float("nan")])
    assert sign(x).tolist() == [1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, -1.0]
    np.testing.assert_array_equal(sign(x).numpy(), layout.sign(x.numpy()))
    noisy = torch.randn(4, 13, 5, 7, generator=torch.Generator().manual_seed(0))
    noisy[noisy.abs() < 0.3] = 0.0  # plenty of exact zeros
    np.testing.assert_array_equal(sign(noisy).numpy(), layout.sign(noisy.numpy()))
    np.testing.assert_array_equal(binary_activation(noisy).numpy(), layout.sign(noisy.numpy()))
    assert torch.sign(torch.tensor(0.0)).item() == 0.0  # why torch.sign is not used


def test_activation_ste_gradient_is_clipped_identity():
    # Points on both sides of and exactly at the clip edges +-1, and at 0.
    x = torch.tensor([-3.0, -1.0001, -1.0, -0.5, 0.0, 0.5, 1.0, 1.0001, 3.0], requires_grad=True)
    upstream = torch.arange(1.0, 10.0)
    (binary_activation(x) * upstream).sum().backward()
    documented = upstream * (x.detach().abs() <= 1).float()  # dq/dx = 1{|x| <= 1}
    reference = x.detach().clone().requires_grad_(True)
    (reference.clamp(-1.0, 1.0) * upstream).sum().backward()  # autograd of clamp(x, -1, 1)
    assert torch.equal(x.grad, documented)
    assert torch.equal(x.grad, reference.grad)


def test_spread_window_is_the_clamp_gradient_at_each_channels_spread():
    """spread_binary_activation: the forward is sign(x); the backward is autograd of
    clamp(x / s_c, -1, 1) with s_c = max(1, std_c(x)) held constant: a wide channel passes more
    inputs, each scaled down; a channel of spread <= 1 keeps the fixed window exactly."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 2, 4, 5, generator=gen)
    x[:, 0] *= 6.0  # wide: spread ~6
    x[:, 1] *= 0.4  # narrow: spread < 1, the fixed window
    x = x.requires_grad_(True)
    upstream = torch.randn(x.shape, generator=gen)
    q = spread_binary_activation(x)
    assert torch.equal(q, sign(x.detach()))
    (q * upstream).sum().backward()
    spread = x.detach().std(dim=(0, 2, 3), keepdim=True).clamp(min=1.0)
    reference = x.detach().clone().requires_grad_(True)
    ((reference / spread).clamp(-1.0, 1.0) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad, rtol=1e-6, atol=0)
    fixed = x.detach().clone().requires_grad_(True)
    (binary_activation(fixed) * upstream).sum().backward()
    assert torch.equal(x.grad[:, 1], fixed.grad[:, 1])
    wide = x.detach()[:, 0]
    assert (wide.abs() <= 1).float().mean() < 0.2 and (x.grad[:, 0] != 0).float().mean() > 0.5


@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (1, 1), (3, 2)])
def test_biconv_weight_gradient_is_clamp_gradient_through_centring(kernel_size, stride):
    gen = torch.Generator().manual_seed(kernel_size * 10 + stride)
    conv = BiConv2d(11, 6, kernel_size, stride, kernel_size // 2, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.9)  # some |w~| > 1
    x = sign(torch.randn(2, 11, 9, 10, generator=gen))
    out = conv(x)
    upstream = torch.randn(out.shape, generator=gen)
    (out * upstream).sum().backward()

    # Autograd of the documented backward formulation: conv with clamp(w - mean(w), -1, 1).
    w = conv.weight.detach().clone().requires_grad_(True)
    centred = w - w.mean(dim=(1, 2, 3), keepdim=True)
    ref_out = F.conv2d(x, centred.clamp(-1.0, 1.0), conv.bias.detach(), stride, kernel_size // 2)
    (ref_out * upstream).sum().backward()
    # Same math, written out: G = dL/dw_b; dL/dw = G*1{|w~|<=1} - mean_o(G*1{|w~|<=1}).
    grad_wb = torch.nn.grad.conv2d_weight(x, conv.weight.shape, upstream, stride, kernel_size // 2)
    masked = grad_wb * (centred.detach().abs() <= 1)
    documented = masked - masked.mean(dim=(1, 2, 3), keepdim=True)

    assert (centred.detach().abs() > 1).any() and (centred.detach().abs() <= 1).any()
    # Float32 sums of ~100 products in different orders: 1e-5 relative covers the rounding.
    torch.testing.assert_close(conv.weight.grad, w.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, documented, rtol=1e-5, atol=1e-5)
    # alpha is detached: the gradient of the forward value alpha*sign(w~) plays no part.
    assert conv.bias.grad is not None


@pytest.mark.parametrize(
    "cin,cout,k,stride,h,w",
    [
        (3, 4, 3, 1, 7, 9),  # channel count below one byte
        (13, 5, 3, 2, 8, 11),  # not a multiple of 8, stride 2, odd width
        (16, 8, 1, 1, 5, 5),  # exactly two bytes, 1x1
        (35, 16, 3, 1, 6, 10),  # decode0's 35 input channels
        (59, 7, 1, 2, 9, 9),  # decode1's 59 input channels, strided 1x1
    ],
)
def test_binary_conv_equals_alpha_times_packed_integer_conv(cin, cout, k, stride, h, w):
    gen = torch.Generator().manual_seed(cin * 100 + cout)
    conv = BiConv2d(cin, cout, k, stride, k // 2, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        conv.bias.copy_(torch.randn(cout, generator=gen))
    x = torch.randn(2, cin, h, w, generator=gen)
    x[:, :, 0, 0] = 0.0  # exact zeros must binarize to +1
    x_pm1 = binary_activation(x)
    with torch.no_grad():
        out = conv(x_pm1)
        w_sign, alpha = conv.binary_weight()
        centred = conv.weight - conv.weight.mean(dim=(1, 2, 3), keepdim=True)
        assert torch.equal(w_sign, sign(centred))
        torch.testing.assert_close(alpha, centred.abs().mean(dim=(1, 2, 3)))
        # +-1 operands, zero padding: the float conv is an exact integer (|sum| << 2^24).
        integer = F.conv2d(sign(x), w_sign, None, stride, k // 2)

        # The forward weights are exactly alpha * (+-1), the values an exporter packs.
        assert torch.equal(conv.quantized_weight(), alpha.view(-1, 1, 1, 1) * w_sign)

    packed = numpy_reference.binary_conv2d(
        layout.pack(x.numpy()), layout.pack(w_sign.numpy()), cin, strides=(stride, stride), pads=(k // 2, k // 2)
    )
    np.testing.assert_array_equal(integer.numpy().astype(np.int32), packed)
    # out = alpha * D + bias: float32 rounding of a product and a sum, relative 1e-6 of |D| <= 531.
    expected = alpha.view(1, -1, 1, 1) * torch.from_numpy(packed).float() + conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_learnable_bias_and_unit_layout():
    shift = LearnableBias(5)
    assert shift.bias.shape == (1, 5, 1, 1) and torch.count_nonzero(shift.bias) == 0
    unit = binary_conv_unit(10, 4, 3)
    keys = [
        key for key in unit.state_dict() if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    assert keys == ["0.bias", "2.weight", "3.weight", "3.bias", "4.bias", "5.weight"]
    assert not hasattr(unit[2], "channel_threshold")
    assert unit[5].weight.flatten().tolist() == [0.25] * 4  # nn.PReLU's default init, as official
