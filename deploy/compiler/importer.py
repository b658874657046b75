"""ONNX -> Relax: standard ops through TVM's frontend, `ai.bimatting` ops through our converters.

    mod = import_onnx(model, shapes, kernel_config)   # kernel_config: schedules.kernel_config_for(target)

The model first goes through graph_rewrite.rewrite (domain check, BinarizePack -> BinaryConv2d
recognition, output-transform fusion), then, for targets whose kernels have the int16 pair dot
product (AVX-512 VNNI), integer_pairs.rewrite. TVM 0.27's frontend has no hook for custom ops, so the
converters of the private `Bimatting*` op types are added by swapping the frontend's converter
map for the duration of one import only (`_scoped_converters`, restored in `finally`, under a
lock); nothing outlives the call.
"""

import contextlib
import threading
import warnings

import tvm
from onnx import numpy_helper

from bimatting.binops.geometry import INTS_PER_GEOMETRY, ConvGeometry
from bimatting.binops.layout import packed_channels, packed_weight_shape
from bimatting.deploy.compiler import fold, graph_rewrite, integer_pairs, lowering
from bimatting.deploy.compiler.kernels.bitserial import PackLayout
from bimatting.errors import InputError

_LOCK = threading.Lock()


def _tensor_attr(attr, name):
    value = attr.get(name)
    return None if value is None else numpy_helper.to_array(value)


