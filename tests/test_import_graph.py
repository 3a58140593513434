"""The whiteboard of parts holds: packages import only the layers below them, so there is no cycle.

common → flower_ext, tasks → strategies → client, server → simulations. Every import counts, also one
inside a function: a late import hides a dependency from the reader, not from the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: package -> the FedShield packages it may import
ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "flower_ext": {"common"},
    "tasks": {"common"},
    "strategies": {"common", "tasks", "flower_ext"},
    "client": {"common", "tasks", "strategies", "flower_ext"},
    "server": {"common", "tasks", "strategies", "flower_ext"},
    "simulations": {"common", "tasks", "strategies", "flower_ext", "client", "server"},
}


def _imports(path: Path) -> set[str]:
    """The ``fedshield.<package>`` names ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        found |= {n.split(".")[1] for n in names if n.startswith("fedshield.") and n.count(".") >= 1}
    return found


def test_every_package_imports_only_the_layers_below_it() -> None:
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for target in _imports(path) - allowed - {package}:
                wrong.append(f"{path.relative_to(ROOT)} imports fedshield.{target}")
    assert wrong == []


def test_the_allowed_graph_itself_has_no_cycle_and_covers_every_package() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks", "deploy", "docs"}
    assert packages == set(ALLOWED)
    order: list[str] = []
    while len(order) < len(ALLOWED):  # a topological order exists only without a cycle
        ready = [p for p, deps in ALLOWED.items() if p not in order and deps <= set(order)]
        assert ready, f"cycle among {set(ALLOWED) - set(order)}"
        order += sorted(ready)
