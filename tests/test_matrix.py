"""The version matrix: noxfile.py's sessions, the workflow that runs them (.github/workflows/
matrix.yml) and the minimums pyproject.toml declares agree, so a declared minimum is a release
a matrix session tests."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "matrix.yml"
# The combination that proves each declared minimum: (package, where pyproject declares it).
LOWEST = [("ipykernel-6", "ipykernel"), ("ipykernel-6", "ipython"), ("ipywidgets-8.0", "ipywidgets"),
          ("celery-lowest", "celery"), ("celery-lowest", "kombu"), ("jupyterlab-oldest", "jupyterlab")]


def _matrix() -> dict[str, tuple[list[str], list[str]]]:
    """noxfile.MATRIX, read without importing nox (not a test dependency)."""
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    env: dict[str, object] = {}
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id.isupper() and node.value is not None:
            env[target.id] = eval(compile(ast.Expression(node.value), "noxfile.py", "eval"), {}, env)  # literals only
    return env["MATRIX"]  # type: ignore[return-value]


def _lower_bound(requirement: str) -> str | None:
    m = re.search(r">=\s*([\w.]+)", requirement)
    return m.group(1) if m else None


def _declared() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    out = {}
    for req in reqs:
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower()
        if (bound := _lower_bound(req)) and name not in out:
            out[name] = bound
    return out


def test_workflow_runs_every_session_and_validates():
    flow = yaml.safe_load(WORKFLOW.read_text())
    sessions = flow["jobs"]["nox"]["strategy"]["matrix"]["session"]
    assert sessions == ["docs"] + [f"matrix({name})" for name in _matrix()]
    run = "\n".join(s.get("run", "") for s in flow["jobs"]["nox"]["steps"])
    assert 'nox -s "${{ matrix.session }}"' in run
    pytest.importorskip("check_jsonschema", reason="pip install check-jsonschema (a test extra)")
    out = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                          str(WORKFLOW)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_session_runs_test_files_that_exist():
    for name, (_, files) in _matrix().items():
        assert files, name
        for f in files:
            assert (ROOT / f).is_file(), f"{name}: {f}"


@pytest.mark.parametrize(("combination", "package"), LOWEST)
def test_declared_minimums_are_what_the_matrix_tests(combination, package):
    pins = dict(re.match(r"([\w-]+)==([\w.]+)", p).groups() for p in _matrix()[combination][0] if "==" in p)
    assert Version(pins[package]) == Version(_declared()[package]), (
        f"pyproject.toml declares {package}>={_declared()[package]} but matrix({combination}) tests {pins[package]}")
