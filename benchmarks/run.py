"""Run every ``benchmarks/bench_*.py``: a readable table, then one JSON object of all figures.

Each benchmark module exposes ``run(quick: bool) -> dict[str, float]``. Each runs in its own
interpreter, because in-process Celery workers share process-wide state. The very last line
of the output is one JSON object (figure name -> value) for machines to read.

Usage: ``python benchmarks/run.py [--quick] [--only NAME ...]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARKER = "@@celerynb-bench-figures@@"

_DRIVER = f"""
import importlib.util, json, sys
sys.path.insert(0, {str(HERE)!r})
path, quick = sys.argv[1], sys.argv[2] == "1"
spec = importlib.util.spec_from_file_location("bench_module", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
figures = module.run(quick=quick)
print("\\n{MARKER}" + json.dumps(figures), flush=True)
"""


def discover(only: list[str] | None = None) -> list[Path]:
    """The benchmark files, in name order; ``only`` keeps those whose name contains one of its words."""
    found = sorted(HERE.glob("bench_*.py"))
    if only:
        found = [p for p in found if any(word in p.stem for word in only)]
    return found


def run_one(path: Path, quick: bool, timeout: float) -> tuple[dict[str, float] | None, float, str]:
    """Figures of one benchmark (None on failure), its wall time, and an error text."""
    start = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-c", _DRIVER, str(path), "1" if quick else "0"],
            capture_output=True, text=True, timeout=timeout, cwd=HERE.parent,
        )
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - start, f"timed out after {timeout:.0f} s"
    elapsed = time.monotonic() - start
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):]), elapsed, ""
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return None, elapsed, f"exit {done.returncode}: " + " | ".join(tail)


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats: seconds per benchmark, noisier")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only benchmarks whose file name contains NAME")
    parser.add_argument("--timeout", type=float, default=2400.0, help="seconds allowed per benchmark (bench_peers, full mode: ~15-25 min on a busy 2-core machine)")
    args = parser.parse_args(argv)

    paths = discover(args.only)
    if not paths:
        print("no benchmarks found", file=sys.stderr)
        print(json.dumps({}))
        return 1
    figures: dict[str, float] = {}
    rows: list[tuple[str, str, str]] = []
    failed = 0
    for path in paths:
        print(f"running {path.name} ...", file=sys.stderr, flush=True)
        result, elapsed, error = run_one(path, args.quick, args.timeout)
        if result is None:
            failed += 1
            rows.append((path.stem, "FAILED", error))
            continue
        for name, value in result.items():
            key = name if name not in figures else f"{path.stem}.{name}"
            figures[key] = value
            rows.append((path.stem, key, _value(value)))
        rows.append((path.stem, "(wall time, s)", f"{elapsed:.1f}"))

    widths = [max(len(r[i]) for r in rows + [("benchmark", "figure", "value")]) for i in range(3)]
    line = "  ".join("-" * w for w in widths)
    print(f"{'benchmark':<{widths[0]}}  {'figure':<{widths[1]}}  {'value':>{widths[2]}}")
    print(line)
    for bench, name, value in rows:
        print(f"{bench:<{widths[0]}}  {name:<{widths[1]}}  {value:>{widths[2]}}")
    print(line)
    print(f"{len(paths) - failed} of {len(paths)} benchmarks ran ({'quick' if args.quick else 'full'} mode)")
    print(json.dumps(figures, sort_keys=True))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
