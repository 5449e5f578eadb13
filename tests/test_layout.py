"""The layout's rules, checked on the source: no package imports a floor above it, no file grows past 600 lines; and
the environment leaves out what only costs an import."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

PACKAGES = ("amoslabel", "app", "bench", "cohort", "evaluation", "models", "review", "strategies", "scripts", "tests")
MAX_LINES = 600


def test_no_package_imports_a_floor_above_it():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "import_graph.py")], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0 and "no upward import" in done.stdout, done.stdout + done.stderr


def test_the_import_graph_sees_an_upward_import():
    """The checker itself: a core module importing the review package is reported."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import import_graph
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    graph = import_graph.edges()
    assert ("amoslabel.data", "amoslabel") in graph and not import_graph.upward(graph)
    graph[("amoslabel", "review")] = {"amoslabel/volume.py"}
    graph[("app", "amoslabel.cli")] = {"app/main.py"}  # top floor: only the listed edges
    assert import_graph.upward(graph) == [("amoslabel", "review"), ("app", "amoslabel.cli")]


def test_no_source_file_is_over_600_lines():
    long = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES:
                long[str(path.relative_to(ROOT))] = lines
    assert not long, f"split these files by job: {long}"


def test_the_environment_leaves_out_what_only_costs_an_import():
    """scripts/bootstrap.sh removes what monailabel's monai extras bring and nothing here uses: mlflow (MONAI imports
    it whenever it is installed, about 1 s of CPU in every process) and the CUDA torchvision."""
    import importlib.util

    assert importlib.util.find_spec("mlflow") is None
    assert importlib.util.find_spec("torchvision") is None
