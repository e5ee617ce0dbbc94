"""Imports point down the layers, and no module-level import cycle exists.

The layer of every module is defined once, in :data:`LAYERS` (longest module
prefix wins); a module may import from its own layer and the layers below it.
Every ``import`` statement counts, also the ones inside functions (a lazy
import is still a dependency). The walk reads the source with ``ast`` and
imports nothing.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "linsolve"

#: Lowest first: kernels -> precond -> krylov -> solve/sequence -> cli/benchmarks.
LAYERS = [
    ("base", ["linsolve._io", "linsolve._optional", "linsolve._result", "linsolve._validation",
              "linsolve._argtypes", "linsolve._grid", "linsolve._provenance", "linsolve._registry", "linsolve._threads",
              "linsolve.backends.array_api"]),
    ("kernels", ["linsolve.kernels", "linsolve.structure"]),
    ("problems", ["linsolve.problems"]),
    ("models", ["linsolve.models", "linsolve.learn.networks", "linsolve.learn.data", "linsolve.learn.losses",
                "linsolve.learn"]),
    ("precond", ["linsolve.precond", "linsolve.backends.torch_kernels", "linsolve.tuning"]),
    ("krylov", ["linsolve.krylov"]),
    ("solve", ["linsolve.solve", "linsolve._auto", "linsolve.sequence", "linsolve.shim", "linsolve.backends",
               "linsolve.learn.train", "linsolve.learn.multigrid", "linsolve.learn.presets",
               "linsolve.learn.mg_presets", "linsolve.learn._preset_registry"]),
    ("app", ["linsolve.cli", "linsolve.benchmarks", "linsolve._catalog", "linsolve"]),
]
_RANK = {prefix: rank for rank, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes}
_NAMES = [name for name, _ in LAYERS]


def layer_of(module: str) -> int:
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        prefix = ".".join(parts[:k])
        if prefix in _RANK:
            return _RANK[prefix]
    if parts[0] in ("tests", "bench"):
        return len(LAYERS)  # above everything: the package never imports them
    raise KeyError(f"{module} has no layer: add it to LAYERS in {__file__}")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = ROOT.parent.joinpath(*name.split("."))
    return rel.with_suffix(".py").exists() or (rel / "__init__.py").exists()


def _imports(path: pathlib.Path):
    """``(target module, line, top_level)`` for every import of a linsolve module in ``path``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("linsolve", "tests", "bench"):
                    yield alias.name, node.lineno, id(node) in top
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and node.args[0].value.split(".")[0] in ("linsolve", "tests", "bench")):
            yield node.args[0].value, node.lineno, False  # importlib.import_module("linsolve.x") is an import too
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] not in ("linsolve", "tests", "bench"):
                continue
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                yield (candidate if _is_module(candidate) else source), node.lineno, id(node) in top


MODULES = sorted(ROOT.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in MODULES:
        layer_of(_module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=[_module_name(p) for p in MODULES])
def test_imports_point_down(path):
    module = _module_name(path)
    own = layer_of(module)
    upward = [f"line {line}: {module} ({_NAMES[own]}) imports {target} ({_NAMES[layer_of(target)]})"
              for target, line, _ in _imports(path) if layer_of(target) > own]
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


#: Packages only their own modules may import (entry points, not libraries).
_CLOSED = ("linsolve.cli", "linsolve.benchmarks", "tests", "bench")
#: The bad-input catalog calls every entry point, the command line included (it is a check, not a library).
_CLOSED_EXEMPT = ("linsolve._catalog", "linsolve.__main__")  # ``python -m linsolve`` is the command line


@pytest.mark.parametrize("path", MODULES, ids=[_module_name(p) for p in MODULES])
def test_nothing_imports_the_cli_benchmarks_or_tests(path):
    module = _module_name(path)
    if module in _CLOSED_EXEMPT:
        return
    bad = [f"line {line}: {module} imports {target}" for target, line, _ in _imports(path)
           for closed in _CLOSED
           if (target == closed or target.startswith(closed + "."))
           and not (module == closed or module.startswith(closed + "."))]
    assert not bad, "\n".join(bad)


def test_no_module_level_import_cycle():
    graph = {}
    for path in MODULES:
        module = _module_name(path)
        graph[module] = {t for t, _, top in _imports(path) if top and t != module}
    # Tarjan's strongly connected components; any component of two or more modules is a cycle.
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"module-level import cycles: {cycles}"


def test_the_walk_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a lazy import of the CLI from a kernel module is reported."""
    fake = tmp_path / "linsolve" / "kernels"
    fake.mkdir(parents=True)
    (tmp_path / "linsolve" / "__init__.py").write_text("")
    (tmp_path / "linsolve" / "cli.py").write_text("")
    (fake / "__init__.py").write_text("")
    bad = fake / "bad.py"
    bad.write_text("def f():\n    from ..cli import main\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path / "linsolve")
    with pytest.raises(AssertionError, match="imports linsolve.cli"):
        test_imports_point_down(bad)
