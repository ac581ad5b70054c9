"""The package is typed: ``py.typed`` ships with it and mypy passes on it with the configuration in
pyproject.toml (``[tool.mypy]``: which modules are checked more loosely, and why)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("mypy", reason="pip install mypy (a test extra)")


def _mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_mypy_passes_on_the_package():
    out = _mypy()
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]
    assert "Success: no issues found" in out.stdout
    assert int(out.stdout.split(" in ")[1].split()[0]) >= 90, out.stdout  # every module was checked


def test_mypy_fails_on_a_type_error(tmp_path):
    """The check can fail: the same configuration rejects a wrong annotation."""
    bad = tmp_path / "bad.py"
    bad.write_text("from celerynb import start\n\ncount: int = start\n")
    out = _mypy(str(bad))
    assert out.returncode == 1 and "Incompatible types in assignment" in out.stdout, out.stdout


def test_py_typed_marks_the_package():
    assert (ROOT / "celerynb" / "py.typed").is_file()
