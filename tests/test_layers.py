"""The house's rules, read from the source: imports go one way and never in a circle.

::

    cli        the command line: may import everything
    evals      evaluations and benchmarks: the service, the clients, models, kernels
    stream     the service: models, kernels          clients   the wire only: itself
    models     nn.Modules and loaders: kernels
    kernels    torch and triton only

Every import counts, those inside functions too (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests.deploy.files import REPO

LAYERS = {"kernels": 0, "models": 1, "stream": 2, "clients": 2, "evals": 3, "cli": 4}
# third-party packages a kernel may import besides the standard library
# sageattention: an optional kernel library, the inner kernel of the `sage` backend
KERNEL_IMPORTS = {"torch", "triton", "numpy", "sageattention"}


def modules() -> dict[str, Path]:
    """Import name -> file, for every module of the package's folders."""
    out = {}
    for folder in LAYERS:
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(("framestream", *parts))] = path
    return out


def imported_names(name: str, path: Path) -> set[str]:
    """Everything ``path`` imports, absolute names (a ``from a import b`` also names ``a.b``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *filter(None, [base])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports."""
    known = modules()
    edges = {}
    for name, path in known.items():
        deps = set()
        for target in imported_names(name, path):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                deps.add(target)
        edges[name] = deps
    return edges


def layer(module: str) -> str:
    return module.split(".")[1]


def test_no_module_imports_a_layer_above_it() -> None:
    upward = [
        f"{a} -> {b}"
        for a, deps in graph().items()
        for b in deps
        if LAYERS[layer(b)] > LAYERS[layer(a)]
        or (layer(a) == "stream" and layer(b) == "clients")
        or (layer(a) == "clients" and layer(b) != "clients")
    ]
    assert not upward, upward


def test_the_import_graph_has_no_cycle() -> None:
    edges = graph()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(edges)))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_kernels_import_only_torch_and_triton() -> None:
    stdlib = sys.stdlib_module_names
    for name, path in modules().items():
        if layer(name) != "kernels":
            continue
        for target in imported_names(name, path):
            top = target.split(".")[0]
            ours = target.startswith("framestream.kernels") or target in ("framestream", "")
            allowed = top in stdlib or top in KERNEL_IMPORTS or top == "__future__" or ours
            assert allowed, f"{name} imports {target}"


def test_the_rules_see_every_layer_and_its_imports() -> None:
    edges = graph()
    assert {layer(name) for name in edges} == set(LAYERS)
    reached = {layer(b) for a, deps in edges.items() if layer(a) == "cli" for b in deps}
    assert {"stream", "clients", "evals"} <= reached  # the command line sits on all of them
    assert "framestream.kernels.attention" in edges["framestream.stream.kvcache.session"]
