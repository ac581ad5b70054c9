"""The documentation site (docs/, Sphinx + MyST-NB) builds with warnings as errors, renders every
tutorial with its stored outputs (their final summaries included), holds the README's sections
as user guide pages and documents the whole public API; its internal links resolve."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _links import ROOT, check_site

import celerynb

DOCS = ROOT / "docs"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
_PROGRESS_LINE = re.compile(r"\d+% \|[# ]*\||^<TaskTable ")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One build for the file: ``sphinx-build -W`` as ``nox -s docs`` runs it, into a temp dir."""
    out = tmp_path_factory.mktemp("docs")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out / "html"),
         "-d", str(out / "doctrees")],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-5000:]
    return out / "html"


def final_summaries(notebook: Path) -> list[str]:
    """What a tutorial ends with, as a reader sees it rendered: its last progress bar or table
    summary (text) and its last celerynb HTML summary (a cluster card, a status, a table)."""
    last_text = last_html = None
    for cell in json.loads(notebook.read_text())["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "celerynb" in "".join(data.get("text/html", "")):
                last_html = "".join(data["text/html"]).strip()
            plain = "".join(data.get("text/plain", "")).splitlines()
            if "text/html" not in data and plain and _PROGRESS_LINE.search(plain[-1]):
                last_text = html.escape(plain[-1], quote=False)
    return [s for s in (last_text, last_html) if s]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_tutorial_page_shows_its_stored_final_summary(site, notebook):
    page = (site / "tutorials" / f"{notebook.stem}.html").read_text()
    summaries = final_summaries(notebook)
    assert summaries, f"{notebook.name} stores no celerynb summary to look for"
    for summary in summaries:
        assert summary in page, f"{notebook.name}: not rendered: {summary[:200]}"


def test_progress_summaries_are_rendered_as_stored_not_re_executed(site):
    """A bar that ended shows its stored final state (06 ends with a cancelled task)."""
    page = (site / "tutorials" / "06_progress.html").read_text()
    assert "celerynb.forever:   0% |                    | REVOKED (cancelled)" in page
    assert "Welcome to celerynb" in (site / "tutorials" / "01_getting_started.html").read_text()


def test_guide_pages_hold_the_readme_sections(site):
    readme = (ROOT / "README.md").read_text()
    for source in sorted((DOCS / "guide").glob("*.md")):
        start = re.search(r':start-after: "(.*)"', source.read_text()).group(1)
        end = re.search(r':end-before: "(.*)"', source.read_text())
        assert start in readme, f"{source.name}: the README has no {start!r} any more"
        chunk = readme.split(start, 1)[1]
        chunk = chunk.split(end.group(1), 1)[0] if end else chunk
        words = set(re.findall(r"\b[a-z]{7,}\b", chunk))
        text = html.unescape(re.sub(r"<[^>]+>", " ", (site / "guide" / f"{source.stem}.html").read_text()))
        missing = {w for w in words if w not in text}
        assert len(words) > 10 and len(missing) <= len(words) // 10, (source.name, sorted(missing)[:20])


def test_api_reference_documents_the_public_api(site):
    documented = set(re.findall(r"^   (\w+)$", (DOCS / "api.md").read_text(), flags=re.M))
    assert documented == (set(celerynb.__all__) - {"__version__"}) | {"map"}
    for name in documented:
        page = (site / "api" / "generated" / f"celerynb.{name}.html").read_text()
        assert f'id="celerynb.{name}"' in page, name


def test_site_internal_links_resolve(site):
    assert check_site(site) == []


def test_site_link_check_finds_a_broken_link(site, tmp_path):
    (tmp_path / "index.html").write_text('<a href="page.html#here">x</a><a href="gone.html">y</a><a id="top"></a>')
    (tmp_path / "page.html").write_text('<h1 id="there">z</h1><a href="index.html#top">back</a>')
    assert check_site(tmp_path) == ["index.html: page.html#here: no element with id 'here'",
                                    "index.html: gone.html: no such file"]
    assert len(list(site.rglob("*.html"))) > 30


def test_readthedocs_config_is_valid_and_builds_this_site(tmp_path):
    """.readthedocs.yaml against Read the Docs' schema (vendored by check-jsonschema), and what
    the schema cannot know: it builds docs/conf.py with the docs extra, warnings as errors."""
    import yaml

    path = ROOT / ".readthedocs.yaml"
    out = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.readthedocs", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load(path.read_text())
    assert config["sphinx"] == {"configuration": "docs/conf.py", "fail_on_warning": True}
    assert config["python"]["install"] == [{"method": "pip", "path": ".", "extra_requirements": ["docs"]}]
    broken = tmp_path / "rtd.yaml"
    broken.write_text(path.read_text().replace("configuration:", "config:"))
    out = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.readthedocs", str(broken)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
