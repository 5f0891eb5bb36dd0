"""The import graph runs one way: geometry <- world_model <- sanawm_gym."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_in_fresh_interpreter(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_world_model_never_imports_the_simulator():
    """Importing the model library, its trainer and its scoring loads no ``sanawm_gym``."""
    modules = _imported_in_fresh_interpreter(
        "import world_model, world_model.train, world_model.scoring, world_model.data, world_model.bench_streaming; "
        "from world_model import WorldModel, WorldState")
    assert "world_model.world_model" in modules
    assert sorted(m for m in modules if m.split(".")[0] == "sanawm_gym") == []


def test_geometry_imports_nothing_else_of_the_project():
    modules = _imported_in_fresh_interpreter("import world_model.geometry")
    project = sorted(m for m in modules if m.split(".")[0] in ("world_model", "sanawm_gym", "policies"))
    assert all(m == "world_model" or m.startswith("world_model.geometry") for m in project), project


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_no_source_file_of_world_model_names_sanawm_gym_and_training_imports_no_command():
    """Also lazy imports inside functions: a static read of every file."""
    for path in sorted((ROOT / "world_model").rglob("*.py")):
        bad = sorted(n for n in _imports(path) if n.split(".")[0] == "sanawm_gym")
        assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"
    for path in sorted((ROOT / "world_model" / "train").rglob("*.py")):
        bad = sorted(n for n in _imports(path) if n.startswith(("world_model.bench", "sanawm_gym")))
        assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


def test_the_reference_world_does_not_import_the_envs():
    for path in sorted((ROOT / "sanawm_gym" / "reference_world").rglob("*.py")) + [ROOT / "sanawm_gym" / "kinematics.py"]:
        bad = sorted(n for n in _imports(path) if n.startswith(("sanawm_gym.envs", "sanawm_gym.cli", "sanawm_gym.tasks")))
        assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"
    kinematics = _imports(ROOT / "sanawm_gym" / "kinematics.py")
    assert not any(n.startswith("sanawm_gym.reference_world") for n in kinematics)
