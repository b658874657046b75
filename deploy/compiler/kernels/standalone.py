"""Binary convolutions as standalone TVM modules (pack + conv), for kernel tests and benches.

    kernel = BinaryConvKernel(geometry, w_packed, scale, bias, target, extra_steps=[("prelu", slope)])
    lib = build([kernel], target)             # or export([kernels], target, path) for a board
    y = kernel.run(lib.mod, x_float, device)  # float32 NCHW, the BinaryConv2d (+ steps) result

The functions are exactly the ones a compiled network uses (lowering.py + schedules), so a test
here covers the network's kernels. Several kernels share one module (functions pack<i>,
conv<i>), so a board needs one upload.
"""

import numpy as np
import tvm

from bimatting.deploy.compiler import lowering
from bimatting.deploy.compiler.kernels.bitserial import PackLayout
from bimatting.deploy.compiler.schedules import kernel_config_for, scheduled_kernel


class BinaryConvKernel:
    def __init__(
        self, geometry, w_packed, scale, bias, target, batch=1, extra_steps=(), masked=False, kernel_config=None
    ):
        self.geometry, self.target, self.batch, self.masked = geometry, target, batch, masked
        self.kernel_config = kernel_config or kernel_config_for(target)
        self.layout = PackLayout.covering([geometry], self.kernel_config.word_dtype)
        epilogue = lowering.scale_bias(scale, bias) + list(extra_steps)
        self.operands = lowering.conv_operands(w_packed, geometry, self.kernel_config, epilogue)
        g = geometry
        self.pack = lowering.pack_func((batch, g.channels_in, g.height, g.width), self.layout)
        self.conv = lowering.conv_func(batch, g, self.layout, self.operands, masked)
        self.index = 0  # set by build(): this kernel's functions are pack<index>, conv<index>

    def functions(self, scheduled=True):
        funcs = {f"pack{self.index}": self.pack, f"conv{self.index}": self.conv}
        if scheduled:
            funcs = {name: scheduled_kernel(f, self.kernel_config) for name, f in funcs.items()}
        return {name: f.with_attr("global_symbol", name) for name, f in funcs.items()}

    def arrays(self, x, device, mask=None):
        """Device tensors for one call: input, packed buffer, operands (+ mask), output."""
        g, lay = self.geometry, self.layout
        packed = tvm.runtime.empty(lay.shape(self.batch), lay.word_dtype, device)
        consts = [tvm.runtime.tensor(a, device) for a in self.operands.arrays()]
        extra = [tvm.runtime.tensor(np.asarray(mask, np.float32), device)] if self.masked else []
        out = tvm.runtime.empty((self.batch, g.channels_out, g.out_height, g.out_width), "float32", device)
        return tvm.runtime.tensor(np.asarray(x, np.float32), device), packed, consts + extra, out

    def build(self, scheduled=True):
        """This kernel alone as an executable (see the module-level `build` for several)."""
        return build([self], self.target, scheduled)

    def run(self, module, x, device, mask=None):
        """Pack `x` and convolve: float32 [N, C, H, W] -> float32 [N, O, OH, OW].

        `module`: a runtime module holding this kernel (or the executable from `build`)."""
        module = module.mod if isinstance(module, tvm.runtime.Executable) else module
        x_dev, packed, operands, out = self.arrays(x, device, mask)
        module[f"pack{self.index}"](x_dev, packed)
        module[f"conv{self.index}"](packed, *operands, out)
        return out.numpy()


def module(kernels, scheduled=True):
    funcs = {}
    for index, kernel in enumerate(kernels):
        kernel.index = index
        funcs.update(kernel.functions(scheduled))
    return tvm.IRModule(funcs)


def build(kernels, target, scheduled=True):
    """One executable holding every kernel (call through `.mod`)."""
    return tvm.compile(module(kernels, scheduled), target=target)


def export(kernels, target, path, fcompile=None):
    """Build and write a shared library (cross-compiled with `fcompile`) for a remote board."""
    build(kernels, target).export_library(str(path), fcompile=fcompile)
    return path
