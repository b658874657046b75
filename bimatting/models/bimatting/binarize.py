"""Binarization primitives of BiMatting (Larq-style: forward and STE gradient written as math).

Conventions are those of `bimatting.binops` (the torch-free contract every other part follows):
sign(x) = +1 for x >= 0, -1 otherwise; a binary conv sees a +-1 tensor padded with zeros.

    sign(x)            the torch twin of bimatting.binops.layout.sign (NOT torch.sign, which maps 0 to 0)
    binary_activation  sign with the clipped straight-through estimator (Bi-Real / ReActNet)
    BinaryActivation   module wrapper of binary_activation (keeps the official Sequential indices)
    BiConv2d           nn.Conv2d with centred, scaled, binarized weights (ReActNet / BiMatting)
    LearnableBias      per-channel shift; before sign it is RSign, around PReLU it is RPReLU
    rprelu             bias -> PReLU -> bias (ReActNet's RPReLU); emit_rprelu its ONNX nodes
    folded_output      a binary conv's output transform (alpha, conv bias, BN) as the exported op holds it
(the sequential container and the standard unit built from these are in units.py)

Eval mode computes what is deployed: a binary conv is the exact integer dot product D of +-1
tensors, then D * scale + bias with the float32 (scale, bias) of `folded_output`, the two
roundings of the exported op (bimatting.binops: BinaryConv2d). PyTorch, onnxruntime and the
compiled kernels then give the same bits before every sign, which a binary network needs: a
last-bit difference at a value near 0 flips a sign and the flip spreads through later layers.

Source of the formulas: ReActNet (Liu et al., ECCV 2020) and BiMatting (Qin et al., NeurIPS
2023, htqin/BiMatting `model/mobilenet.py`); sign(0) = +1 follows Larq / LCE.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def sign(x):
    """sign(x) = +1 if x >= 0 else -1, same dtype as x (matches bimatting.binops.layout.sign exactly, NaN -> -1)."""
    # sign(sign(x) + 1/2): torch.sign gives 0 for +-0 (and NaN), which + 1/2 sends to +1; NaN is made
    # -1 first. Arithmetic, not torch.where(x >= 0, 1, -1): on CPU the bool mask and where cost
    # ~10x an element-wise float op (bench/train_speed.py).
    return torch.sign(torch.nan_to_num(x, nan=-1.0)).add_(0.5).sign_()


class _SignSTE(torch.autograd.Function):
    """Forward and backward of `binary_activation` (see its docstring)."""

    @staticmethod
    def forward(ctx, x):
        if ctx.needs_input_grad[0]:  # none in evaluation: no window to keep
            ctx.save_for_backward(ste_window(x))
        return sign(x)

    @staticmethod
    def backward(ctx, grad_output):
        (window,) = ctx.saved_tensors
        return grad_output * window


def ste_window(x, limit=1.0):
    """1{|x| <= limit} as 0/1 in x's dtype: min(sign(limit - |x|) + 1, 1) (exact near |x| = limit);
    `limit` a number or a tensor broadcast to x.
    A float window is 4x a bool mask's memory, but multiplying by it is ~25x faster than torch.where
    on a bool mask on CPU."""
    return x.abs().neg_().add_(limit).sign_().add_(1).clamp_(max=1)


def binary_activation(x):
    r"""Binary activation with the clipped straight-through estimator.

    Forward:   q = sign(x) = +1 if x >= 0 else -1            (sign(0) = +1; bit 1 encodes -1)
    Backward:  dq/dx = 1{|x| <= 1}                             (the gradient of clamp(x, -1, 1))

    The official code uses torch.sign (sign(0) = 0, a third value no 1-bit kernel can hold);
    zero has measure zero during training, so the gradient is unchanged and we use +1.
    """
    return _SignSTE.apply(x)


class _ScaledSignSTE(torch.autograd.Function):
    """alpha * sign(w~) forward, gradient of clamp(w~, -1, 1) backward (none for the detached alpha).

    Written as a Function rather than the `clip + (q - clip).detach()` trick so that the forward
    value is exactly alpha * (+-1), the numbers an exporter packs."""

    @staticmethod
    def forward(ctx, centred, alpha):
        ctx.save_for_backward(centred)
        return alpha * sign(centred)

    @staticmethod
    def backward(ctx, grad_output):
        (centred,) = ctx.saved_tensors
        return grad_output * ste_window(centred).to(grad_output.dtype), None


class _SpreadSignSTE(torch.autograd.Function):
    """Forward and backward of `spread_binary_activation` (see its docstring)."""

    @staticmethod
    def forward(ctx, x):
        if ctx.needs_input_grad[0]:
            channels = [d for d in range(x.dim()) if d != 1]
            spread = x.detach().std(dim=channels, keepdim=True).clamp_(min=1.0)  # s_c >= 1
            ctx.save_for_backward(ste_window(x, spread).div_(spread))  # 1{|x| <= s} / s
        return sign(x)

    @staticmethod
    def backward(ctx, grad_output):
        (window,) = ctx.saved_tensors
        return grad_output * window


def spread_binary_activation(x):
    r"""Binary activation whose straight-through window follows each channel's spread.

    Forward:   q = sign(x)                                     (as binary_activation)
    Backward:  dq/dx = 1{|x| <= s_c} / s_c,   s_c = max(1, std_c(x))   (std over batch and space)
    the gradient of clamp(x / s_c, -1, 1) with s_c held constant. Where a sign's input spreads
    far past 1 (deep blocks: 4-5 % of their inputs inside |x| <= 1 during training, training/README),
    the fixed window passes gradient to a few inputs at full strength; this one passes it to the
    inputs within one spread, scaled down by it. A channel of spread <= 1 keeps the fixed window.
    """
    return _SpreadSignSTE.apply(x)


class BinaryActivation(nn.Module):
    """Module form of `binary_activation`: [*] -> [*] in {-1, +1}. `window = "spread"` (set by the
    training recipe, bimatting.train.recipe.set_ste_window) uses `spread_binary_activation` while
    training; the forward value is the same either way."""

    window = "fixed"

    def forward(self, x):
        if self.window == "spread" and self.training:
            return spread_binary_activation(x)
        return binary_activation(x)


class BiConv2d(nn.Conv2d):
    r"""Convolution with binarized weights; the input is expected to be +-1 already.

    Per output channel o (means over c, kh, kw):
        w~_o    = w_o - mean(w_o)                    (centring)
        alpha_o = mean(|w~_o|)                       (scale, detached: no gradient)
    Forward:   y = conv(x, alpha * sign(w~)) + bias, zero padding of the +-1 input
    Backward:  dL/dw = J^T (dL/dw_b * 1{|w~| <= 1}), the gradient of clamp(w~, -1, 1)
               back through the centring (J = I - 1/n: it also flows into mean(w)).

    Zero padding is the official semantics (a padded tap adds 0 to the dot product); the deploy
    kernels pad with +1 bits and add the border correction derived in bimatting.binops.reference
    (deploy/compiler/kernels/params.py evaluates it per class of border rows and columns).

    The official class also owns a `channel_threshold` parameter [1, Cin, 1, 1] that forward never
    reads (9,184 dead parameters in the whole network). It is dropped here; checkpoints that carry
    it load with those keys ignored (see BiMatting.load_state_dict).
    """

    binary = True  # exporters find every binary conv by isinstance(m, BiConv2d) or this tag
    # False only in step 1 of ReActNet's two-step training (bimatting.train.recipe): real weights,
    # binary activations. Inference and export always binarize.
    binarize_weights = True

    def centred_weight(self):
        """w~ = w - mean over (Cin, KH, KW) per output channel: [O, Cin, KH, KW]."""
        return self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)

    def binary_weight(self):
        """(sign(w~) as +-1 float [O, Cin/g, KH, KW], alpha [O]), both detached: what an exporter packs."""
        with torch.no_grad():
            centred = self.centred_weight()
            return sign(centred), centred.abs().mean(dim=(1, 2, 3))

    def quantized_weight(self):
        """alpha * sign(w~) in the forward pass, with the clamp(w~) gradient in the backward pass."""
        centred = self.centred_weight()
        alpha = centred.abs().mean(dim=(1, 2, 3), keepdim=True).detach()
        return _ScaledSignSTE.apply(centred, alpha)

    def forward(self, x, bn=None, output=None):
        # [N, Cin, H, W] (+-1) -> [N, O, OH, OW]; eval mode only: `bn` the BatchNorm folded in, or
        # `output` = (scale, bias) float32 [O] given (D * scale + bias; see fixed_point.IntegerChain)
        if not self.training and self.binarize_weights:
            return self.folded(x, bn, output)
        weight = self.quantized_weight() if self.binarize_weights else self.weight
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def folded(self, x, bn, output=None):
        """Eval: BN(conv(x)) (bn None: conv(x)) as the deployed op computes it, D * scale + bias."""
        sign_weight, _ = self.binary_weight()
        dot = F.conv2d(x, sign_weight, None, self.stride, self.padding, self.dilation, self.groups)  # exact
        output = folded_output(self, bn) if output is None else output
        scale, bias = (torch.from_numpy(np.asarray(v, np.float32)).to(x.device).view(1, -1, 1, 1) for v in output)
        return dot * scale + bias


def _array(tensor):
    return tensor.detach().cpu().numpy()


def bn_affine(bn):
    """(a, b) float64 [C] with BN(x) = a * x + b in eval mode."""
    var = _array(bn.running_var).astype(np.float64)
    mean = _array(bn.running_mean).astype(np.float64)
    gamma = _array(bn.weight).astype(np.float64) if bn.weight is not None else np.ones_like(var)
    beta = _array(bn.bias).astype(np.float64) if bn.bias is not None else np.zeros_like(var)
    a = gamma / np.sqrt(var + bn.eps)
    return a, beta - mean * a


def folded_output(conv, bn=None):
    """(scale, bias) float32 [O] of a BiConv2d followed by `bn` (or None), so that
    bn(conv(x)) = D * scale + bias with D the integer dot product of the +-1 operands:
        scale = alpha * a,  bias = b + b_conv * a     (BN(v) = a * v + b; a = 1, b = 0 without BN)
    Folded in float64, rounded once to float32: the exporter writes these values and eval mode
    computes with them."""
    _, alpha = conv.binary_weight()
    scale, bias = _array(alpha).astype(np.float64), np.zeros(conv.out_channels)
    if conv.bias is not None:
        bias = _array(conv.bias).astype(np.float64)
    if bn is not None:
        a, b = bn_affine(bn)
        scale, bias = scale * a, b + bias * a
    return scale.astype(np.float32), bias.astype(np.float32)


def binary_conv_bn(conv, bn, x):
    """bn(conv(x)) for a BiConv2d and its BatchNorm2d; eval mode folds them (`BiConv2d.folded`)."""
    if not conv.training and conv.binarize_weights and not bn.training:
        return conv(x, bn=bn)  # through the module: hooks (profile, probes) still see the conv
    return bn(conv(x))


class LearnableBias(nn.Module):
    """x + b with one learnable shift per channel (initialised to 0): [N, C, H, W] -> [N, C, H, W].

    Before sign it learns the threshold (ReActNet's RSign); around a PReLU it makes RPReLU.
    """

    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        return x + self.bias


def rprelu(x, shift_in, prelu, shift_out):
    """ReActNet's RPReLU: shift_out(PReLU(shift_in(x))), each shift a LearnableBias."""
    return shift_out(prelu(shift_in(x)))


def emit_rprelu(b, x, shift_in, prelu, shift_out):
    """rprelu as ONNX nodes (`b`: export's layers.Builder): Add -> PRelu -> Add."""
    return b.add_channel_bias(shift_out, b.prelu(prelu, b.add_channel_bias(shift_in, x)))
