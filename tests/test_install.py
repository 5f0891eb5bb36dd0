"""Packaging: the wheel ships the weights through explicit package data without setuptools
warnings, the heavy extras stay optional, and `make demo` installs no extra."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "world_model" / "weights"


def test_every_weights_folder_is_explicit_package_data():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    package_data = dict(cfg["options.package_data"])
    folders = sorted({f.parent.relative_to(WEIGHTS).as_posix() for f in WEIGHTS.rglob("*.safetensors")})
    assert {"autoencoder", "backbone", "teacher/backbone"} <= set(folders)
    for name in folders:
        key = "world_model.weights." + name.replace("/", ".")
        assert key in package_data, f"setup.cfg [options.package_data] needs `{key} = *.safetensors, *.json`"
        assert {p.strip() for p in package_data[key].split(",")} == {"*.safetensors", "*.json"}, key


def test_make_demo_installs_no_extra_and_make_test_adds_them(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("no make")
    venv = tmp_path / "venv"  # missing: `make -n` prints the whole set-up without running it

    def dry_run(target: str) -> str:
        proc = subprocess.run(["make", "-n", f"VENV={venv}", target], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    demo, test = dry_run("demo"), dry_run("test")
    assert "[gpu" not in demo and '-m pip install -q -e . "torch==' in demo and "sanawm-gym demo" in demo
    assert '-m pip install -q -e ".[gpu,test]" "torch==' in test and "pytest" in test
    assert demo.index('install -q "torch==') < demo.index("install -q -e .")  # torch first


def _setuptools_version() -> tuple[int, ...]:
    try:
        import setuptools
    except ImportError:
        return (0,)
    return tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())


@pytest.mark.skipif(_setuptools_version() < (70, 1), reason="needs setuptools >= 70.1 (bdist_wheel built in)")
def test_wheel_ships_the_weights_without_setuptools_warnings(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("sanawm_gym", "world_model", "policies"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    (src / "world_model" / "__pycache__").mkdir()  # a stray cache folder is not a package
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", ".",
                           "-w", str(tmp_path / "dist")], cwd=src, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "would be ignored" not in log and "absent from the `packages`" not in log, log[-3000:]
    (wheel,) = (tmp_path / "dist").glob("sanawm_gym-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for f in sorted(WEIGHTS.rglob("*")):
        if f.suffix in (".safetensors", ".json"):
            assert f"world_model/weights/{f.relative_to(WEIGHTS).as_posix()}" in names
    assert not any("__pycache__" in n or n.startswith(("tests/", "checkpoints/", "examples/")) for n in names)
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    for heavy in ("flash-linear-attention", "triton", "nvidia-modelopt"):
        (line,) = [r for r in requires if r.split()[1].startswith(heavy)]
        assert 'extra == "gpu"' in line, line
