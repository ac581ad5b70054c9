"""The layout README.md describes: layers that import one way, no cycles, small modules, and
every module importable on its own.

Imports are read from the source (module level and inside functions alike), so a lazy import
that goes the wrong way fails here as surely as a top-level one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "celerynb"

#: Layers, lowest first: a module imports only from its own layer or lower ones. Within a layer,
#: only from its own subpackage. Mirrors the "Architecture" section of README.md.
LAYERS = [
    ("celerynb._version", "celerynb._compat", "celerynb.rendering"),
    ("celerynb.config",),
    ("celerynb.workers",),
    ("celerynb.cluster",),
    ("celerynb.tracking",),
    ("celerynb.bulk", "celerynb.messaging", "celerynb.async_tasks"),
    ("celerynb.display",),
    ("celerynb.notebook",),
    ("celerynb", "celerynb.testing", "celerynb.nbval_sanitize", "celerynb.__main__"),
]
MAX_LINES = 440
#: Private attributes of our own objects that the scan below cannot tell from another project's.
OWN_PRIVATE = {"_render", "_connect_redis", "_pid", "_exit", "_tqdm", "_shown_in", "_quiet"}
#: Underscore names that are documented protocols, not internals (IPython: an exception's own traceback, rich HTML).
PROTOCOLS = {"_render_traceback_", "_repr_html_"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
# Parsed once, at collection: CPython 3.11's ast.parse can fail ("AST constructor recursion depth
# mismatch") while another thread compiles, e.g. a display rendering a template in the background
# after an earlier test.
TREES = {module: ast.parse(path.read_text()) for module, path in MODULES.items()}


def _resolve(name: str) -> str:
    """The module an imported name lives in (``celerynb.cluster.local`` for ``from celerynb.cluster import local``)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str) -> set[str]:
    tree = TREES[module]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("celerynb"):
            assert node.level == 0, f"{module}: use absolute imports"
            for alias in node.names:
                found.add(_resolve(f"{node.module}.{alias.name}"))
        elif isinstance(node, ast.Import):
            found |= {_resolve(a.name) for a in node.names if a.name.startswith("celerynb")}
    found.discard(module)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(module: str) -> tuple[int, str]:
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (rank, prefix)
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS and to README.md"
    return best


def test_every_module_belongs_to_a_layer_and_imports_only_downwards():
    wrong = []
    for module, imported in GRAPH.items():
        rank, package = _layer(module)
        for target in imported:
            target_rank, target_package = _layer(target)
            if target_rank > rank or (target_rank == rank and target_package != package):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH[module]):
            if target == "celerynb" or target not in GRAPH:
                continue  # the package's own __init__ re-exports; nothing below imports it
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_nothing_imports_the_top_level_package_from_inside():
    users = sorted(m for m, imported in GRAPH.items() if "celerynb" in imported and _layer(m)[0] < len(LAYERS) - 1)
    assert not users, f"only the top layer may import celerynb/__init__: {users}"


def test_modules_are_small_and_shadow_no_standard_module():
    too_long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not too_long, f"split these modules (over {MAX_LINES} lines): {too_long}"
    shadowing = sorted(m for m in MODULES if m.rsplit(".", 1)[-1] in sys.stdlib_module_names)
    assert not shadowing, f"these modules shadow the standard library: {shadowing}"


def test_private_attributes_of_other_projects_are_used_only_in_compat():
    found = []
    for module in MODULES:
        if module == "celerynb._compat" or module.startswith("celerynb._compat."):
            continue
        for node in ast.walk(TREES[module]):
            name = None
            if isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                name = node.attr
            elif isinstance(node, ast.ImportFrom) and not (node.module or "").startswith("celerynb"):
                found += [f"{module}:{node.lineno} imports {a.name}" for a in node.names if a.name.startswith("_")]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                  and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)):
                name = str(node.args[1].value)
            if (name and name.startswith("_") and not name.startswith("__") and not name.startswith("_celerynb")
                    and name not in OWN_PRIVATE | PROTOCOLS):
                found.append(f"{module}:{node.lineno} uses {name}")
    assert not found, "move these into the package celerynb/_compat/:\n" + "\n".join(found)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "celerynb.__main__"))
def test_module_imports_standalone_in_a_fresh_interpreter(module):
    out = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-1500:]
