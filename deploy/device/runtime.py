"""Run a compiled artifact, locally or on a board over TVM RPC.

    from bimatting.deploy.device.runtime import CompiledModel, RecurrentRunner
    model = CompiledModel("bimatting-host.tar")                 # this machine
    model = CompiledModel("bimatting-rpi4.tar", session=tvm.rpc.connect("pi.local", 9090))
    runner = RecurrentRunner(model)
    for frame in frames:                                        # [1, 3, H, W] float32 RGB in [0, 1]
        out = runner.step(frame)                                # {"fgr": ..., "pha": ..., ...} numpy
    runner.reset()                                              # a new clip: states back to zero

`CompiledModel.run(**inputs)` is one stateless call (all inputs given, outputs as numpy);
`RecurrentRunner` owns the recurrent states (inputs with role "state" in the metadata), starts
them at zero and feeds each output rKo back as the next rKi. The states and parameters stay on
the device between frames; only the image goes in (copied into one input tensor the runner keeps)
and the outputs come back: on this machine as numpy views of the VM's output tensors (the VM
allocates each call's outputs anew, and a view keeps its tensor alive), over RPC as copies.
At 1920x1080, one thread, a fresh input tensor and two output copies cost 3.3 ms per frame on the
package's VM and 12.6 ms on the runtime-only one (local_vm.py).
`model.metadata` is the artifact's metadata.json (input/output names and shapes, target).
A local model in a process that has not imported the `tvm` package runs on TVM's runtime library
alone (local_vm.py), as on a board; otherwise (RPC, tools that compile) on the package's VM.
"""

import platform
import sys

import numpy as np

from bimatting.deploy import artifact as artifacts
from bimatting.deploy.device.local_vm import LocalVM
from bimatting.errors import InputError


