"""The package's shape: wings by concern with imports running one way down, no import circle,
short modules, and each heavy or optional dependency imported in one place.

Every import counts, including those inside functions and under TYPE_CHECKING: a lazy import
hides a circle from Python, not from a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hfenc"

# Lower ranks never import higher ones; a wing may import itself (acyclically) and anything below.
RANK = {
    "errors": 0, "faults": 0,
    "model": 1,
    "plans": 2, "compute": 2,
    "io": 3,
    "jobs": 4,
    "searching": 5, "compare": 5.5, "verification": 5,
    "search_sparse": 4.5,
    "cli": 6,
    "__init__": 7, "__main__": 7,
}
MAX_LINES = 600
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """hfenc modules that `name` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            # `import hfenc.x.y` also imports hfenc.x: count the longest hfenc module it names
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target not in (name, "hfenc"):
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _wing(name: str) -> str:
    return name.split(".")[1] if "." in name else "__init__"


def test_every_module_belongs_to_a_known_wing():
    assert {_wing(m) for m in MODULES} <= set(RANK), {_wing(m) for m in MODULES} - set(RANK)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each circle a depth-first walk meets, as the path that closes it."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return circles


def test_the_import_graph_has_no_circle():
    circles = _circles(GRAPH)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_walker_sees_lazy_imports_and_circles():
    # the checks above are only worth something if lazy imports count and a circle is caught
    assert "hfenc.plans.lock" in GRAPH["hfenc.cli.models"]  # imported inside a command function
    assert "hfenc.model.freeze" in GRAPH["hfenc.model.encoder"]  # imported inside HFTextEncoder.lock
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _circles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_imports_run_one_way_down():
    upward = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
                    if _wing(a) != _wing(b) and RANK[_wing(b)] >= RANK[_wing(a)])
    assert not upward, "imports against the layering: " + ", ".join(upward)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_short(name):
    lines = MODULES[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{name} has {lines} lines (limit {MAX_LINES}): split it by job"


def test_the_jobs_wing_has_no_long_function():
    # the Ray runner grew 200-line functions with a dozen positional parameters once; keep it readable
    long = []
    for name, path in MODULES.items():
        if _wing(name) != "jobs":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name} ({length} lines)")
    assert not long, "functions over ~80 lines: " + ", ".join(long)


# Each third-party dependency that is heavy or optional is imported by the modules named here only.
CLI = {name for name in MODULES if _wing(name) == "cli"}
OWNERS = {
    "typer": CLI,
    "rich": CLI,
    "openvino": {"hfenc.compute.openvino"},
    "nncf": {"hfenc.compute.openvino"},
    "ray": {name for name in MODULES if name.startswith("hfenc.jobs.ray")},
}
# Ray Data works in Arrow tables (ray[data] needs pyarrow), so the Ray modules may use it too.
OWNERS["pyarrow"] = {"hfenc.io.parquet", *OWNERS["ray"]}


@pytest.mark.parametrize("dependency", sorted(OWNERS))
def test_a_dependency_is_imported_where_it_belongs(dependency):
    users = set()
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n == dependency or n.startswith(dependency + ".") for n in names):
                users.add(name)
    assert users <= OWNERS[dependency], f"{dependency} imported by {sorted(users - OWNERS[dependency])}"
