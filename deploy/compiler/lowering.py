"""Binary ops -> TIR PrimFuncs (unscheduled) and Relax `call_tir` calls.

Each PrimFunc carries the attribute `bimatting.kernel` (its kind) so the build pipeline finds it
and applies the target's schedule (schedules/__init__.py), and `op_pattern = kOpaque` so Relax's
operator fusion leaves it whole: its output transform is already fused by construction.
"""

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, te

from bimatting.binops import layout as bit_layout
from bimatting.deploy.compiler.kernels import bitserial, int64_shape, pair_dot, params as kparams

KERNEL_ATTR = "bimatting.kernel"
OPAQUE = 8  # relax OpPatternKind::kOpaque
OUT_ELEMWISE_FUSABLE = 4  # kOutEWiseFusable: fuses its element-wise consumers, as a conv2d does


def _prim_func(tensors, kind):
    func = te.create_prim_func(tensors).without_attr("global_symbol")  # named when added to a module
    return func.with_attrs({KERNEL_ATTR: kind, "op_pattern": OPAQUE, "tirx.noalias": True})


def pack_func(shape, layout, with_bias=False):
    """float32 NCHW `shape` (+ per-variant, per-channel bias [V, C]) -> packed words `layout`.
    x's shape is int64 like a legalized Relax op's output, so fuse_producers.py can merge the
    function computing x into the pack (FuseTIR maps both buffers onto one tensor)."""
    x = te.placeholder(int64_shape(shape), "float32", name="x")
    bias = te.placeholder((layout.variants, shape[1]), "float32", name="bias") if with_bias else None
    return _prim_func([x] + ([bias] if with_bias else []) + [bitserial.pack_activations(x, layout, bias)], "bpack")


def repack_func(shape, channels, layout):
    """ONNX packed uint8 [N, ceil(C/8), H, W] -> packed words `layout`."""
    x8 = te.placeholder(tuple(shape), "uint8", name="x8")
    return _prim_func([x8, bitserial.repack_bytes(x8, channels, layout)], "brepack")


def binarize_pack_func(shape):
    x = te.placeholder(tuple(shape), "float32", name="x")
    return _prim_func([x, bitserial.binarize_pack_bytes(x)], "binarize_pack")


def unpack_func(shape, channels):
    x8 = te.placeholder(tuple(shape), "uint8", name="x8")
    return _prim_func([x8, bitserial.unpack_bytes(x8, channels)], "unpack")


@dataclass
class ConvOperands:
    """numpy constants of one binary convolution (kernels/params.py), in call order."""

    weights: np.ndarray  # [KH, KW, CW, Op] words
    base: np.ndarray  # [row classes, col classes, Op] int32: K_all + border correction
    steps: np.ndarray  # [S, Op] float32 operands of the output transform
    row_class: np.ndarray  # [OH] int32: part of the kernel's code, like `kinds`
    col_class: np.ndarray  # [OW] int32
    kinds: tuple  # S step kinds ("mul", "add", "prelu"): part of the kernel's code

    def arrays(self):
        """The kernel's constant arguments, in call order."""
        return [self.weights, self.base, self.steps]


def scale_bias(scale, bias):
    """The output transform of BinaryConv2d itself: scale * D + bias."""
    return [("mul", scale), ("add", bias)]


def conv_operands(w_packed, geometry, kernel_config, epilogue):
    """Pre-pack weights and tables for `kernel_config` (schedules/x86|aarch64); `epilogue` is a list of
    (kind, per-channel values) steps, e.g. scale_bias(scale, bias) + [("prelu", slope)]."""
    g = geometry
    out_padded = bit_layout.ceil_div(g.channels_out, kernel_config.out_granule) * kernel_config.out_granule
    weights = kparams.weight_words(w_packed, g.channels_in, kernel_config.word_dtype, out_padded)
    row_class, col_class, corr = kparams.border_classes(w_packed, g)
    kinds, steps = kparams.epilogue_operands(epilogue, g.channels_out, out_padded)
    return ConvOperands(weights, kparams.exact_base(corr, g, out_padded), steps, row_class, col_class, kinds)


def conv_func(batch, geometry, layout, operands, masked=False, variant=0):
    """PrimFunc (packed, weights, base, steps[, mask][, residual]) -> float32
    [N, O, OH, OW]; the conv reads pack variant `variant` of `layout`; a residual input (float32
    [N, O, OH, OW]) where the epilogue has a "residual" step."""
    g = geometry
    packed = te.placeholder(layout.shape(batch), layout.word_dtype, name="packed")
    names = ("weights", "base", "steps")
    weights, base, steps = [te.placeholder(a.shape, str(a.dtype), name=n) for a, n in zip(operands.arrays(), names)]
    mask = te.placeholder((batch, 1, g.out_height, g.out_width), "float32", name="mask") if masked else None
    residual = (
        te.placeholder((batch, g.channels_out, g.out_height, g.out_width), "float32", name="residual")
        if "residual" in operands.kinds
        else None
    )
    pop = bitserial.popcount_conv(packed, weights, g, layout, variant)
    out = bitserial.output_transform(
        pop,
        base,
        operands.row_class,
        operands.col_class,
        steps=steps,
        kinds=operands.kinds,
        geometry=g,
        mask=mask,
        residual=residual,
    )
    args = [packed, weights, base, steps] + ([mask] if masked else [])
    args += ([residual] if residual is not None else []) + [out]
    return _prim_func(args, "bconv")


