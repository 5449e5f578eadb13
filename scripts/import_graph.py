"""Print which of the project's packages imports which, and fail on an import that goes up a floor.

    .venv/bin/python scripts/import_graph.py            # the package graph and the floors; exit 1 on an upward import
    .venv/bin/python scripts/import_graph.py --modules  # every module-level edge, file by file

It reads the source with ``ast`` (nothing is imported), so it also sees imports inside functions. The floors are the
layout's rule: a package may import its own floor and the floors below it, never one above.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lowest floor first. A package may import packages on its own floor or below, never above. Sub-packages of
# `amoslabel` are floors of their own: the core (`amoslabel` itself) at the bottom, the command line and the server
# launchers at the top. `amoslabel/__main__.py` is the command line's entry point (`python -m amoslabel`) and counts
# as part of `amoslabel.cli`: no module imports it.
FLOORS: list[list[str]] = [
    ["amoslabel"],
    ["amoslabel.cluster"],
    ["amoslabel.dicom"],
    ["amoslabel.data"],
    ["evaluation"],
    ["models"],
    ["review"],
    ["strategies"],
    ["cohort"],
    ["app", "amoslabel.cli", "amoslabel.server", "bench"],
]
# Within the top floor, only these edges are allowed (one way: the other would be a cycle).
SAME_FLOOR_ORDER = {("app", "amoslabel.server"), ("amoslabel.cli", "amoslabel.server"), ("bench", "amoslabel.server")}
SOURCES = ["amoslabel", "models", "review", "strategies", "cohort", "evaluation", "app", "bench"]


def package_of(module: str) -> str | None:
    """The layout package that a dotted module name belongs to, or None for third-party modules."""
    parts = module.split(".")
    if parts[0] not in SOURCES:
        return None
    if parts[:2] == ["amoslabel", "__main__"]:
        return "amoslabel.cli"
    if parts[0] == "amoslabel" and len(parts) > 1 and f"amoslabel.{parts[1]}" in _FLOOR_OF:
        return f"amoslabel.{parts[1]}"
    return parts[0]


_FLOOR_OF = {package: level for level, floor in enumerate(FLOORS) for package in floor}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every absolute module name that ``path`` imports, anywhere in the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def edges() -> dict[tuple[str, str], set[str]]:
    """(from package, to package) -> the files that make that edge."""
    graph: dict[tuple[str, str], set[str]] = defaultdict(set)
    for source in SOURCES:
        for path in sorted((ROOT / source).rglob("*.py")):
            mine = package_of(module_name(path))
            for name in imports_of(path):
                theirs = package_of(name)
                if theirs and theirs != mine and mine:
                    graph[(mine, theirs)].add(str(path.relative_to(ROOT)))
    return graph


def upward(graph: dict[tuple[str, str], set[str]]) -> list[tuple[str, str]]:
    bad = []
    for a, b in graph:
        if _FLOOR_OF[b] > _FLOOR_OF[a]:
            bad.append((a, b))
        elif _FLOOR_OF[b] == _FLOOR_OF[a] and (a, b) not in SAME_FLOOR_ORDER:
            bad.append((a, b))
    return sorted(bad)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true", help="list the files behind each edge")
    args = parser.parse_args()
    graph = edges()
    print("floors (lowest first):")
    for level, floor in enumerate(FLOORS):
        print(f"  {level}: {', '.join(floor)}")
    print("\nimports:")
    for package in sorted(_FLOOR_OF, key=lambda p: (_FLOOR_OF[p], p)):
        targets = sorted({b for a, b in graph if a == package}, key=lambda p: (_FLOOR_OF[p], p))
        print(f"  {package:16s} -> {', '.join(targets) or '(nothing of ours)'}")
        if args.modules:
            for target in targets:
                print(f"      {target}: {', '.join(sorted(graph[(package, target)]))}")
    bad = upward(graph)
    if bad:
        print("\nUPWARD imports (a lower floor importing a higher one, or a top-floor edge not allowed):")
        for a, b in bad:
            print(f"  {a} -> {b}: {', '.join(sorted(graph[(a, b)]))}")
        return 1
    print("\nno upward import")
    return 0


if __name__ == "__main__":
    sys.exit(main())
