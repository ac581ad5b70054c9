"""Every link of the README, CHANGELOG, CONTRIBUTING, docs/ and the tutorials' sources resolves,
offline (tests/_links.py says how); the rendered site's own links are checked in test_docs.py."""

from __future__ import annotations

import pytest
from _links import ROOT, anchors, check_external, check_markdown, markdown_files, project_home


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(path):
    assert check_markdown(path, project_home()) == []


def test_the_files_a_reader_opens_are_checked():
    names = {str(p.relative_to(ROOT)) for p in markdown_files()}
    assert {"README.md", "CHANGELOG.md", "CONTRIBUTING.md", "docs/ci.md", "notebooks/README.md"} <= names
    assert "docs/tutorials/index.md" not in names  # a copy made by the docs build


def test_the_checker_finds_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading, here\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#a-code-heading-here) [ok](#title)\n# Title\n"
        "[gone](missing.md) [bad anchor](other.md#nowhere) [self](#nothing)\n"
        "```\n[in a code block](ignored.md)\n```\n`[inline](ignored.md)`\n"
        "[guess](https://github.com/someone/celerynb) [plain](http://semver.org/) [ph](https://example.com/x)\n"
    )
    problems = check_markdown(page, home=None)
    assert [p.split(": ")[1] for p in problems] == [
        "missing.md", "other.md#nowhere", "#nothing",
        "https://github.com/someone/celerynb", "http://semver.org/", "https://example.com/x",
    ], problems
    assert anchors(tmp_path / "other.md") == {"other-page", "a-code-heading-here"}


def test_a_declared_home_allows_its_own_github_and_binder_links():
    home = "https://github.com/owner/celerynb"
    assert check_external("https://mybinder.org/v2/gh/owner/celerynb/HEAD?urlpath=lab/tree/notebooks", home) is None
    assert check_external("https://github.com/owner/celerynb/issues", home) is None
    assert check_external("https://github.com/other/project", home) is not None
    assert check_external("https://semver.org/", None) is None