class CompiledModel:
    """An artifact loaded into a Relax VM on a device (local CPU, or `session.cpu()` over RPC)."""

    def __init__(self, source, session=None):
        self.artifact = source if isinstance(source, artifacts.Artifact) else artifacts.read(source)
        meta = self.metadata
        self.session = session
        self._inputs = {i["name"]: i for i in meta["inputs"]}
        if session is None:
            isa = meta["target"]["isa"]
            if isa != platform.machine():
                raise InputError(
                    f"artifact is built for {isa} ({meta['target']['name']}); this machine is "
                    f"{platform.machine()}: run it on the board over RPC"
                )
        if session is None and "tvm" not in sys.modules:
            self.vm = LocalVM(self.artifact.library_path)
            self.device = self.vm.device
            self._tensor, self._numpy, self._copy_into = self.vm.tensor, self.vm.numpy, self.vm.copy_into
        else:
            self._package_vm(session)
        self._params = [self._tensor(self.artifact.params[name]) for name in meta["params"]]
        # The VM's own output functions: tvm's VirtualMachine.get_outputs builds a recursive closure
        # over the VM on every call, garbage that keeps the VM (and an RPC session) until collected.
        self._get_output, self._output_arity = self.vm.module["get_output"], self.vm.module["get_output_arity"]

    def _package_vm(self, session):
        """The `tvm` package's VirtualMachine, on this CPU or on the board of an RPC session."""
        import tvm
        from tvm.runtime.vm import VirtualMachine  # runtime only: no compiler library needed

        if session is None:
            library = tvm.runtime.load_module(str(self.artifact.library_path))
            self.device = tvm.cpu()
        else:
            # One name per library: a session may load several artifacts of the same model.
            digest = artifacts.sha256_file(self.artifact.library_path)[:16]
            remote_name = f"bimatting-{self.metadata['target']['name']}-{digest}.so"
            session.upload(str(self.artifact.library_path), remote_name)
            library = session.load_module(remote_name)
            self.device = session.cpu()
        self.vm = VirtualMachine(library, self.device)
        # Closures over the device, not over self: a model referring to itself is freed only by
        # the cycle collector, and until then its RPC session stays open and a tracker's board busy.
        device = self.device
        self._tensor = lambda array: tvm.runtime.tensor(array, device)
        self._numpy = (lambda tensor: tensor.numpy()) if session is not None else np.from_dlpack
        self._copy_into = lambda tensor, array: tensor.copyfrom(array)

    @property
    def metadata(self):
        return self.artifact.metadata

    def input_spec(self, name):
        """{"name", "shape", "dtype", "role"} of input `name` (role: image, state or input)."""
        return self._inputs[name]

    @property
    def input_names(self):
        return [i["name"] for i in self.metadata["inputs"]]

    @property
    def output_names(self):
        return [o["name"] for o in self.metadata["outputs"]]

    def to_device(self, name, value):
        """A device tensor for input `name`, checked against the compiled shape."""
        return self._tensor(self._checked(name, value))

    def copy_to_device(self, tensor, name, value):
        """`value` copied into `tensor`, a device tensor of input `name` (to_device's checks)."""
        self._copy_into(tensor, self._checked(name, value))
        return tensor

    def _checked(self, name, value):
        spec = self._inputs[name]
        array = np.ascontiguousarray(value, dtype=spec["dtype"])
        if list(array.shape) != list(spec["shape"]):
            raise InputError(
                f"input '{name}' has shape {list(array.shape)}; this artifact was compiled for "
                f"{spec['shape']} (compile another resolution)"
            )
        return array

    def to_numpy(self, tensor):
        """An output tensor as numpy: a view of it on this machine (the array keeps the tensor
        alive), a copy over RPC."""
        return self._numpy(tensor)

    def call(self, device_inputs):
        """Run `main` on device tensors in input order; returns the output device tensors."""
        # set_input / invoke_stateful / get_output work the same locally and over RPC (a remote
        # tuple return value cannot be unpacked by the client).
        self.vm.set_input("main", *device_inputs, *self._params)
        self.vm.invoke_stateful("main")
        count = self._output_arity("main")
        if count < 0:  # a single tensor, not a tuple
            return [self._get_output("main")]
        return [self._get_output("main", index) for index in range(count)]

    def run(self, **inputs):
        """One stateless call with numpy inputs (all of them); returns {output name: numpy}."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise InputError(f"missing inputs {missing}; the model takes {self.input_names}")
        outputs = self.call([self.to_device(n, inputs[n]) for n in self.input_names])
        return {name: self.to_numpy(out) for name, out in zip(self.output_names, outputs)}


class RecurrentRunner:
    """Frame-by-frame inference with the recurrent states kept on the device."""

    def __init__(self, model):
        self.model = model
        self.states = model.metadata["states"]  # state input -> output
        self.image = next(i["name"] for i in model.metadata["inputs"] if i["role"] == "image")
        self.reset()

    def reset(self):
        """Zero states (the start of a clip)."""
        self._state_values = {}
        for name in self.states:
            spec = self.model.input_spec(name)
            self._state_values[name] = self.model.to_device(name, np.zeros(spec["shape"], spec["dtype"]))
        self._image_tensor = None

    def step(self, image, fetch=None):
        """Run one frame; returns {output: numpy} for `fetch` (default: all non-state outputs)."""
        if self._image_tensor is None:
            self._image_tensor = self.model.to_device(self.image, image)
        else:  # the same tensor each frame: a fresh one costs an allocation the size of the frame
            self.model.copy_to_device(self._image_tensor, self.image, image)
        inputs = [
            self._image_tensor if name == self.image else self._state_values[name] for name in self.model.input_names
        ]
        outputs = dict(zip(self.model.output_names, self.model.call(inputs)))
        for state, output in self.states.items():
            self._state_values[state] = outputs[output]
        wanted = fetch if fetch is not None else [n for n in outputs if n not in self.states.values()]
        return {name: self.model.to_numpy(outputs[name]) for name in wanted}