# --- Relax ---------------------------------------------------------------------------------------


def _call(bb, func, name, args, out_shape, out_dtype):
    gvar = bb.add_func(func, name)  # the build names symbols after the (deduplicated) gvar
    return bb.emit(relax.call_tir(gvar, args, relax.TensorType(tuple(out_shape), out_dtype)))


def static_shape(expr):
    shape = expr.ty.shape
    try:
        return tuple(int(d) for d in shape)
    except TypeError as error:
        raise ValueError(f"binary ops need static shapes, got {shape}") from error


def emit_pack(bb, x, layout, from_bytes_channels=None, bias=None):
    """Relax: float NCHW (+ `bias`, numpy [V, C]: one row per pack variant) or ONNX uint8 packed
    (with `from_bytes_channels`) -> packed words."""
    shape = static_shape(x)
    args = [x]
    if from_bytes_channels is not None:
        func, name = repack_func(shape, from_bytes_channels, layout), "brepack"
    else:
        func, name = pack_func(shape, layout, with_bias=bias is not None), "bpack"
        if bias is not None:
            args.append(relax.const(tvm.runtime.tensor(np.asarray(bias, np.float32).reshape(layout.variants, -1))))
    return _call(bb, func, name, args, layout.shape(shape[0]), layout.word_dtype)


def emit_conv(bb, packed, layout, geometry, *, operands, mask=None, variant=0, residual=None):
    """Relax: packed words (variant `variant` of `layout`) -> float32 NCHW output of the binary
    convolution (+ `residual` where the epilogue has that step)."""
    g = geometry
    batch = static_shape(packed)[0]
    func = conv_func(batch, g, layout, operands, masked=mask is not None, variant=variant)
    args = [packed] + [relax.const(tvm.runtime.tensor(a)) for a in operands.arrays()]
    args += [mask] if mask is not None else []
    args += [residual] if residual is not None else []
    return _call(bb, func, "bconv", args, (batch, g.channels_out, g.out_height, g.out_width), "float32")


def emit_steps(bb, x, steps, residual):
    """Relax ops for epilogue `steps` ([(kind, per-channel values)]) applied to x, in order (the
    ONNX graph's own element-wise ops; a residual of another shape broadcasts as ONNX's Add)."""
    for kind, values in steps:
        if kind == "residual":
            x = bb.emit(relax.op.add(x, residual))
            continue
        channel = relax.const(tvm.runtime.tensor(np.asarray(values, np.float32).reshape(1, -1, 1, 1)))
        if kind == "mul":
            x = bb.emit(relax.op.multiply(x, channel))
        elif kind == "add":
            x = bb.emit(relax.op.add(x, channel))
        else:
            slope = relax.const(tvm.runtime.tensor(np.asarray(values, np.float32).reshape(-1)))
            x = bb.emit(relax.op.nn.prelu(x, slope, axis=1))
    return x


def pair_conv_func(shape, words_shape, pads):
    """float32 m `shape` (int64 dims like a legalized op's), int32 weight words -> int32 pair conv
    (kernels/pair_dot.py). An ordinary conv to Relax's fusion and to schedules/conv_nchw.py."""
    m = te.placeholder(int64_shape(shape), "float32", name="m")
    words = te.placeholder(int64_shape(words_shape), "int32", name="w")
    func = te.create_prim_func([m, words, pair_dot.pair_conv(m, words, pads)]).without_attr("global_symbol")
    return func.with_attrs({"op_pattern": OUT_ELEMWISE_FUSABLE, "tirx.noalias": True})


def emit_pair_conv(bb, m, words, step, pads):
    """Relax: float32 m -> float32 conv([relu(m), clip(m + 1, 0, 1)]) as float32(pair conv) * step,
    step [O] the per-channel 2^-e of the integer weights (integer_pairs.py)."""
    func = pair_conv_func(static_shape(m), words.shape, pads)
    out = tuple(int(d) for d in func.params[-1].shape)
    acc = _call(bb, func, "pair_conv", [m, relax.const(tvm.runtime.tensor(words))], out, "int32")
    scale = relax.const(tvm.runtime.tensor(np.asarray(step, np.float32).reshape(1, -1, 1, 1)))
    return bb.emit(relax.op.multiply(bb.emit(relax.op.astype(acc, "float32")), scale))


def emit_binarize_pack(bb, x):
    shape = static_shape(x)
    out = (shape[0], bit_layout.packed_channels(shape[1]), shape[2], shape[3])
    return _call(bb, binarize_pack_func(shape), "binarize_pack", [x], out, "uint8")


def emit_unpack(bb, x8, channels):
    shape = static_shape(x8)
    return _call(bb, unpack_func(shape, channels), "unpack", [x8], (shape[0], channels) + shape[2:], "float32")
