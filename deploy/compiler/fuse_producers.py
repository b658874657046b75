"""Element-wise producers fused into the convolution that alone reads them (a Relax pass between
FuseOps and FuseTIR).

Relax's FuseOps fuses element-wise consumers into a convolution (its output transform) but no
producer: what computes a conv's input is written out in full and read back. In the decoder's
exact float layers (fixed_point.IntegerChain) that input is `concat(relu(m), clip(m + 1, 0, 1))`,
twice the channels of m: at 512x288 each of decode0's two branches wrote 32 channels (19 MB) from
16 and read them back (2 x 1.4 ms for the producers alone, and the 1x1 conv bound by that read).

Here a fused producer function made of element-wise, broadcast and concatenate PrimFuncs, whose
result only one fused function reads, and that as the data of its convolution or pooling (the
first PrimFunc it calls, TVM's kOutEWiseFusable pattern), becomes part of that function. FuseTIR
then makes one PrimFunc of both, and schedules/fp.py's ConvNCHW computes the producer inside the
rows it builds for each output row (its zero padding): the same operations on the same elements,
so the same bits, with the wide intermediate never stored. Producers that move data further
(resizes, gathers) are left alone: inside a 3x3 conv's rows they would be recomputed three times.

A matmul (the exact projection heads, fixed_point.wide_conv1x1: a float64 MatMul over the
flattened pixels) takes such a producer on whichever operand it computes, and there a reshape
too: `cast(reshape(x))` to float64 was a pass writing the map out twice as wide (16.6 MB at
1920x1080) for the matmul to read back; schedules/channel_matmul.py reads x and widens it as it goes.

The bit-packing kernel (lowering.py's bpack) reads each element of its float input once. It takes
a producer of any injective kind, slices and interleaves included, where that producer writes
more than it reads: the decoder's upsample2 + concat with the frame, packed for the next binary
conv (35 channels at full resolution: 20.6 MB written and read back at 512x288).
schedules/pack_producers.py schedules the fused function. At 512x288, one thread, the network
gains 3.7 ms per frame (frame-interleaved), the same bits.
"""

import tvm
from tvm import relax, tirx

from bimatting.deploy.compiler.lowering import KERNEL_ATTR

PRIMITIVE = "Primitive"
OUT_ELEMWISE_FUSABLE = 4  # TVM's OpPatternKind kOutEWiseFusable (conv, pooling)
BROADCAST = 1  # kBroadcast; kElemWise is 0
INJECTIVE = 2  # kInjective
PRODUCER_KINDS = ("elementwise", "reshaping", "injective")  # each kind includes the ones before it
PACK_KERNEL = "bpack"  # lowering.py's float -> packed words kernel (its KERNEL_ATTR value)
CALL_TIR = "relax.call_tir"


def _call_tir_funcs(mod, func):
    """[(the PrimFunc's GlobalVar, its PrimFunc, the call)] of a fused function's bindings, or None
    where a binding is anything else."""
    calls = []
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not (isinstance(value, relax.Call) and getattr(value.op, "name", "") == CALL_TIR):
                return None
            callee = mod[value.args[0]]
            if not isinstance(callee, tirx.PrimFunc):
                return None
            calls.append((value.args[0], callee, value))
    return calls


def _producer_kind(mod, func):
    """What func may be fused as: "elementwise" (element-wise, broadcast and concatenate
    PrimFuncs), "reshaping" (those and reshapes), "injective" (any injective PrimFuncs: slices,
    interleaves), or None."""
    calls = _call_tir_funcs(mod, func)
    if not calls:
        return None
    kinds = ["elementwise"]
    for gvar, prim, _ in calls:
        pattern = int(prim.attrs.get("op_pattern", 99)) if prim.attrs is not None else 99
        if gvar.name_hint.startswith("reshape"):
            kinds.append("reshaping")
        elif pattern > INJECTIVE:
            return None
        elif pattern > BROADCAST and not gvar.name_hint.startswith("concatenate"):
            kinds.append("injective")
    return max(kinds, key=PRODUCER_KINDS.index)


