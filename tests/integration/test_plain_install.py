"""A plain `pip install .` (what the Dockerfile does, without the dev extra) must be enough to import
every module and run the CLI: a module that imports a dev-only package fails here, not in production."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

IMPORT_ALL = """
import importlib, pkgutil, cryptomon
names = [m.name for m in pkgutil.walk_packages(cryptomon.__path__, "cryptomon.") if not m.name.endswith("__main__")]
failed = []
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {exc!r}")
print(len(names), "modules")
assert not failed, failed
assert cryptomon.__file__.startswith(sys.prefix), cryptomon.__file__  # the installed copy, not src/
"""


def test_plain_install_imports_every_module_and_runs_the_cli(tmp_path):
    # from a copy of what the package is built from, so that the build leaves nothing in the checkout
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    # pip's wheel cache (filled by setup) makes this ~30 s; no --no-deps: the declared dependencies are the point
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(source)], capture_output=True, text=True, timeout=900
    )
    assert install.returncode == 0, install.stderr[-3000:]
    run = subprocess.run(
        [str(py), "-c", "import sys\n" + IMPORT_ALL], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    count = int(run.stdout.split()[0])
    package = ROOT / "src" / "cryptomon"
    expected = len([p for p in package.rglob("*.py") if p.name != "__main__.py" and p != package / "__init__.py"])
    assert count == expected, f"{count} modules imported, {expected} .py files in src/cryptomon"
    for argv in (["-m", "cryptomon", "--help"], ["-m", "cryptomon", "up", "--help"]):
        cli = subprocess.run([str(py), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stderr
        assert "Usage" in cli.stdout
