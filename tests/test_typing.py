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


def _unannotated(obj: object) -> list[str]:
    """Parameters and returns of ``obj`` (or of a class's own public methods) without annotations."""
    import inspect

    functions = [obj] if not inspect.isclass(obj) else [
        v for k, v in vars(obj).items() if inspect.isfunction(v) and (not k.startswith("_") or k == "__init__")]
    missing = []
    for f in functions:
        sig = inspect.signature(f)
        missing += [f"{f.__qualname__}({p})" for p, v in sig.parameters.items()
                    if p not in ("self", "cls") and v.annotation is inspect.Parameter.empty]
        if sig.return_annotation is inspect.Signature.empty and f.__name__ != "__init__":
            missing.append(f"{f.__qualname__} -> ?")
    return missing


def test_public_api_is_annotated():
    import celerynb

    names = [n for n in celerynb.__all__ if n != "__version__"] + ["map"]
    assert [m for n in names for m in _unannotated(getattr(celerynb, n))] == []
    assert [m.split(".")[-1] for m in _unannotated(lambda x: x)] == ["<lambda>(x)", "<lambda> -> ?"]  # it can fail
