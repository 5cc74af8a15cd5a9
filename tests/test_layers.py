"""The house plan, read from the code's own imports (every ``import`` and ``from … import`` of every module,
function-level and type-checking ones included): no import cycle between modules, no import from a lower layer to a
higher one, no stage importing another stage, and the size limits of modules and functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mulcot"

# The layer map (the README's Layout shows it): a module may import modules of its own layer or of layers below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("mulcot", "mulcot.errors", "mulcot.events", "mulcot.sample")),
    ("store", ("mulcot.store",)),
    ("core", ("mulcot.core",)),
    ("metrics", ("mulcot.metrics",)),
    ("models", ("mulcot.models",)),
    ("generation", ("mulcot.generation",)),
    ("stages", ("mulcot.datasets", "mulcot.annotate", "mulcot.train", "mulcot.expand", "mulcot.evaluate",
                "mulcot.judge", "mulcot.export", "mulcot.predict")),
    ("pipeline", ("mulcot.pipeline",)),
    ("tui", ("mulcot.tui",)),
    ("cli", ("mulcot.cli", "mulcot.__main__")),
]
STAGES = dict(LAYERS)["stages"]
MODULE_LINES = 450  # a longer module says why in its first lines ("Long because: ...")
FUNCTION_LINES = 80  # of a function's body, after its signature and docstring (a command's signature is its options)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the mulcot modules it imports (a name imported from a package counts as the submodule when it is
    one, else as the package)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                if target.startswith("mulcot"):
                    resolved = _resolve(target, modules)
                    if resolved and resolved != name:
                        graph[name].add(resolved)
    return graph


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, owning group) of a module: the longest group prefix that matches."""
    best: tuple[int, str] | None = None
    for index, (_, groups) in enumerate(LAYERS):
        for group in groups:
            if (module == group or module.startswith(group + ".")) and (best is None or len(group) > len(best[1])):
                best = (index, group)
    assert best is not None, f"{module} is in no layer: add it to LAYERS (and to the README's layer map)"
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_imports_go_down_the_layer_map(graph):
    wrong = []
    for src, targets in graph.items():
        src_layer, src_group = layer_of(src)
        for dst in targets:
            dst_layer, dst_group = layer_of(dst)
            if dst_layer > src_layer:
                wrong.append(f"{src} ({LAYERS[src_layer][0]}) imports {dst} ({LAYERS[dst_layer][0]})")
            elif src_group in STAGES and dst_group in STAGES and src_group != dst_group:
                wrong.append(f"stage {src} imports stage {dst}: move the shared part into the core")
    assert wrong == []


def test_the_checker_sees_a_violation(tmp_path):
    """The checker itself: an upward import and a cycle are found."""
    assert layer_of("mulcot.core.prompts")[0] < layer_of("mulcot.train.loop")[0]
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert cycles(toy) == [["a", "b", "c"]]


def test_module_and_function_sizes():
    long_modules, long_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT)
        if len(text.splitlines()) > MODULE_LINES and "Long because:" not in "\n".join(text.splitlines()[:25]):
            long_modules.append(f"{rel}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body
                if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                    body = body[1:]  # the docstring
                lines = node.end_lineno - body[0].lineno + 1
                if lines > FUNCTION_LINES:
                    long_functions.append(f"{rel}:{node.lineno} {node.name}: {lines} lines")
    assert long_modules == [] and long_functions == []


def test_backends_and_soft_label_sources_are_registered():
    """A backend is one module plus one registration; so is a soft-label source (and the config's choices agree)."""
    import importlib

    from mulcot.generation import BACKENDS, Backend
    from mulcot.train.config import SOFT_MODES
    from mulcot.train.soft_labels import SOURCES, SoftLabelSource

    for registry, base in ((BACKENDS, Backend), (SOURCES, SoftLabelSource)):
        for path in registry.values():
            module, name = path.split(":")
            assert issubclass(getattr(importlib.import_module(module), name), base)
    assert tuple(SOURCES) == SOFT_MODES
