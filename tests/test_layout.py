"""The import graph of ``src/seer``, read with ``ast`` (nothing imported): the packages form
layers, and a module imports only from its own package or from a lower layer; no two modules
import each other, directly or around a loop.

The layers, lowest first (packages on one line are siblings: neither imports the other):

    errors                          the one error type
    core                            run folder, data, layers, losses, representations
    readout                         prototypes, calibration, the ``none`` rule, reading a state
    inference                       loading a run, generation, the explainer, monitors, serving
    training   evaluation           ``seer train``; ``seer evaluate`` (siblings)
    safety                          ``seer detox-eval`` (uses inference and evaluation)
    commands                        one thin ``main`` over a config dataclass per subcommand
    cli                             the parser over the commands
    __main__  __init__              ``python -m seer``; the public API

Every import counts, at module level or deferred inside a function or under
``TYPE_CHECKING``: a deferred import still makes the lower layer depend on the upper one.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "seer"

LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("core",),
    ("readout",),
    ("inference",),
    ("training", "evaluation"),
    ("safety",),
    ("commands",),
    ("cli",),
    ("__main__", "__init__"),
]
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}

#: Cycles allowed for now, each to be removed by the change that breaks it; the test fails
#: once one is gone, so that the entry goes too.
KNOWN_CYCLES: set[tuple[str, ...]] = set()  # none left: keep it that way


def _modules() -> dict[str, Path]:
    """``{"seer.core.run": path, "seer": path/__init__.py, ...}`` for every module."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _package(module: str) -> str:
    """The layer package of a module: ``seer.core.run`` -> ``core``, ``seer`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The seer modules ``module`` imports (``from seer.x import y`` counts ``seer.x.y`` when
    that is a module, else ``seer.x``); relative imports resolved."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import seer.core.run as r` etc.
                target = target.rpartition(".")[0]
            if target.startswith("seer") and target != module:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {m: _imports(m, path, known) for m, path in modules.items()}


def test_every_package_has_a_layer():
    packages = {_package(m) for m in _modules()}
    assert packages - set(RANK) == set(), "add the new package to LAYERS and this docstring"
    assert set(RANK) - packages == set(), "a package in LAYERS no longer exists"


def test_no_upward_or_sideways_imports():
    bad = []
    for module, targets in _graph().items():
        source = _package(module)
        for target in sorted(targets):
            dest = _package(target)
            if dest != source and RANK[dest] >= RANK[source]:
                bad.append(f"{module} -> {target}")
    assert bad == [], "imports that point up (or across siblings):\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the stack, 2 done
    cycles: list[list[str]] = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state[target] == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif state[target] == 0:
                visit(target, stack)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if state[module] == 0:
            visit(module, [])
    found = {tuple(c) for c in cycles}
    new = sorted(found - KNOWN_CYCLES)
    assert new == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in new)
    assert found >= KNOWN_CYCLES, f"gone, remove from KNOWN_CYCLES: {KNOWN_CYCLES - found}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The checker itself: a deferred import and a relative one are both found."""
    pkg = tmp_path / "seer" / "core"
    pkg.mkdir(parents=True)
    (tmp_path / "seer" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    path = pkg / "a.py"
    path.write_text("def f():\n    from seer.commands import main\nfrom . import b\n")
    known = {"seer", "seer.core", "seer.core.a", "seer.core.b", "seer.commands"}
    assert _imports("seer.core.a", path, known) == {"seer.commands", "seer.core.b"}
