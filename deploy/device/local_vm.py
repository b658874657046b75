"""The Relax VM on this machine through TVM's runtime library alone, as a board runs it.

    vm = LocalVM("lib.so")                   # libtvm_runtime + tvm_ffi, no `tvm` package
    vm.set_input("main", *[vm.tensor(a) for a in arrays]); vm.invoke_stateful("main")
    arrays = [vm.numpy(t) for t in vm.get_outputs("main")]

Running an artifact needs the VM, which lives in libtvm_runtime (3.4 MB), and TVM's FFI
(`tvm_ffi`, the package `tvm` itself depends on) to call it. Importing the `tvm` package on top
loads its Python IR, script printer and friends: +35 MB resident even with TVM_USE_RUNTIME_LIB=1
(512x288 host artifact, four frames: peak 208 -> 180 MB; `bimatting matte --artifact` over 8
frames 237 -> 201 MB, RVM in onnxruntime 218 MB). `CompiledModel` uses this class for local
runs in a process that has not imported `tvm` (`bimatting matte --artifact`, a board script);
processes that compile or talk RPC have the package and keep its VirtualMachine, which drives
the same library.

Same calls as tvm.runtime.vm.VirtualMachine (set_input / invoke_stateful / get_outputs,
set_instrument, time_evaluator), the same pooled allocator on the CPU.
"""

import ctypes
import importlib.util
import struct
from pathlib import Path

import numpy as np

CPU = 1  # DLDeviceType kDLCPU
POOLED_ALLOCATOR = 2  # tvm.runtime.vm.VirtualMachine.POOLED_ALLOCATOR
_LOADED = []


def load_runtime_library():
    """libtvm_runtime, loaded once with its symbols global (compiled kernels call into it), found
    where the `tvm` package keeps it, without importing that package."""
    if _LOADED:
        return _LOADED[0]
    from tvm_ffi.libinfo import load_lib_ctypes

    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the TVM runtime is not installed (pip install apache-tvm)")
    package = Path(list(spec.submodule_search_locations)[0])
    _LOADED.append(load_lib_ctypes("tvm", "tvm_runtime", "RTLD_GLOBAL", extra_lib_paths=[package / "lib", package]))
    return _LOADED[0]


class Timing:
    """Seconds per repeat, as tvm.runtime.BenchmarkResult gives them (`results`, `mean`)."""

    def __init__(self, results):
        self.results = list(results)
        self.mean = float(np.mean(self.results))


class LocalVM:
    def __init__(self, library_path):
        load_runtime_library()
        import tvm_ffi

        self._ffi = tvm_ffi
        self.device = tvm_ffi.device("cpu", 0)
        library = tvm_ffi.load_module(str(library_path))
        self.module = library["vm_load_executable"]()
        self.module["vm_initialization"](CPU, 0, POOLED_ALLOCATOR)
        self._alloc = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")
        self._copy_from = tvm_ffi.get_global_func("runtime.TVMTensorCopyFromBytes")

    def tensor(self, array):
        """A VM-owned copy of a numpy array (aligned as TVM's kernels assume)."""
        array = np.ascontiguousarray(array)
        out = self._alloc(self._ffi.Shape(array.shape), self._ffi.dtype(str(array.dtype)), self.device, None)
        self.copy_into(out, array)
        return out

    def copy_into(self, tensor, array):
        """`array` (C-contiguous, of tensor's shape and dtype) copied into the VM-owned `tensor`."""
        self._copy_from(tensor, array.ctypes.data_as(ctypes.c_void_p), array.nbytes)

    def numpy(self, tensor):
        """A numpy view of `tensor` (DLPack: no copy; the array keeps the tensor alive)."""
        return np.from_dlpack(tensor)

    def set_input(self, func_name, *args):
        self.module["set_input"](func_name, *args)

    def invoke_stateful(self, func_name):
        self.module["invoke_stateful"](func_name)

    def get_outputs(self, func_name):
        count = self.module["get_output_arity"](func_name)
        if count < 0:  # a single tensor, not a tuple
            return self.module["get_output"](func_name)
        return [self.module["get_output"](func_name, index) for index in range(count)]

    def set_instrument(self, instrument):
        self.module["set_instrument"](self._ffi.convert(instrument))

    def time_evaluator(self, func_name, device, number=10, repeat=1):
        """A timer of the VM's `func_name` (the runtime's own, as Module.time_evaluator): called with
        that function's arguments, returns a Timing."""
        del device  # this VM's CPU
        evaluate = self._ffi.get_global_func("runtime.RPCTimeEvaluator")(
            self.module, func_name, CPU, 0, number, repeat, 0, 100, 0, 1, 0, ""
        )

        def timer(*args):
            return Timing(struct.unpack("@" + "d" * repeat, evaluate(*args)))

        return timer
