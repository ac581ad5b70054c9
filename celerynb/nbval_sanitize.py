"""The nbval sanitize file for what celerynb prints: ``python -m celerynb.nbval_sanitize``.

Task ids, ports, URL passwords, durations, timestamps, PIDs, worker host names and temporary
paths change on every run; nbval compares outputs literally unless a sanitize file rewrites
them first. The file ships inside the package (``celerynb/nbval_sanitize.cfg``)::

    pytest --nbval --nbval-sanitize-with "$(python -m celerynb.nbval_sanitize --path)" nbs/
    python -m celerynb.nbval_sanitize -o nbval-sanitize.cfg   # a copy to extend
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import resources
from pathlib import Path

FILENAME = "nbval_sanitize.cfg"
# nbval's own parser (nbval.plugin.get_sanitize_patterns): a "regex: " line, then "replace: ".
_PAIR = re.compile(r"^regex: (.*)$\n^replace: (.*)$", re.MULTILINE)


def path() -> Path:
    """Where the sanitize file is in the installed package."""
    return Path(str(resources.files("celerynb").joinpath(FILENAME)))


def text() -> str:
    """The sanitize file's contents."""
    return resources.files("celerynb").joinpath(FILENAME).read_text(encoding="utf-8")


def patterns() -> list[tuple[str, str]]:
    """(regex, replacement) pairs, read the way nbval reads them."""
    return _PAIR.findall(text())


def sanitize(value: str) -> str:
    """Apply every pattern in order, as nbval does before it compares two outputs."""
    for regex, replace in patterns():
        value = re.sub(regex, replace, value)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m celerynb.nbval_sanitize",
        description="Print celerynb's nbval sanitize file (for pytest --nbval --nbval-sanitize-with).",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-o", "--output", help="write the file here instead of printing it")
    group.add_argument("--path", action="store_true", help="print where the file is inside the package")
    args = parser.parse_args(argv)
    if args.path:
        print(path())
    elif args.output:
        out = Path(args.output)
        if out.is_dir():
            parser.error(f"--output {out} is a directory: give a file name, e.g. {out / 'nbval-sanitize.cfg'}")
        out.write_text(text(), encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
