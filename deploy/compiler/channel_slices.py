"""Channel slices moved up to the tensors they come from (a Relax pass before legalization).

The refiner ends with `out = upsample(A) * concat(src, gray) + upsample(b)` at full resolution,
4 channels, then splits `out` into fgr (3) and pha (1), each clamped (fgr after adding src). The
split's parts are slices of `out`, and Relax fuses nothing across a tensor that two functions
read, so at 1920x1080 `out` (33 MB) was written by one function and read back by two more.

A slice along the channel axis commutes with every per-channel operation:

    out[:, b:e]  =  upsample(A[:, b:e]) * concat(src, gray)[:, b:e] + upsample(b[:, b:e])

so where every reader of a tensor takes channel slices, each slice is computed from slices of the
operands instead: on through an operand only that operation reads, and stopping at an operand
something else also reads, which is sliced where it is smaller than the result (a resize's
low-resolution input). Where that slice would copy a tensor as large as the result, nothing
moves (a copy at full size is no better than the stored tensor). Each part then fuses from the
low-resolution operands to its clamp, and `out` is never stored. Same values, bit for bit: the
same float operations on the same elements, in the same order.

The slices of one tensor move together or not at all: were one to move and another stay, the
tensor would still be computed for the one that stays, and the moved part computed again. So each
function is visited twice, the first time only to find the tensors with a slice that cannot move.
"""

import functools

CHANNEL = 1
ELEMENTWISE = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum")
RESIZE = "relax.image.resize2d"
CONCAT = "relax.concat"
SLICE = "relax.strided_slice"


def _ints(expr):
    try:
        return [int(v.value) if hasattr(v, "value") else int(v) for v in expr]
    except (TypeError, ValueError):
        return None


def _channels(expr):
    shape = getattr(expr.ty, "shape", None)
    if shape is None or len(shape) != 4 or not hasattr(shape[CHANNEL], "value"):
        return None
    return int(shape[CHANNEL].value)


def channel_slice(call):
    """(begin, end) when `call` is a unit-stride slice of a 4-D tensor along channels only, else None."""
    if not (hasattr(call, "op") and getattr(call.op, "name", "") == SLICE) or len(call.args) < 4:
        return None
    axes, begin, end = (_ints(a) for a in call.args[1:4])
    strides = _ints(call.args[4]) if len(call.args) > 4 else [1]
    channels = _channels(call.args[0])
    if axes != [CHANNEL] or strides != [1] or begin is None or end is None or channels is None:
        return None
    b, e = (min(max(v + channels if v < 0 else v, 0), channels) for v in (begin[0], end[0]))
    return (b, e) if b < e else None


class _NotWorthIt(Exception):
    pass


def _elements(expr):
    shape = getattr(expr.ty, "shape", None)
    count = 1
    for dim in shape if shape is not None else [None]:
        if not hasattr(dim, "value"):
            return 1 << 62
        count *= int(dim.value)
    return count


def _readers(func):
    """{var: [(the binding var that reads it, or None for the function's result; whether that
    read is the data of a channel slice)]} over the bindings of `func`."""
    from tvm import relax

    readers = {}

    def note(expr, reader):
        if isinstance(expr, relax.Call) and channel_slice(expr) is not None:
            if isinstance(expr.args[0], relax.Var):
                readers.setdefault(expr.args[0], []).append((reader, True))
            return
        found = []
        relax.analysis.post_order_visit(expr, lambda e: found.append(e) if isinstance(e, relax.Var) else None)
        for var in found:
            readers.setdefault(var, []).append((reader, False))

    for block in func.body.blocks:
        for binding in block.bindings:
            note(binding.value, binding.var)
    note(func.body.body, None)
    return readers


def push_channel_slices(mod):
    """Every channel slice of a tensor read only through channel slices, computed from slices
    of its operands (module docstring); the rest of `mod` unchanged."""
    from tvm import relax

    mod = relax.transform.CanonicalizeBindings()(mod)  # x = y aliases (a folded `where`) gone
    pusher = _pusher_class()
    for gvar, func in list(mod.functions_items()):
        if isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
            readers = _readers(func)
            trial = pusher(mod, readers, stays=set())
            trial.visit_expr(func)  # its result is discarded: it only fills trial.stays
            mod[gvar] = pusher(mod, readers, stays=trial.stays).visit_expr(func)
    return relax.transform.DeadCodeElimination()(mod)