def _data_inputs(mod, func):
    """[(index of a parameter of func, producer kinds it takes)]: the data that func's first
    PrimFunc (a conv, pooling or matmul) reads; [] for other functions."""
    calls = _call_tir_funcs(mod, func)
    if not calls:
        return []
    gvar, prim, call = calls[0]
    pattern = int(prim.attrs.get("op_pattern", 99)) if prim.attrs is not None else 99
    args = call.args[1].fields
    if pattern != OUT_ELEMWISE_FUSABLE or not args:
        return []

    def param_index(arg):
        return next((i for i, p in enumerate(func.params) if p.same_as(arg)), None)

    if gvar.name_hint.startswith("matmul"):
        indices = [param_index(a) for a in args]
        return [(i, ("elementwise", "reshaping")) for i in indices if i is not None]
    index = param_index(args[0])
    return [(index, ("elementwise",))] if index is not None else []


def _inline(bb, func, mapping):
    """Emit func's bindings (call_tir only) into bb with its variables renamed by mapping; its result."""
    for block in func.body.blocks:
        for binding in block.bindings:
            call = binding.value
            args = relax.Tuple([mapping.get(a, a) for a in call.args[1].fields])
            renamed = relax.Call(call.op, [call.args[0], args, *call.args[2:]], call.attrs, call.ty_args)
            mapping[binding.var] = bb.emit(renamed)
    return mapping[func.body.body]


def _merged(bb, producer, consumer, index, name):
    """A Primitive function computing consumer(..., producer(p...), ...) (producer in place of
    consumer's parameter `index`): parameters producer's, then consumer's others."""
    produced = [relax.Var(p.name, p.ty) for p in producer.params]
    kept = [p for i, p in enumerate(consumer.params) if i != index]
    consumed = [relax.Var(p.name, p.ty) for p in kept]
    with bb.function(name, produced + consumed, attrs={PRIMITIVE: True}, private=True):
        with bb.dataflow():
            data = _inline(bb, producer, dict(zip(producer.params, produced)))
            mapping = dict(zip(kept, consumed))
            mapping[consumer.params[index]] = data
            result = bb.emit_output(_inline(bb, consumer, mapping))
        gvar = bb.emit_func_output(result)
    return gvar


def _packs_float(mod, call):
    """Whether call is the bit-packing kernel (call_tir of a PrimFunc tagged "bpack"), whose first
    argument is the float tensor it reads once per element."""
    if not (isinstance(call, relax.Call) and getattr(call.op, "name", "") == CALL_TIR):
        return False
    callee = mod[call.args[0]]
    return (
        isinstance(callee, tirx.PrimFunc)
        and callee.attrs is not None
        and str(callee.attrs.get(KERNEL_ATTR, "")) == PACK_KERNEL
    )


def _elements(expr):
    shape = getattr(expr.ty, "shape", None)
    if not isinstance(expr.ty, relax.TensorType) or shape is None:
        return None
    count = 1
    for dim in shape:
        if not hasattr(dim, "value"):
            return None
        count *= int(dim.value)
    return count


def _expands(call, result):
    """Whether the producer call writes more elements than its tensor inputs hold (an upsample):
    there storing its result moves more memory than the pack recomputing each element it reads.
    A producer that does not expand stays apart: inlined into the pack's bit loop, its work is
    repeated for every pack variant (a 32-channel multiply-and-concat at 144x256 packed for two
    branches: 0.8 -> 1.15 ms fused)."""
    inputs = [_elements(arg) for arg in call.args]
    produced = _elements(result)
    return produced is not None and None not in inputs and produced > sum(inputs)


def _merged_pack(bb, producer, pack_call, name):
    """A Primitive function computing pack(producer(p...), others...): producer's parameters, then
    one per further argument of the pack call (its per-variant biases)."""
    produced = [relax.Var(p.name, p.ty) for p in producer.params]
    others = [relax.Var(f"pack_arg{i}", arg.ty) for i, arg in enumerate(pack_call.args[1].fields[1:])]
    with bb.function(name, produced + others, attrs={PRIMITIVE: True}, private=True):
        with bb.dataflow():
            data = _inline(bb, producer, dict(zip(producer.params, produced)))
            packed = relax.Call(
                pack_call.op,
                [pack_call.args[0], relax.Tuple([data] + others), *pack_call.args[2:]],
                pack_call.attrs,
                pack_call.ty_args,
            )
            result = bb.emit_output(bb.emit(packed))
        gvar = bb.emit_func_output(result)
    return gvar


