"""The package's layering, read from the source with ``ast``: imports go down (or sideways
within a layer), never up; no import cycle between modules, type-only imports included; no
function-level import of mqttd's own modules (the usual way to hide a cycle).

Layers, bottom to top (docs/ARCHITECTURE.md): leaf services < mqtt < core < transport,
trace, sys_topics, access, store, modules < mgmt < ctl, http, bridge, cluster < node < server
< cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "mqttd"

#: Leaf services: importable from anywhere, importing nothing above them.
LEAF = {"mqttd", "mqttd._accel", "mqttd.config", "mqttd.hooks", "mqttd.plugins",
        "mqttd.metrics", "mqttd._metrics_py", "mqttd._metric_names", "mqttd.stats",
        "mqttd.supervisor", "mqttd._speedups", "mqttd.sdnotify", "mqttd.config_sources",
        "mqttd.logsetup", "mqttd.alarms"}

#: Rank of each layer (a module's layer is its first package below mqttd, or its name).
RANK = {
    "mqtt": 1,
    "core": 2,
    "transport": 3, "trace": 3, "sys_topics": 3, "access": 3, "store": 3, "modules": 3,
    "sysmon": 3, "overload": 3,
    "mgmt": 4,
    "ctl": 5, "http": 5, "bridge": 5, "cluster": 5,
    "node": 6,
    "server": 7, "workers": 7,
    "cli": 8, "__main__": 9,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def layer(mod: str) -> tuple[str, int]:
    """(layer name, rank); leaf services rank 0."""
    if mod in LEAF or any(mod.startswith(leaf + ".") for leaf in LEAF - {"mqttd"}):
        return "leaf", 0
    top = mod.split(".")[1]
    if top not in RANK:
        raise AssertionError(f"{mod} is in no layer: add it to RANK in {__file__} and to "
                             "docs/ARCHITECTURE.md")
    return top, RANK[top]


class _Imports(ast.NodeVisitor):
    """Every import of an mqttd module in one file, with its line and whether it sits
    inside a function."""

    def __init__(self, mod: str, is_pkg: bool, known: set[str]) -> None:
        self.mod, self.is_pkg, self.known = mod, is_pkg, known
        self.found: list[tuple[str, int, bool]] = []
        self._seen: set[tuple[str, int]] = set()
        self._depth = 0

    def _resolve(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = self.mod.split(".")
        base = base[: len(base) - node.level + (1 if self.is_pkg else 0)]
        return ".".join(base + ([node.module] if node.module else []))

    def _add(self, target: str, line: int) -> None:
        # "from pkg import name" may name a submodule: count the most specific known module.
        while target and target not in self.known:
            target = target.rpartition(".")[0]
        if target.startswith("mqttd") and target != self.mod and (target, line) not in self._seen:
            self._seen.add((target, line))
            self.found.append((target, line, self._depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.startswith("mqttd"):
                self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._resolve(node)
        if not base.startswith("mqttd"):
            return
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in self.known else base, node.lineno)

    def _func(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _func


def import_graph() -> dict[str, list[tuple[str, int, bool]]]:
    mods = modules()
    known = set(mods) | {"mqttd._speedups._codec", "mqttd._speedups._trie",
                         "mqttd._speedups._metrics"}
    graph = {}
    for mod, path in mods.items():
        visitor = _Imports(mod, path.name == "__init__.py", known)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        graph[mod] = visitor.found
    return graph


def test_every_module_has_a_layer() -> None:
    for mod in modules():
        layer(mod)


def test_imports_only_go_down() -> None:
    upward = []
    for mod, imports in import_graph().items():
        name, rank = layer(mod)
        for target, line, _ in imports:
            if target == "mqttd":
                continue  # the package itself holds only __version__
            tname, trank = layer(target)
            if name == "leaf" and tname != "leaf":
                upward.append(f"{mod}:{line} (leaf service) imports {target} ({tname})")
            elif name == "mqtt" and tname not in ("mqtt",) and target not in (
                    "mqttd._accel", "mqttd._speedups") and not target.startswith(
                    "mqttd._speedups."):
                upward.append(f"{mod}:{line}: the wire protocol imports {target}")
            elif trank > rank:
                upward.append(f"{mod}:{line} ({name}) imports {target} ({tname}), a layer above")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = {m: {t for t, _, _ in imps} for m, imps in import_graph().items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            # A package importing its own submodules (re-exports) is not a cycle.
            if t.startswith(m + ".") or m.startswith(t + "."):
                continue
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_function_level_imports_of_mqttd() -> None:
    """Only the command line imports lazily, and only downward: ``mqttd ctl`` and
    ``mqttd --help`` must not pay for importing the broker they do not run."""
    hidden = []
    for mod, imports in import_graph().items():
        for target, line, in_function in imports:
            if not in_function:
                continue
            if layer(mod)[0] == "cli" and layer(target)[1] < layer(mod)[1]:
                continue
            hidden.append(f"{mod}:{line} imports {target} inside a function")
    assert not hidden, "\n".join(hidden)


@pytest.mark.parametrize("source,expected", [
    ("from ..node import Node", "mqttd.node"),
    ("from . import protocol", "mqttd.ctl.protocol"),
    ("from ..core import channel", "mqttd.core.channel"),
])
def test_resolver(source: str, expected: str) -> None:
    """The checker itself resolves relative imports and submodule imports (a checker that
    resolved nothing would pass every tree)."""
    visitor = _Imports("mqttd.ctl.server", False, set(modules()))
    visitor.visit(ast.parse(source))
    assert [t for t, _, _ in visitor.found] == [expected]


def test_checker_catches_an_upward_import(tmp_path: Path) -> None:
    """An import from core up to node is reported (the rule is not vacuous)."""
    visitor = _Imports("mqttd.core.channel", False, set(modules()))
    visitor.visit(ast.parse("from ..node import Node\ndef f():\n    from ..server import x\n"))
    assert [(t, fn) for t, _, fn in visitor.found] == [("mqttd.node", False),
                                                        ("mqttd.server", True)]
    assert layer("mqttd.node")[1] > layer("mqttd.core.channel")[1]
