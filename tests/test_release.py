"""Release readiness: ``python -m build`` gives an sdist and a wheel that ``twine check`` accepts;
the wheel, installed (not editable) into a fresh virtualenv, works from the command line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import uuid
import zipfile
from pathlib import Path

import psutil
import pytest
from conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
VERSION_FILE = ROOT / "celerynb" / "_version.py"


def _version() -> str:
    return re.search(r'__version__ = "([^"]+)"', VERSION_FILE.read_text()).group(1)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    # Without isolation when hatchling is here (fast, offline); isolated otherwise, as a release would.
    args = [sys.executable, "-m", "build", "--outdir", str(out)]
    if importlib.util.find_spec("hatchling") is not None:
        args.append("--no-isolation")
    done = subprocess.run([*args, str(ROOT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist, "dir": out}


def test_build_gives_sdist_and_wheel_named_by_the_single_version(dist):
    version = _version()
    assert dist["wheel"].name == f"celerynb-{version}-py3-none-any.whl"
    assert dist["sdist"].name == f"celerynb-{version}.tar.gz"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and not re.search(r"^version\s*=", pyproject, re.M)
    assert 'path = "celerynb/_version.py"' in pyproject
    with zipfile.ZipFile(dist["wheel"]) as whl:
        metadata = whl.read(f"celerynb-{version}.dist-info/METADATA").decode()
    assert f"\nVersion: {version}\n" in metadata


def test_twine_check_passes(dist):
    done = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(dist["wheel"]), str(dist["sdist"])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2


def test_wheel_holds_the_package_only(dist):
    version = _version()
    with zipfile.ZipFile(dist["wheel"]) as whl:
        names = whl.namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"celerynb", f"celerynb-{version}.dist-info"}, top
    assert not [n for n in names if "/tests/" in n or n.split("/")[-1].startswith("test_")]
    assert not [n for n in names if n.endswith((".ipynb", ".pyc")) or "__pycache__" in n]
    for needed in ("celerynb/nbval_sanitize.cfg", "celerynb/testing.py", "celerynb/_version.py", "celerynb/py.typed",
                   f"celerynb-{version}.dist-info/licenses/LICENSE", f"celerynb-{version}.dist-info/entry_points.txt"):
        assert needed in names, needed
    assert [n for n in names if n.startswith("celerynb/workers/sample_documents/")], "the guide's sample documents"


def test_sdist_has_what_a_rebuild_needs(dist):
    with tarfile.open(dist["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "celerynb/_version.py",
                   "celerynb/nbval_sanitize.cfg", "tests/conftest.py"):
        assert needed in names, needed
    assert (ROOT / "LICENSE").read_text().strip()
    assert f"## [{_version()}]" in (ROOT / "CHANGELOG.md").read_text()


# -- the wheel in a fresh virtualenv ---------------------------------------------------------
def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid", "environ"]):
        try:
            if (proc.info.get("environ") or {}).get("CELERYNB_RELEASE_RUN") == marker \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
    return found


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_up_task_down(dist, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py, cli = venv / "bin" / "python", venv / "bin" / "celerynb"
    # pip's wheel cache keeps this fast after the first run; --find-links lets a wheelhouse
    # (CELERYNB_WHEELHOUSE) stand in for the index.
    install = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(dist["wheel"])]
    if os.environ.get("CELERYNB_WHEELHOUSE"):
        install[4:4] = ["--find-links", os.environ["CELERYNB_WHEELHOUSE"]]
    done = subprocess.run(install, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items()
           if k not in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(CELERYNB_RUNTIME_DIR=str(tmp_path / "runtime"), CELERYNB_DOCUMENTS_DIR=str(tmp_path / "docs"),
               CELERYNB_RELEASE_RUN=marker)

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)

    where = run(str(py), "-c", "import celerynb, json; print(json.dumps([celerynb.__version__, celerynb.__file__]))")
    assert where.returncode == 0, where.stderr
    version, location = json.loads(where.stdout)
    assert version == _version()
    assert Path(location).is_relative_to(venv), f"imported {location}, not the installed wheel"
    sanitize = run(str(py), "-m", "celerynb.nbval_sanitize", "--path")
    assert sanitize.returncode == 0 and Path(sanitize.stdout.strip()).is_file()

    up = run(str(cli), "up", "--detach", "--workers", "1")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        task = run(str(py), "-c",
                   "from celerynb.workers.tasks import long_process\n"
                   "print(long_process.delay([1, 2, 3], delay=0.01).get(timeout=60)['processed'])")
        assert task.returncode == 0, task.stderr[-3000:]
        assert task.stdout.strip() == "3"
        status = run(str(cli), "status")
        assert status.returncode == 0 and "***" in status.stdout, status.stdout + status.stderr
    finally:
        down = run(str(cli), "down", timeout=60)
    assert down.returncode == 0, down.stdout + down.stderr
    wait_for(lambda: not _marked(marker), timeout=20, message="celerynb down to stop every process")
