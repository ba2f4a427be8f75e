"""The package's floors: every import of a coldrec module goes to a lower floor.

Data goes down the floors, cli -> stage -> model / features -> io, and never climbs back: a
module never imports (at the top or inside a function) one on its own floor or above. A
new module takes the floor of what it is; a new import upwards is a design change, made
here on purpose, not by accident.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "coldrec"

FLOORS: list[tuple[str, ...]] = [
    ("__main__",),  # python -m coldrec
    ("cli",),  # the command line
    ("pipeline", "tune", "serve"),  # every stage, from one config; many trainings, on validation; HTTP
    ("serving",),  # a model and index pair, answered per request
    ("train", "recall", "evaluate", "prepare", "synth", "datasets", "inspection"),  # the stages
    ("tune_report",),  # tune's HTML report
    ("index",),  # stages that others build on
    ("embed",),
    ("stats",),
    ("term_weights",),  # the served terms' weights, fitted on validation
    ("batches", "checkpoint", "profiles", "validation", "warmstart"),  # parts of the training loop
    ("model",),  # the DropoutNet towers, the model directory
    ("served", "row_inputs"),  # the served score terms; a request's rows -> inputs
    ("features",),  # tables -> tensors
    ("roles",),  # how each content column is read, and why
    ("config",),
    ("losses", "schema", "io"),
    ("errors", "log", "options", "result", "charts"),
]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("coldrec."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "coldrec":
            found.update(alias.name for alias in node.names if alias.name != "__version__")
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("coldrec."))
    return found - {path.stem}


def test_every_module_has_a_floor():
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    placed = [name for floor in FLOORS for name in floor]
    assert sorted(placed) == sorted(set(placed)), "a module is on two floors"
    assert modules == set(placed), f"without a floor: {modules - set(placed)}; gone: {set(placed) - modules}"


def test_imports_only_go_down():
    floor_of = {name: level for level, floor in enumerate(FLOORS) for name in floor}
    upward = [
        f"{path.stem} (floor {floor_of[path.stem]}) imports {name} (floor {floor_of[name]})"
        for path in sorted(PACKAGE.glob("*.py")) if path.stem != "__init__"
        for name in sorted(_imports(path)) if floor_of[name] <= floor_of[path.stem]
    ]
    assert not upward, "\n".join(upward)
