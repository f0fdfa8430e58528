"""The package layout: no import circle between the modules of `study/` and `pipelines/`, and no module that
imports its own package (a submodule imports its siblings' leaf modules, never the `__init__` that re-exports them).

Imports are read from the source (module level and inside functions) with `ast`, so the test sees the imports that
run late too. Importing `a.b.c` runs the `__init__` of every package above it, so the walk adds an edge to each
such package that the importer is not itself inside (its own package's `__init__` is already running).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "pipelines")


def _modules() -> dict[str, Path]:
    out = {}
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Project modules that `name` imports, anywhere in its source."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            while t and t not in modules:  # `import a.b.c` of a non-project module, or a name inside one
                t = t.rpartition(".")[0]
            if t:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)} | {name}
        for target in _imports(path, name, modules):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                pkg = ".".join(parts[:i])
                if pkg in modules and pkg not in own:
                    graph[name].add(pkg)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_submodule_imports_its_own_package():
    modules = _modules()
    offenders = []
    for name, path in modules.items():
        if path.name == "__init__.py" or name.count(".") < 2:
            continue
        pkg = name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == pkg and not node.level:
                offenders.append(f"{name}: from {pkg} import ...")
    assert offenders == []


def test_every_package_reexports_only_from_its_leaf_modules():
    """A package `__init__` is light (study.lazy): it imports nothing but study.lazy, and each name it re-exports
    exists in the leaf module its table names."""
    import importlib

    modules = _modules()
    for name, path in modules.items():
        if path.name != "__init__.py" or name in PACKAGES:
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                assert isinstance(node, ast.ImportFrom) and node.module == "study.lazy", (name, ast.unparse(node))
        package = importlib.import_module(name)
        assert package.__all__, name
        for export in package.__all__:
            assert getattr(package, export) is not None, (name, export)


def test_importing_a_leaf_module_imports_none_of_its_siblings():
    """What makes a function-level import of a leaf defer anything: `import study.search.fidelity` does not run
    `study.search.tune` (Ray) through the package `__init__`."""
    import subprocess
    import sys

    code = ("import json, sys, study.search.fidelity, study.cluster.lock; "
            "print(json.dumps([sorted(m for m in sys.modules if m.startswith('study.')), 'ray' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    loaded, ray = json.loads(out.stdout)
    assert "study.search.tune" not in loaded and "study.cluster.tasks" not in loaded and not ray, loaded


def _function_level_project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, source line) of every `from study... / pipelines... import` inside a function, outside a try block
    (a guarded import is an optional dependency, not a deferral)."""
    tree = ast.parse(path.read_text())
    guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for b in t.body for n in ast.walk(b)}
    lines = path.read_text().splitlines()
    found = {}
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if (isinstance(node, ast.ImportFrom) and node.level == 0 and id(node) not in guarded
                        and (node.module or "").split(".")[0] in PACKAGES):
                    found[node.lineno] = "\n".join(lines[node.lineno - 2:node.end_lineno])
    return sorted(found.items())


def test_function_level_imports_say_what_they_defer():
    """Issue 19: a project import inside a function is there for start-up time and says so (`# lazy: pulls
    torch`, on its line or the line above); one that defers nothing belongs at module level."""
    unexplained = [f"{path.relative_to(ROOT)}:{line}" for path in _modules().values()
                   for line, text in _function_level_project_imports(path) if "# lazy:" not in text]
    assert not unexplained, unexplained


def test_training_a_small_model_imports_neither_torchvision_nor_dynamo():
    """Every trial actor, retrain task and CLI call builds a model: importing torchvision there would import
    torch._dynamo (through torchvision.ops.roi_align), ~1.7 CPU-s per process; only the torchvision ResNets need it."""
    import subprocess
    import sys

    code = ("import json, sys\n"
            "from study.config.load import load_config\n"
            "from study.models import build_model\n"
            "import study.training.engine, study.training.runner, study.data.registry\n"
            "build_model(load_config(None, ['model.arch=cnn']).model, 10)\n"
            "build_model(load_config(None, ['model.arch=resnet20']).model, 10)\n"
            "print(json.dumps(['torchvision' in sys.modules, 'torch._dynamo' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == [False, False], out.stdout
