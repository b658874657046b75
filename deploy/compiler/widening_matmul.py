"""The projection head's float64 matmul reads its float32 input directly (a Relax pass before
legalization).

The exported head computes the 1x1 output projection in float64 so that every runtime rounds
it the same way: `matmul(W, reshape(astype(x, float64), [N, K, H*W]))`. Relax fuses no producer
into a reduction, so the widening was a function of its own writing the whole feature map in
float64 (16 x 270 x 480 x 8 bytes = 16.6 MB at 1080p) for the matmul to read back. Here the
matmul is one TE compute that widens each element as it reads it:

    out[n, o, p] = sum_k W[o, k] * float64(x[n, k, p // W, p % W])

the same products, summed over k in the same order (topi's matmul), so the same float64 values;
the bias add and the cast back to float32 still fuse after it.
"""
MATMUL = "relax.matmul"


def _widening_matmul(weight, data):
    from tvm import te

    batch, depth, height, width = data.shape
    outputs = weight.shape[0]
    k = te.reduce_axis((0, depth), name="k")
    return te.compute((batch, outputs, height * width),
                      lambda n, o, p: te.sum(weight[o, k] * data[n, k, p // width, p % width].astype("float64"), axis=k),
                      name="matmul")


def _static(shape):
    return shape is not None and all(hasattr(d, "value") for d in shape)


def widen_inside_matmul(mod):
    """`matmul(W, reshape(astype(x, float64)))` (W 2-D, x 4-D float32) as one compute reading x."""
    from tvm import relax

    @relax.expr_functor.mutator
    class _Widen(relax.PyExprMutator):
        def visit_call_(self, op):
            call = super().visit_call_(op)
            data = self._widened_input(call)
            if data is None:
                return call
            return self.builder_.call_te(_widening_matmul, call.args[0], data, primfunc_name_hint="widening_matmul")

        def _widened_input(self, call):
            """x when `call` is matmul(W, reshape(astype(x, float64), [N, K, H*W])), else None."""
            if getattr(call.op, "name", "") != MATMUL or len(call.args) != 2:
                return None
            weight, reshaped = call.args
            reshape = self.lookup_binding(reshaped) if isinstance(reshaped, relax.Var) else None
            if getattr(getattr(reshape, "op", None), "name", "") != "relax.reshape":
                return None
            cast = self.lookup_binding(reshape.args[0]) if isinstance(reshape.args[0], relax.Var) else None
            if getattr(getattr(cast, "op", None), "name", "") != "relax.astype":
                return None
            data = cast.args[0]
            shape, out_shape = getattr(data.ty, "shape", None), getattr(call.ty, "shape", None)
            if (str(call.ty.dtype) != "float64" or str(data.ty.dtype) != "float32" or str(weight.ty.dtype) != "float64"
                    or not _static(shape) or len(shape) != 4 or not _static(weight.ty.shape)
                    or len(weight.ty.shape) != 2 or not _static(out_shape)):
                return None
            n, k, h, w = (int(d.value) for d in shape)
            if [int(d.value) for d in reshaped.ty.shape] != [n, k, h * w] or int(weight.ty.shape[1].value) != k:
                return None
            return data

    widen = _Widen(mod)
    for gvar, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            widen.builder_.update_func(gvar, widen.visit_expr(func))
    return widen.builder_.get()  # with the new PrimFuncs


def widen_inside_matmul_pass():
    import tvm

    return tvm.transform.module_pass(lambda mod, _ctx: widen_inside_matmul(mod), opt_level=0,
                                     name="bimatting.WidenInsideMatmul")
