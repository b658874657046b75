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
"""
RESIZE_OP = "relax.image.resize2d"


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

    def along_columns(n, c, y, x):
        first, second, weight = source(x, width, out_width)
        return _lerp(data[n, c, y, first], data[n, c, y, second], weight)

    rows = te.compute((batch, channels, height, out_width), along_columns, name="resize_columns")

    def along_rows(n, c, y, x):
        first, second, weight = source(y, height, out_height)
        return _lerp(rows[n, c, first, x], rows[n, c, second, x], weight)

    return te.compute((batch, channels, out_height, out_width), along_rows, name="resize_rows")


def _separable_case(call):
    """((input height, input width), (output height, output width)) when `call` is a resize this
    module handles (static shapes), else None."""
    attrs = call.attrs
    if (str(attrs.method) != "linear" or str(attrs.coordinate_transformation_mode) != "half_pixel"
            or str(attrs.layout) != "NCHW" or any(float(v) != 0.0 for v in attrs.roi)):
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
