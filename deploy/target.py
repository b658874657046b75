"""Board descriptors (bimatting.targets) -> TVM targets and compilers.

`resolve("rpi4")` gives the TVM target (a dict target: TVM 0.27 rejects CLI strings), the
bitserial architecture, and how to link: natively for `host` (whose `mcpu = "native"` and
`num-cores = 0` become this machine's CPU and core count), with the cross compiler named in the
TOML otherwise. `check_compiler` fails early with the Debian package to install.
"""

import os
import platform
import shutil
from dataclasses import dataclass, field

from bimatting.errors import InputError
from bimatting.targets import load_target


@dataclass
class ResolvedTarget:
    name: str
    descriptor: dict
    llvm: dict  # the resolved LLVM target dict
    cross_compiler: str = None  # None: link with the host compiler
    extra: dict = field(default_factory=dict)

    @property
    def tvm_target(self):
        import tvm

        return tvm.target.Target(self.llvm)

    @property
    def isa(self):
        """'aarch64' or 'x86_64' (the machine the code runs on)."""
        triple = self.llvm.get("mtriple", "")
        return triple.split("-")[0] if triple else platform.machine()

    @property
    def qemu_cpu(self):
        return self.descriptor.get("qemu_cpu")

    @property
    def rpc_key(self):
        return self.descriptor.get("rpc_key", self.name)

    def summary(self):
        """JSON-ready description for artifact metadata and `bimatting targets --json`."""
        return {
            "name": self.name,
            "description": self.descriptor.get("description", ""),
            "isa": self.isa,
            "llvm": self.llvm,
            "cross_compiler": self.cross_compiler,
            "qemu_cpu": self.qemu_cpu,
            "rpc_key": self.rpc_key,
        }


def resolve(name):
    """The ResolvedTarget of a target name; InputError listing the known ones if unknown."""
    descriptor = load_target(name)
    llvm = dict(descriptor["llvm"])
    if llvm.get("mcpu") == "native":
        from tvm.target.codegen import llvm_get_system_cpu

        llvm["mcpu"] = str(llvm_get_system_cpu())
    if int(llvm.get("num-cores", 1)) <= 0:
        llvm["num-cores"] = os.cpu_count() or 1
    if "mattr" in llvm:
        llvm["mattr"] = list(llvm["mattr"])
    cross = descriptor.get("cross_compiler") if descriptor.get("isa") not in (None, "native") else None
    return ResolvedTarget(name, descriptor, llvm, cross)


def check_compiler(target):
    """Path of the compiler that links `target`; InputError naming the package when missing."""
    if target.cross_compiler is None:
        for compiler in (os.environ.get("CXX"), "g++", "c++", "clang++", "gcc", "cc"):
            if compiler and shutil.which(compiler):
                return shutil.which(compiler)
        raise InputError("no C/C++ compiler found to link the host library; install g++ (Debian: g++)")
    found = shutil.which(target.cross_compiler)
    if found is None:
        package = target.descriptor.get("cross_compiler_package", "a cross compiler")
        raise InputError(
            f"target '{target.name}' needs the cross compiler '{target.cross_compiler}', "
            f"which is not installed; install the Debian package {package} "
            f"(apt-get install {package})"
        )
    return found


def fcompile(target):
    """The `export_library` compile function for `target` (None: TVM's host default)."""
    if target.cross_compiler is None:
        return None
    from tvm.support import cc

    return cc.cross_compiler(check_compiler(target))
