"""Board descriptors: one TOML file per target in this folder (plain data, torch- and TVM-free).

Each file gives the LLVM target dict (`[llvm]`: kind, mtriple, mcpu, mattr, num-cores), the
cross compiler and the Debian package that provides it, the QEMU CPU model used to emulate the
board, the TVM RPC key, and a one-line description. `mcpu = "native"` (the `host` target) is
resolved to this machine's CPU by the compiler (bimatting.deploy).
"""

import sys
from importlib import resources

from bimatting.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REQUIRED = ("name", "description", "isa", "llvm")


def list_targets():
    """Names of the known targets, sorted."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def load_target(name):
    """The descriptor of target `name` as a dict; InputError listing the known ones otherwise."""
    known = list_targets()
    if name not in known:
        raise InputError(f"unknown target '{name}'; known targets: {', '.join(known)}")
    data = tomllib.loads(resources.files(__name__).joinpath(f"{name}.toml").read_text())
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise InputError(f"target file '{name}.toml' lacks {', '.join(missing)}")
    return data
