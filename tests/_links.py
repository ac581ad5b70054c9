"""An offline link checker for the repository's Markdown and the rendered documentation site.

No network: a relative link must name a file or folder of the repository (and, with ``#anchor``,
a heading of that Markdown file, by GitHub's slug rules); a link into the rendered site must name
a page of it and an ``id`` on that page. An external link cannot be fetched here, so it is held
to what can be known offline: ``https``, no placeholder host, and a GitHub or Binder address only
for the project's declared home (``[project.urls]`` in ``pyproject.toml``; none is declared while
the public home is not known, so any such link is a placeholder).
"""

from __future__ import annotations

import html
import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_MD_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_ATTR = re.compile(r"""\b(?:href|src)\s*=\s*["']([^"']+)["']""")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
_PLACEHOLDER_HOSTS = ("example.com", "example.org", "localhost", "127.0.0.1", "your-org", "yourname")


def markdown_files() -> list[Path]:
    """What a reader opens: the top-level docs, docs/, the tutorials' sources and READMEs."""
    files = [ROOT / name for name in ("README.md", "CHANGELOG.md", "CONTRIBUTING.md")]
    files += sorted((ROOT / "docs").rglob("*.md"))
    files += [ROOT / "notebooks" / "README.md", ROOT / "benchmarks" / "README.md"]
    files += sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md"))
    skip = {ROOT / "docs" / "tutorials", ROOT / "docs" / "_build", ROOT / "docs" / "api"}
    return [f for f in files if f.exists() and not any(s in f.parents for s in skip)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to ``-``."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (repeats get ``-1``, ``-2`` as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for _, title in _HEADING.findall(_FENCE.sub("", path.read_text())):
        base = slug(title)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


def links(text: str) -> list[str]:
    """Link targets in Markdown text, outside code blocks and inline code."""
    text = _INLINE_CODE.sub("", _FENCE.sub("", text))
    return _MD_LINK.findall(text) + _HTML_ATTR.findall(text)


def project_home() -> str | None:
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("urls", {})
    return urls.get("Source") or urls.get("Repository") or urls.get("Homepage")


def check_external(url: str, home: str | None) -> str | None:
    parts = urlsplit(url)
    if parts.scheme == "mailto":
        return None
    if parts.scheme != "https":
        return f"{url}: not https"
    host = parts.hostname or ""
    if any(p in host or p in parts.path.lower() for p in _PLACEHOLDER_HOSTS):
        return f"{url}: a placeholder address"
    segments = [s for s in parts.path.split("/") if s]
    names_a_repo = (host == "mybinder.org" and segments[:1] == ["v2"]) or (
        host in ("github.com", "raw.githubusercontent.com") and len(segments) >= 2)
    if names_a_repo:
        repo = urlsplit(home).path.strip("/") if home else None
        if not repo or repo.lower() not in parts.path.lower():
            return (f"{url}: names a GitHub/Binder home but pyproject.toml declares "
                    + (f"{home}" if home else "none ([project.urls] Source)") + "; say 'from a clone of this repository'")
    return None


def _source_of(dest: Path) -> Path:
    """What a link into ``docs/tutorials/`` (copied there by the docs build, perhaps not yet, or
    being rebuilt by another test worker right now) stands for: the file it is copied from."""
    copies = ROOT / "docs" / "tutorials"
    if dest == copies:
        return ROOT / "notebooks"
    if copies not in dest.parents:
        return dest
    relative = dest.relative_to(copies)
    return ROOT / "notebooks" / ("README.md" if relative == Path("index.md") else relative)


def check_markdown(path: Path, home: str | None = None) -> list[str]:
    """Every problem with the links of one Markdown file, as ``file: target: why``."""
    problems = []
    for target in links(path.read_text()):
        where = f"{path.relative_to(ROOT) if ROOT in path.parents else path}: {target}"
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            if (why := check_external(target, home)) is not None:
                problems.append(f"{where}: {why.split(': ', 1)[1]}")
            continue
        file_part, _, anchor = target.partition("#")
        dest = _source_of((path.parent / unquote(file_part.split("?")[0])).resolve()) if file_part else path
        if not dest.exists():
            problems.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with anchor #{anchor}")
    return problems


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)
            if value and ((name == "href" and tag in ("a", "link")) or (name == "src" and tag in ("img", "script"))):
                self.refs.append(html.unescape(value))


def check_site(site: Path) -> list[str]:
    """Every internal link of a rendered HTML site that names a missing page or anchor."""
    pages: dict[Path, _Page] = {}
    for page in site.rglob("*.html"):
        parser = _Page()
        parser.feed(page.read_text(errors="replace"))
        pages[page.resolve()] = parser
    problems = []
    for page, parser in pages.items():
        for ref in parser.refs:
            if re.match(r"^[a-z][a-z0-9+.-]*:", ref) or ref.startswith("//"):
                continue
            file_part, _, anchor = ref.partition("#")
            dest = (page.parent / unquote(file_part.split("?")[0])).resolve() if file_part else page
            if dest.is_dir():
                dest = dest / "index.html"
            where = f"{page.relative_to(site.resolve())}: {ref}"
            if not dest.exists():
                problems.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".html" and anchor not in pages[dest].ids:
                problems.append(f"{where}: no element with id {anchor!r}")
    return problems