def _make_converters(kernel_config):
    """Converter classes bound to one import (`kernel_config` and the pack layouts of this model)."""
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter  # noqa: PLC0415 - the frontend loads on use

    packs = {}  # group id -> (layout, height, width)

    class PackWords(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            shape = lowering.static_shape(inputs[0])
            channels = int(attr["channels_in"])
            from_bytes = bool(attr["from_bytes"])
            expected = packed_channels(channels) if from_bytes else channels
            if shape[1] != expected:
                raise InputError(
                    f"binary conv input has {shape[1]} channels, its channels_in={channels} "
                    f"needs {expected}{' packed bytes' if from_bytes else ''}"
                )
            ints = list(attr["consumers"])
            geoms = [
                ConvGeometry.from_ints(ints[i : i + INTS_PER_GEOMETRY], shape[2], shape[3], channels, 1)
                for i in range(0, len(ints), INTS_PER_GEOMETRY)
            ]
            layout = PackLayout.covering(geoms, kernel_config.word_dtype, int(attr.get("variants", 1)))
            packs[int(attr["group"])] = (layout, shape[2], shape[3])
            return lowering.emit_pack(
                bb, inputs[0], layout, channels if from_bytes else None, _tensor_attr(attr, "bias")
            )

    class BinaryConv(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            layout, height, width = packs[int(attr["group"])]
            weights = _tensor_attr(attr, "weights")
            g = ConvGeometry.from_ints(attr["geometry"], height, width, int(attr["channels_in"]), weights.shape[0])
            if weights.shape != packed_weight_shape(g.channels_out, g.channels_in, g.kernel):
                raise InputError(
                    f"BinaryConv2d weights {weights.shape} do not match channels_in="
                    f"{g.channels_in}, kernel_shape={list(g.kernel)}"
                )
            kinds = [k.decode() if isinstance(k, bytes) else str(k) for k in attr["epilogue_kinds"]]
            epilogue = list(zip(kinds, _tensor_attr(attr, "epilogue_values")))
            mask = inputs[1] if int(attr["masked"]) else None
            residual = inputs[2 if mask is not None else 1] if "residual" in kinds else None
            batch = lowering.static_shape(inputs[0])[0]
            out_shape = (batch, g.channels_out, g.out_height, g.out_width)
            if mask is not None and lowering.static_shape(mask) != (batch, 1, g.out_height, g.out_width):
                raise InputError(
                    f"BinaryConv2dMasked mask has shape {lowering.static_shape(mask)}, expected "
                    f"[N, 1, {g.out_height}, {g.out_width}]"
                )
            later = []
            if residual is not None and lowering.static_shape(residual) != out_shape:  # a broadcasting Add
                cut = kinds.index("residual")
                epilogue, later = epilogue[:cut], epilogue[cut:]
            operands = lowering.conv_operands(weights, g, kernel_config, epilogue)
            out = lowering.emit_conv(
                bb,
                inputs[0],
                layout,
                g,
                operands=operands,
                mask=mask,
                variant=int(attr.get("variant", 0)),
                residual=residual if not later else None,
            )
            return lowering.emit_steps(bb, out, later, residual) if later else out

    class BinarizePack(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            return lowering.emit_binarize_pack(bb, inputs[0])

    class Unpack(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            return lowering.emit_unpack(bb, inputs[0], int(attr["channels"]))

    class PairConv(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            return lowering.emit_pair_conv(
                bb, inputs[0], _tensor_attr(attr, "weights"), _tensor_attr(attr, "step"), [int(p) for p in attr["pads"]]
            )

    return {
        "BimattingPackWords": PackWords,
        "BimattingBinaryConv": BinaryConv,
        "BimattingBinarizePack": BinarizePack,
        "BimattingUnpack": Unpack,
        integer_pairs.PAIR_OP: PairConv,
    }


@contextlib.contextmanager
def _scoped_converters(extra):
    """TVM's converter map plus `extra` inside the block only."""
    import tvm.relax.frontend.onnx.onnx_frontend as frontend  # noqa: PLC0415 - TVM's ONNX frontend loads on use

    with _LOCK:
        original = frontend._get_convert_map
        frontend._get_convert_map = lambda: {**original(), **extra}
        try:
            yield
        finally:
            frontend._get_convert_map = original


def import_onnx(model, shapes, kernel_config, constants=None):
    """Relax IRModule of `model` with static input `shapes` ({name: [dims]}).

    `constants` ({input name: array}) binds graph inputs to values (e.g. downsample_ratio).
    Raises InputError naming the operators TVM cannot import.
    """
    from tvm.relax.frontend.onnx import from_onnx  # noqa: PLC0415 - TVM's ONNX frontend loads on use

    if constants:
        model = graph_rewrite.bind_inputs(model, constants)
    model = fold.gathers_as_slices(fold.fold_shape_arithmetic(model, shapes))
    rewritten, _ = graph_rewrite.rewrite(model)
    if getattr(kernel_config, "pair_dot", False):
        rewritten, _ = integer_pairs.rewrite(rewritten)
    with _scoped_converters(_make_converters(kernel_config)), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ONNX checker does not know the private domain
        try:
            return from_onnx(rewritten, shape_dict={k: list(v) for k, v in shapes.items()})
        except tvm.error.OpNotImplemented as error:
            raise InputError(
                f"cannot compile this model: {error}; TVM 0.27's ONNX frontend lacks "
                "these operators (re-export without them)"
            ) from None


def output_shapes(mod):
    """Static shapes of the outputs of `main` (tuple order)."""
    ret = mod["main"].ret_type if hasattr(mod["main"], "ret_type") else mod["main"].ty.ret
    fields = ret.fields if hasattr(ret, "fields") else [ret]
    return [tuple(int(d) for d in f.shape) if f.shape is not None else None for f in fields]


def graph_io(model, bound=()):
    """(inputs, outputs) of an ONNX model as [(name, dims or names, elem type)], skipping `bound`."""

    def dims(value):
        return [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value.type.tensor_type.shape.dim
        ]

    inits = {t.name for t in model.graph.initializer}
    inputs = [
        (i.name, dims(i), i.type.tensor_type.elem_type)
        for i in model.graph.input
        if i.name not in inits and i.name not in bound
    ]
    outputs = [(o.name, dims(o), o.type.tensor_type.elem_type) for o in model.graph.output]
    return inputs, outputs
