"""The import structure the layout promises, read statically from the sources (nothing is imported).

* No cycles between the project's modules, counting the imports inside functions too (a cycle
  hidden behind a function-level import is still a cycle).
* Data flows one way: deploy/ imports neither export/ nor torch, bimatting.binops imports only
  itself and bimatting.errors, and the device side of deploy/ does not import the compiler side.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {
    "bimatting": "bimatting",
    "bimatting.export": "export",
    "bimatting.deploy": "deploy",
    "bimatting.targets": "targets",
}


def _modules(root=REPO, folders=FOLDERS):
    """{module name: source path} with setup.py's folder mapping."""
    found = {}
    for package, folder in folders.items():
        for path in (root / folder).rglob("*.py"):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package] + parts)] = path
    return found


MODULES = _modules()


def _owner(name, modules=MODULES):
    """The project module that `name` (a module or a name inside one) belongs to, or None."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _absolute(node, module, path):
    """The absolute module name of an ImportFrom, relative ones (`from .x import y`) resolved."""
    if node.level == 0:
        return node.module
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _imports(path, module=None, modules=MODULES):
    """[(imported name, inside a function)] of one source file, relative imports resolved."""
    if module is None:
        module = next(name for name, source in modules.items() if source == path)
    tree = ast.parse(path.read_text())
    in_function = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for sub in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in in_function) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, path)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                # `from package import submodule` depends on the submodule; Python initialises the
                # package first whatever the importer, so that is not an edge of its own.
                found.append((full if full in modules else base, id(node) in in_function))
    return found


def _graph(modules=MODULES):
    graph = {}
    for module, path in modules.items():
        owners = {_owner(name, modules) for name, _ in _imports(path, module, modules)}
        graph[module] = {owner for owner in owners if owner not in (None, module)}
    return graph


def _cycles(graph):
    cycles, state = [], {}  # module -> "open" while on the DFS stack, "done" after

    def visit(module, trail):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(trail[trail.index(target) :] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_no_import_cycles_even_through_function_level_or_relative_imports():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_a_cycle_through_relative_imports_is_caught(tmp_path):
    """The check itself: a package whose two modules import each other, one through `from . import`,
    the other through `from .a import` inside a function."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("from ..sub import b\n")
    (package / "sub" / "b.py").write_text("def late():\n    from .a import something\n")
    (package / "c.py").write_text("from .sub.a import x\n")
    modules = _modules(tmp_path, {"pkg": "pkg"})
    graph = _graph(modules)
    assert graph["pkg.sub.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.sub.a"}
    assert graph["pkg.c"] == {"pkg.sub.a"}
    assert _cycles(graph) == [["pkg.sub.a", "pkg.sub.b", "pkg.sub.a"]]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("bimatting.deploy")))
def test_deploy_imports_neither_export_nor_torch(module):
    names = [name for name, _ in _imports(MODULES[module])]
    assert not [n for n in names if n.startswith("bimatting.export") or n.split(".")[0] == "torch"], names


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("bimatting.binops")))
def test_the_contract_depends_on_nothing_but_itself(module):
    project = {_owner(name) for name, _ in _imports(MODULES[module])} - {None}
    assert project <= {m for m in MODULES if m.startswith("bimatting.binops")} | {"bimatting.errors"}, project
    assert not [n for n, _ in _imports(MODULES[module]) if n.split(".")[0] == "torch"]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("bimatting.deploy.device")))
def test_the_device_side_does_not_import_the_compiler(module):
    names = [name for name, _ in _imports(MODULES[module])]
    assert not [n for n in names if n.startswith(("bimatting.deploy.compiler", "bimatting.deploy.tuning"))], names


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("bimatting.models")))
def test_the_models_emit_onnx_without_importing_export_or_onnx(module):
    # Each module's emit_onnx gets the builder as an argument: the networks are defined once, in
    # the models, and the exporter depends on them, never the other way round.
    names = [name for name, _ in _imports(MODULES[module])]
    assert not [n for n in names if n.startswith("bimatting.export") or n.split(".")[0] == "onnx"], names