@functools.lru_cache(maxsize=None)
def _pusher_class():
    from tvm import relax

    @relax.expr_functor.mutator
    class Pusher(relax.PyExprMutator):
        def __init__(self, mod, readers, stays):
            super().__init__(mod)
            self.readers = readers
            self.stays = stays  # sources with a slice that cannot move: none of their slices moves
            self.made = {}  # (var, begin, end) -> its slice, computed once
            self.reading_size = 0

        def visit_call_(self, op):
            call = super().visit_call_(op)
            bounds = channel_slice(call)
            source = call.args[0] if bounds is not None else None
            if not isinstance(source, relax.Var) or not all(sliced for _, sliced in self.readers.get(source, [])):
                return call  # read by something else too: it is computed anyway, the slice stays
            value = self.lookup_binding(source)
            if not isinstance(value, relax.Call) or source in self.stays:
                return call
            self.reading_size = _elements(value)
            try:
                pushed = self.through(value, *bounds)
            except _NotWorthIt:
                pushed = None  # what it emitted is dead code, dropped below
            if pushed is None:
                self.stays.add(source)
                return call
            return pushed

        def through(self, call, begin, end):
            """call's result [:, begin:end] as an expression on slices of its operands, or None
            where call is not a per-channel operation."""
            name = getattr(call.op, "name", "")
            channels = _channels(call)
            if name in ELEMENTWISE:
                args = []
                for arg in call.args:
                    shape = getattr(arg.ty, "shape", None)
                    if _channels(arg) == channels:
                        args.append(self.operand(arg, begin, end))
                    elif _channels(arg) == 1 or (shape is not None and len(shape) == 0):
                        args.append(arg)  # broadcast along channels: the same for every slice
                    else:
                        return None
                return relax.Call(call.op, args, call.attrs)
            if name == RESIZE and str(call.attrs.layout) == "NCHW":
                return relax.Call(call.op, [self.operand(call.args[0], begin, end), *call.args[1:]], call.attrs)
            if name == CONCAT and int(call.attrs.axis) == CHANNEL:
                parts, offset = [], 0
                for field in call.args[0].fields:
                    width = _channels(field)
                    if width is None:
                        return None
                    low, high = max(begin, offset), min(end, offset + width)
                    if low < high:
                        parts.append(self.operand(field, low - offset, high - offset))
                    offset += width
                return parts[0] if len(parts) == 1 else relax.op.concat(parts, axis=CHANNEL)
            return None

        def operand(self, expr, begin, end):
            """expr[:, begin:end] as a Var (or expr itself): pushed on into expr's operands when
            only the operation being sliced reads expr, a slice of expr when expr is smaller
            than the slice being computed (a resize's input), else _NotWorthIt."""
            if begin == 0 and end == _channels(expr):
                return expr
            key = (expr, begin, end)
            if key not in self.made:
                self.made[key] = self._operand(expr, begin, end)
            return self.made[key]

        def _operand(self, expr, begin, end):
            if isinstance(expr, relax.Var) and len({reader for reader, _ in self.readers.get(expr, [])}) == 1:
                value = self.lookup_binding(expr)
                pushed = self.through(value, begin, end) if isinstance(value, relax.Call) else None
                if pushed is not None:
                    return pushed if isinstance(pushed, relax.Var) else self.builder_.emit(pushed)
            if _elements(expr) >= self.reading_size:
                # A slice of a tensor as large as the result, which something else also reads: a
                # copy at full size, where the slice left below costs nothing more.
                raise _NotWorthIt
            return self.builder_.emit(relax.op.strided_slice(expr, axes=[CHANNEL], begin=[begin], end=[end]))

    return Pusher


def push_channel_slices_pass():
    import tvm

    return tvm.transform.module_pass(
        lambda mod, _ctx: push_channel_slices(mod), opt_level=0, name="bimatting.PushChannelSlices"
    )
