"""Sessions for the docs, the suite and the version matrix: ``nox -l`` lists them.

    nox -s docs                 # the documentation site, warnings as errors -> docs/_build/html
    nox -s tests                # the whole suite in its own virtualenv (what .ci/run runs)
    nox -s matrix               # kernel, widget and browser tests on each combination below
    nox -s "matrix(ipykernel-7.1)" -- -x        # one combination; arguments after -- go to pytest
    nox -R -s "matrix(newest)"                  # -R: reuse its virtualenv and skip the installs

Each matrix combination pins what it tests (on top of ``pip install -e .``) and runs only the
tests that exercise it, so a session stays short. The pins below are the releases the
minimums in ``pyproject.toml`` were proven with: change both together.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["docs", "matrix"]
nox.options.reuse_existing_virtualenvs = True

# What the kernel, widget and browser tests need besides the package itself.
TEST_DEPS = ["pytest>=8", "pytest-timeout>=2.2", "psutil>=5.9", "nbformat>=5.9", "nbclient>=0.10"]
BROWSER_DEPS = ["playwright>=1.45"]

KERNEL_TESTS = ["tests/test_kernel_magics.py", "tests/test_interrupt.py", "tests/test_compat.py"]
WIDGET_TESTS = ["tests/test_progress.py", "tests/test_table.py"]
BROWSER_TESTS = ["tests/test_browser.py", "tests/test_browser_clicks.py"]
CELERY_TESTS = ["tests/test_compat.py", "tests/test_tasks.py", "tests/test_cancel.py", "tests/test_retry.py"]

# name: (pins, tests). "newest" pins nothing: the newest releases the index has.
MATRIX: dict[str, tuple[list[str], list[str]]] = {
    # The lowest of each: ipykernel 6.25 with IPython 9 publishes no error output (the IPython of its
    # day is 8); IPython before 8.14 shows no exception notes (an interrupted .get()'s message).
    "ipykernel-6": (["ipykernel==6.25.0", "ipython==8.14.0"], KERNEL_TESTS + WIDGET_TESTS),
    # 7.0.x is excluded (pyproject.toml): with 7.0.1 the kernel stops answering after a UsageError
    # ("Socket operation on non-socket" on its shell socket); 7.1 is the lowest 7.x supported.
    "ipykernel-7.1": (["ipykernel==7.1.0"], KERNEL_TESTS + WIDGET_TESTS),
    "ipywidgets-8.0": (["ipywidgets==8.0.0"], WIDGET_TESTS + ["tests/test_kernel_magics.py"]),
    "jupyterlab-oldest": (["jupyterlab==4.0.0", *BROWSER_DEPS], BROWSER_TESTS),
    "notebook-7": (["notebook>=7,<8", "jupyterlab", *BROWSER_DEPS], ["tests/test_browser_notebook.py"]),
    "celery-lowest": (["celery==5.7.0", "kombu==5.7.0"], CELERY_TESTS),
    "newest": (["jupyterlab", *BROWSER_DEPS], KERNEL_TESTS + WIDGET_TESTS + BROWSER_TESTS),
}


_VERSIONS = (
    "from importlib.metadata import PackageNotFoundError, version\n"
    "for name in ('ipykernel', 'ipywidgets', 'jupyterlab', 'notebook', 'celery', 'kombu', 'ipython'):\n"
    "    try: print(name, version(name))\n"
    "    except PackageNotFoundError: print(name, '-')\n"
)


@nox.session
def docs(session: nox.Session) -> None:
    """The site into docs/_build/html, with every Sphinx warning an error."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, as the README's test command runs it."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *session.posargs)


@nox.session
@nox.parametrize("combination", list(MATRIX), ids=list(MATRIX))
def matrix(session: nox.Session, combination: str) -> None:
    """The kernel, widget and browser tests on one combination of releases."""
    pins, test_files = MATRIX[combination]
    session.install("-e", ".", *TEST_DEPS, *pins)
    session.run("python", "-c", _VERSIONS)
    session.run("python", "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *test_files, *session.posargs)
