"""Bilinear resize (NCHW, half-pixel) legalized as two 1-D passes with the same arithmetic.

TVM's resize2d computes every output pixel as

    top    = lerp(in[y0, x0], in[y0, x1], wx)        lerp(a, b, t) = a * (1 - t) + b * t
    bottom = lerp(in[y1, x0], in[y1, x1], wx)
    out    = lerp(top, bottom, wy)

with the source coordinates and weights recomputed per pixel and four gathers along the
vectorized row, which left the refiner's full-resolution upsampling (1920x1080, 4 channels, two
of them per frame) as the slowest function of the 1080p network. `top` and `bottom` depend only
on the source row and the output column, so here the columns are interpolated once per source
row (`rows[y, x] = lerp(in[y, x0], in[y, x1], wx)`, one gather pass over H_in x W_out), and
each output pixel is `lerp(rows[y0, x], rows[y1, x], wy)`: two contiguous loads along the row.
Coordinates, weights, clamping and the order of every operation are TVM's own (topi's
`get_inx` and `_lerp`), so the result has the same bits as the 2-D formula.

The column pass gathers (`in[y, x0]` with x0 computed per lane), and LLVM scalarizes those
gathers on x86: at 1080p each of the refiner's two column passes (270 x 1920 x 4) took 7-9 ms.
Where the output width is the input's times a power of two r (the refiner's 4x), output column
r * i + p has the coordinate i + (p + 0.5) / r - 0.5 exactly in float32, so its taps are
in[i + d_p] and in[i + d_p + 1] with one weight w_p per phase p (d_p = -1 for p < r / 2, else 0),
the very values topi computes per pixel. The pass is then written per phase,
`phases[y, i, p] = lerp(edge[y, i + d_p + 1], edge[y, i + d_p + 2], w_p)`, over a copy of each
input row with its end columns repeated (`edge`, the clamp), and vectorized along i with p
unrolled: contiguous loads, 0.7 ms instead of 7. `phases` is laid out as the output columns
(index r * i + p), so the row pass reads it as before.
"""

RESIZE_OP = "relax.image.resize2d"
# Block annotations read by schedules/fp.py: keep the block as its own buffer; vectorize this axis.
KEEP_BUFFER = "bimatting.keep_buffer"
VECTOR_AXIS = "bimatting.vector_axis"


def _separable_linear(data, size):
    from tvm import te, tirx
    from tvm.topi.image.resize import _lerp, get_inx

    batch, channels, height, width = data.shape
    out_height, out_width = size

    def source(index, in_size, out_size):
        """(first, second, weight) of output `index` along one axis, as topi computes them."""
        coordinate = get_inx(index, in_size, out_size, "half_pixel")
        whole = te.floor(coordinate).astype("int32")
        weight = coordinate - whole
        last = in_size - 1

        def clamp(i):
            return tirx.max(tirx.min(i, last), 0)

        return clamp(whole), clamp(whole + 1), weight

    ratio = _power_of_two_ratio(int(width), int(out_width))
    if ratio is None:

        def along_columns(n, c, y, x):
            first, second, weight = source(x, width, out_width)
            return _lerp(data[n, c, y, first], data[n, c, y, second], weight)

        rows = te.compute((batch, channels, height, out_width), along_columns, name="resize_columns")

        def column_of(n, c, y, x):
            return rows[n, c, y, x]
    else:
        phases = _columns_by_phase(data, ratio)

        def column_of(n, c, y, x):
            return phases[n, c, y, x // ratio, x % ratio]

    def along_rows(n, c, y, x):
        first, second, weight = source(y, height, out_height)
        return _lerp(column_of(n, c, first, x), column_of(n, c, second, x), weight)

    return te.compute((batch, channels, out_height, out_width), along_rows, name="resize_rows")


def _power_of_two_ratio(in_size, out_size):
    """r when out_size = r * in_size with r a power of two >= 2 (then 1 / r and every output
    coordinate are exact in float32), else None."""
    ratio, remainder = divmod(out_size, in_size)
    # x + 0.5, (x + 0.5) / r and that minus 0.5 fit float32's 24-bit significand for x < 2^23;
    # 2^22 keeps a bit of margin against that argument, and no frame is that wide.
    if remainder or ratio < 2 or ratio & (ratio - 1) or out_size >= 1 << 22:
        return None
    return ratio


def _columns_by_phase(data, ratio):
    """phases[n, c, y, i, p] = the column pass at output column ratio * i + p (module docstring)."""
    from tvm import te, tirx
    from tvm.topi.image.resize import _lerp

    batch, channels, height, width = data.shape
    last = width - 1
    # edge[.., j] = in[.., clamp(j - 1)]: the clamp of the end columns, once per input row.
    edge = te.compute(
        (batch, channels, height, width + 2),
        lambda n, c, y, j: data[n, c, y, tirx.max(tirx.min(j - 1, last), 0)],
        name="resize_edge",
        attrs={KEEP_BUFFER: 1},
    )
    scale = tirx.const(1.0 / ratio, "float32")

    def phase(n, c, y, i, p):
        first = tirx.Select(p < ratio // 2, tirx.const(-1, "int32"), tirx.const(0, "int32"))  # d_p
        coordinate = (p.astype("float32") + tirx.const(0.5, "float32")) * scale - tirx.const(0.5, "float32")
        weight = coordinate - first.astype("float32")
        return _lerp(edge[n, c, y, i + first + 1], edge[n, c, y, i + first + 2], weight)

    return te.compute(
        (batch, channels, height, width, ratio), phase, name="resize_phases", attrs={KEEP_BUFFER: 1, VECTOR_AXIS: 3}
    )


def _separable_case(call):
    """((input height, input width), (output height, output width)) when `call` is a resize this
    module handles (static shapes), else None."""
    attrs = call.attrs
    if (
        str(attrs.method) != "linear"
        or str(attrs.coordinate_transformation_mode) != "half_pixel"
        or str(attrs.layout) != "NCHW"
        or any(float(v) != 0.0 for v in attrs.roi)
    ):
        return None
    data_type = call.args[0].ty
    shape = getattr(data_type, "shape", None)
    if shape is None or str(data_type.dtype) != "float32" or not all(hasattr(d, "value") for d in shape):
        return None
    size = call.args[1]
    values = getattr(size, "values", None)
    if values is None or not all(hasattr(v, "value") for v in values):
        return None
    return (int(shape[2].value), int(shape[3].value)), (int(values[0].value), int(values[1].value))


def legalize_resize2d(bb, call):
    """LegalizeOps entry for resize2d: the separable form where it applies, TVM's otherwise."""
    import tvm

    sizes = _separable_case(call)
    if sizes is None:
        default = tvm.ir.Op.get(RESIZE_OP).get_attr("FLegalize")
        return default(bb, call)
    in_size, out_size = sizes
    if in_size == out_size:
        # Same size: every weight is 0, so the formula returns its input (a * 1 + b * 0), except
        # that it turns -0 into +0 and lets an infinite neighbour b make NaN; the input is exact.
        return call.args[0]
    return bb.call_te(_separable_linear, call.args[0], call.args[1], primfunc_name_hint="resize2d_separable")
