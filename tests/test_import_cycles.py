"""No import cycles between megatron_sip's modules, and no new ones between its packages.

Read from the source (nothing is imported): every `import` counts, also those inside functions,
because a deferred import only hides a cycle until the day someone moves it to the top. Imports
under `if TYPE_CHECKING:` are skipped: they never run. Importing `a.b.c` runs `a.b` first, so it
counts as an import of every package on the way, except the importer's own parents (those are
already running).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

from tests.launch import REPO_ROOT

PACKAGE = "megatron_sip"

KNOWN_PACKAGE_CYCLES = {
    # The package pairs that still import each other; shrink this set, never grow it.
    ("megatron_sip.config", "megatron_sip.evaluate"),  # the schema holds eval's section; evaluate/run takes the root
    ("megatron_sip.config", "megatron_sip.model"),  # model/convert_hf.py loads a run config
    ("megatron_sip.model", "megatron_sip.parallel"),
    ("megatron_sip.evaluate", "megatron_sip.judges"),
    ("megatron_sip.sip", "megatron_sip.train"),  # train/loop.py picks sip/step.py's step; sip uses train's step
}


def _module_files() -> Dict[str, Path]:
    modules = {}
    for path in (REPO_ROOT / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        if _is_type_checking_block(child):
            yield from (n for branch in child.orelse for n in _import_nodes_of(branch))
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        yield from _import_nodes(child)


def _import_nodes_of(node: ast.AST) -> Iterator[ast.AST]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    yield from _import_nodes(node)


def _imported_names(module: str, path: Path) -> Iterator[str]:
    for node in _import_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join(package + ([node.module] if node.module else []))
        yield base
        yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph() -> Dict[str, Set[str]]:
    """module -> the megatron_sip modules importing it runs (see the module docstring)."""
    files = _module_files()
    graph = {}
    for module, path in files.items():
        edges = set()
        for name in _imported_names(module, path):
            if not name.startswith(PACKAGE):
                continue
            while name not in files and "." in name:  # `from pkg.mod import func` -> pkg.mod
                name = name.rsplit(".", 1)[0]
            parts = name.split(".")
            for depth in range(2, len(parts) + 1):
                target = ".".join(parts[:depth])
                if target in files and target != module and not module.startswith(target + "."):
                    edges.add(target)
        graph[module] = edges
    return graph


def strongly_connected(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Groups of more than one node that reach each other (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    groups = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def _package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def package_cycles(graph: Dict[str, Set[str]]) -> Set[Tuple[str, str]]:
    """Pairs of top-level packages (or modules) of megatron_sip that import each other."""
    edges = {(_package_of(a), _package_of(b)) for a, targets in graph.items() for b in targets
             if _package_of(a) != _package_of(b)}
    return {(a, b) for a, b in edges if a < b and (b, a) in edges}


def test_the_graph_sees_deferred_imports_and_skips_type_checking_ones() -> None:
    graph = import_graph()
    assert "megatron_sip.sip.step" in graph["megatron_sip.train.loop"]  # imported inside build_step
    assert "megatron_sip.config" not in graph["megatron_sip.model.logprob_head"]  # TYPE_CHECKING only
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_itself_through_others() -> None:
    assert strongly_connected(import_graph()) == []


def test_no_new_cycle_between_packages() -> None:
    new = package_cycles(import_graph()) - KNOWN_PACKAGE_CYCLES
    assert not new, f"packages that now import each other: {sorted(new)}"
