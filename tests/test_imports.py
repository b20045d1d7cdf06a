"""
What may import what (docs/ARCHITECTURE.md, its last section), checked on
the source: every import counts, those inside functions too, except those
under C{if TYPE_CHECKING:}.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "spectrum"

#: the data plane: admission, the relay and what they use
DATA_PLANE = (
    "spectrum.admission",
    "spectrum.descriptors",
    "spectrum.analytics",
    "spectrum.balancer",
    "spectrum.eventlog",
    "spectrum.firewall",
    "spectrum.rulebook",
    "spectrum.geo",
    "spectrum.health",
    "spectrum.limits",
    "spectrum.listeners",
    "spectrum.proxy",
    "spectrum.record",
    "spectrum.refusals",
    "spectrum.resolver",
    "spectrum.runtime",
    "spectrum.sockets",
)


def _modules() -> Dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(tree: ast.AST) -> List[ast.AST]:
    found: List[ast.AST] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        else:
            found.extend(_imports(node))
    return found


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()

    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        targets: Set[str] = set()
        for node in _imports(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                assert isinstance(node, ast.ImportFrom)
                base = node.module or ""
                if node.level:
                    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in names:
                found = resolve(target)
                if found.startswith("spectrum.") and found != name:
                    targets.add(found)
        graph[name] = targets
    return graph


GRAPH = _graph()
ADMIN_AND_CLUSTER = sorted(name for name in GRAPH if name.startswith(("spectrum.cluster", "spectrum.admin")))


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _reached(module: str) -> Set[str]:
    """
    Every module C{module} imports, directly or not.
    """
    seen: Set[str] = set()
    todo = [module]
    while todo:
        for target in GRAPH.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_no_import_circles() -> None:
    """
    No module reaches itself through its imports.
    """
    circles = sorted(name for name in GRAPH if name in _reached(name))
    assert circles == []


def test_the_config_loader_is_pure() -> None:
    """
    C{spectrum.config} reaches the model, the access rules' values and the
    store URL parser only; the files it names are checked by
    C{spectrum.config_files}.
    """
    reached = {name for name in _reached("spectrum.config") if not name.startswith("spectrum.config.")}
    assert reached <= {"spectrum.model", "spectrum.rules", "spectrum.store", "spectrum.store.url", "spectrum.fileio"}


@pytest.mark.parametrize("module", sorted(name for name in GRAPH if _within(name, DATA_PLANE)))
def test_the_data_plane_imports_no_control_plane(module: str) -> None:
    """
    The data plane never imports the service, the admin site, the cluster,
    the store, the config loader or the start.
    """
    control = ("spectrum.service", "spectrum.admin", "spectrum.cluster", "spectrum.store")
    control += ("spectrum.config", "spectrum.config_files", "spectrum.tap", "spectrum.cli")
    assert sorted(name for name in GRAPH[module] if _within(name, control)) == []


@pytest.mark.parametrize("module", ADMIN_AND_CLUSTER)
def test_admin_and_cluster_reach_the_service_they_are_given(module: str) -> None:
    """
    The admin site and the cluster import neither the service nor the
    relay: they are handed the service.
    """
    forbidden = ("spectrum.service", "spectrum.listeners", "spectrum.proxy", "spectrum.tap")
    assert sorted(name for name in GRAPH[module] if _within(name, forbidden)) == []


def test_only_the_composition_root_builds_the_admin_and_the_cluster() -> None:
    """
    The service (the data plane's owner) imports neither the admin site
    nor the cluster; C{spectrum.compose} builds them beside it.
    """
    reached = _reached("spectrum.service")
    assert sorted(name for name in reached if _within(name, ("spectrum.admin", "spectrum.cluster"))) == []
    assert {"spectrum.service", "spectrum.admin.site", "spectrum.cluster.node"} <= set(GRAPH["spectrum.compose"])