def fuse_producers(mod):
    """mod with every cheap producer fused into the conv that alone reads it (module docstring)."""

    def fused_function(call):
        if not isinstance(call, relax.Call) or not isinstance(call.op, relax.GlobalVar):
            return None
        func = mod[call.op]
        return func if isinstance(func, relax.Function) and func.attrs is not None and PRIMITIVE in func.attrs else None

    bb = relax.BlockBuilder(mod)
    merged = {}
    for gvar, func in list(mod.functions_items()):
        if not isinstance(func, relax.Function) or (func.attrs is not None and PRIMITIVE in func.attrs):
            continue
        uses, producers, rewrites = {}, {}, {}
        for block in func.body.blocks:
            for binding in block.bindings:
                relax.analysis.post_order_visit(
                    binding.value,
                    lambda e: uses.__setitem__(e, uses.get(e, 0) + 1) if isinstance(e, relax.Var) else None,
                )
                producer = fused_function(binding.value)
                kind = _producer_kind(mod, producer) if producer is not None else None
                if kind is not None:
                    producers[binding.var] = (binding.value, kind)
        relax.analysis.post_order_visit(
            func.body.body, lambda e: uses.__setitem__(e, uses.get(e, 0) + 1) if isinstance(e, relax.Var) else None
        )
        for block in func.body.blocks:
            for binding in block.bindings:
                if _packs_float(mod, binding.value):
                    data = binding.value.args[1].fields[0]
                    if data in producers and uses.get(data) == 1 and _expands(producers[data][0], data):
                        made = producers[data][0]
                        key = (made.op, binding.value.args[0], 0)
                        if key not in merged:
                            name = _fresh_name(bb, f"{binding.value.args[0].name_hint}_after_{made.op.name_hint}")
                            merged[key] = _merged_pack(bb, mod[made.op], binding.value, name)
                        others = list(binding.value.args[1].fields[1:])
                        rewrites[binding.var] = relax.Call(merged[key], list(made.args) + others)
                    continue
                consumer = fused_function(binding.value)
                if consumer is None:
                    continue
                args = binding.value.args
                fusable = [
                    i
                    for i, kinds in _data_inputs(mod, consumer)
                    if args[i] in producers and uses.get(args[i]) == 1 and producers[args[i]][1] in kinds
                ]
                if not fusable:
                    continue
                index = fusable[0]
                made = producers[args[index]][0]
                key = (made.op, binding.value.op, index)
                if key not in merged:
                    name = _fresh_name(bb, f"{made.op.name_hint}_into_{binding.value.op.name_hint}")
                    merged[key] = _merged(bb, mod[made.op], consumer, index, name)
                others = [a for i, a in enumerate(binding.value.args) if i != index]
                rewrites[binding.var] = relax.Call(merged[key], list(made.args) + others)
        if rewrites:
            bb.update_func(gvar, _rewritten(func, rewrites))
    return relax.transform.DeadCodeElimination()(bb.get()) if merged else mod


def _fresh_name(bb, name):
    taken = {g.name_hint for g in bb.get().get_global_vars()}
    return next(
        f"{name}_{i}" if i else name for i in range(len(taken) + 1) if (f"{name}_{i}" if i else name) not in taken
    )


def _rewritten(func, rewrites):
    blocks = []
    for block in func.body.blocks:
        bindings = [relax.VarBinding(b.var, rewrites[b.var]) if b.var in rewrites else b for b in block.bindings]
        blocks.append(
            relax.DataflowBlock(bindings) if isinstance(block, relax.DataflowBlock) else relax.BindingBlock(bindings)
        )
    return relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty, func.is_pure, func.attrs)


def fuse_producers_pass():
    return tvm.transform.module_pass(
        lambda mod, _ctx: fuse_producers(mod), opt_level=0, name="bimatting.FuseProducersIntoConvs"
    )
