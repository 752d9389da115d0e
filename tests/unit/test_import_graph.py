"""The house has no import circle: every `import cryptomon.…` anywhere in a module (top level or inside a
function) is an edge, and the graph of the package's modules has no cycle."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "cryptomon"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that `path` imports (`from cryptomon.x import y` counts y when y is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known}
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    # a package's __init__ is imported with any of its modules, but ours are empty: only real imports count
    return {name: imports(path, known) - {name} for name, path in files.items()}


def test_the_import_graph_is_read():
    g = graph()
    assert "cryptomon.worker.service" in g["cryptomon.cli"]  # a function-level import is an edge
    assert "cryptomon.settings" in g["cryptomon.worker.service"]


def test_no_import_circle():
    try:
        order = list(TopologicalSorter(graph()).static_order())
    except CycleError as exc:
        raise AssertionError(f"import circle: {' -> '.join(exc.args[1])}") from None
    assert order.index("cryptomon.settings") < order.index("cryptomon.cli")


# the stages: each runs as a process of its own (or, for services, starts the ones the stages need)
STAGES = {"ingestion", "worker", "book", "spark", "retention", "simulator", "alerts", "web", "services"}
# what every stage may read: the exchange's protocol, the pipeline's infrastructure and shared definitions
SHARED = {"binance", "kafka", "db", "dashboards"}
TOP = {"cryptomon.cli", "cryptomon.__main__", "cryptomon.supervisor"}  # they wire the stages together


def package_of(module: str) -> str | None:
    """The stage or shared package of `cryptomon.x.y` (x), None for a top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in STAGES | SHARED) else None


def test_the_packages_are_the_ones_named_here():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == STAGES | SHARED, "a new package must be placed among STAGES or SHARED"


def test_no_stage_imports_another():
    crossings = [
        f"{module} -> {target}"
        for module, targets in graph().items()
        if module not in TOP
        for target in targets
        if package_of(target) in STAGES and package_of(target) != package_of(module)
    ]
    assert crossings == [], "a stage (or a shared or core module) imports a stage"


def test_the_stage_rule_is_enforced_on_a_crossing():
    # the check itself: an import of the ingestion from the worker would be reported
    assert package_of("cryptomon.ingestion.frames") == "ingestion" and package_of("cryptomon.worker.rows") == "worker"
    assert package_of("cryptomon.settings") is None and package_of("cryptomon.binance.schema") == "binance"
