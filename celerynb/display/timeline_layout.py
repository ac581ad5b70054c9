"""What a timeline shows, computed from timing records: lanes, bars, the queue, the summary.

Pure arithmetic on :class:`~celerynb.tracking.timing.TaskTiming` records (no I/O, no
rendering), so the picture, the text twin and the tests all read the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from celery import states

from celerynb.display._views import BAR_STYLES
from celerynb.rendering.theme import THEME
from celerynb.tracking.timing import TaskTiming

#: Geometry of the picture (px): the plot sits right of the lane labels.
WIDTH, LEFT, RIGHT, TOP = 760, 150, 16, 34
LANE, GAP, QUEUE = 16, 4, 26
#: The narrowest bar of a task that did not succeed (px); bars this narrow get no outline.
MIN_MARK = 2.5
#: How many of the slowest tasks the summary names.
SLOWEST = 3


def seconds(value: float | None) -> str:
    """A duration as a timeline labels it: milliseconds below a second."""
    if value is None:
        return "?"
    if value < 0.01:
        return f"{value * 1000:.1f} ms"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 100:
        return f"{value:.2f} s"
    return f"{value:.0f} s"


@dataclass(frozen=True)
class Summary:
    """How efficiently the tasks ran: ``busy`` is their summed run time, ``wall`` the time from
    the first sent (or started) to the last ended; ``speedup = busy / wall`` and
    ``efficiency = speedup / slots`` (slots: the worker slots the tasks were seen on)."""

    tasks: int
    timed: int
    running: int
    slots: int
    workers: int
    wall: float | None
    busy: float
    counts: dict[str, int] = field(default_factory=dict)
    slowest: list[TaskTiming] = field(default_factory=list)
    mean_wait: float | None = None
    max_wait: float | None = None

    @property
    def untimed(self) -> int:
        return self.tasks - self.timed

    @property
    def speedup(self) -> float | None:
        return self.busy / self.wall if self.wall else None

    @property
    def efficiency(self) -> float | None:
        speedup = self.speedup
        return speedup / self.slots if speedup is not None and self.slots else None

    def headline(self) -> str:
        """One line with the figures (not deterministic: for the picture, not for text/plain)."""
        if not self.timed:
            return f"{self.tasks} tasks, none with timing"
        parts = [f"{self.timed} tasks on {self.slots} slot{'s' * (self.slots != 1)}"]
        if self.wall:
            parts.append(f"wall {seconds(self.wall)}")
        parts.append(f"task time {seconds(self.busy)}")
        if self.speedup is not None:
            parts.append(f"speedup {self.speedup:.1f}×")
        if self.efficiency is not None:
            parts.append(f"efficiency {self.efficiency:.0%}")
        return " · ".join(parts)


def lanes_of(records: Sequence[TaskTiming]) -> list[tuple[str, str]]:
    """The worker slots the timed tasks ran on, by worker then by first start."""
    first: dict[tuple[str, str], float] = {}
    for rec in records:
        if rec.started is not None:
            first[rec.lane] = min(first.get(rec.lane, math.inf), rec.started)
    return sorted(first, key=lambda lane: (lane[0], first[lane], lane[1]))


def lane_labels(lanes: Sequence[tuple[str, str]]) -> list[str]:
    """``worker #n``: the n-th slot of that worker (the raw ``pid/thread`` is in the data)."""
    seen: dict[str, int] = {}
    labels = []
    for worker, _ in lanes:
        seen[worker] = seen.get(worker, 0) + 1
        labels.append(f"{worker} #{seen[worker]}")
    return labels


def summarize(records: Sequence[TaskTiming], now: float) -> Summary:
    """The summary of ``records``; running tasks (no end yet) count up to ``now``."""
    counts: dict[str, int] = {}
    for rec in records:
        counts[rec.state] = counts.get(rec.state, 0) + 1
    timed = [r for r in records if r.started is not None]
    ended = [r for r in timed if r.ended is not None]
    busy = sum(max(0.0, min(r.ended or now, now) - r.started) for r in timed)  # type: ignore[operator]
    wall = None
    if timed:
        begin = min(_first_seen(r) for r in timed)
        end = max((r.ended if r.ended is not None else now) for r in timed)
        wall = max(0.0, end - begin)
    waits = [w for r in timed if (w := r.wait) is not None]
    slowest = sorted(ended, key=lambda r: (-(r.runtime or 0.0), r.task_id))[:SLOWEST]
    lanes = lanes_of(records)
    return Summary(tasks=len(records), timed=len(timed), running=len(timed) - len(ended), slots=len(lanes),
                   workers=len({w for w, _ in lanes}), wall=wall, busy=busy,
                   counts=dict(sorted(counts.items())), slowest=slowest,
                   mean_wait=sum(waits) / len(waits) if waits else None, max_wait=max(waits) if waits else None)


@dataclass(frozen=True)
class Bar:
    """A rectangle of the picture: one task, or neighbours of a lane merged below a pixel."""

    x: float
    y: float
    width: float
    fill: str
    title: str
    tasks: int = 1


@dataclass(frozen=True)
class Picture:
    """Everything the SVG template draws, in pixels."""

    width: int
    height: int
    headline: str
    labels: list[tuple[float, str]]
    bars: list[Bar]
    queue: str  # the points of the queued-tasks polygon ("" when no wait is known)
    queue_y: float
    queue_label: str
    ticks: list[tuple[float, str]]
    axis_y: float
    legend: list[tuple[str, str]]
    plot_left: int
    plot_right: int


def _nice_step(span: float, target: int = 6) -> float:
    raw = span / target
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power


def _tick_label(value: float, step: float) -> str:
    if step >= 60 and step % 60 == 0:
        return f"{value / 60:g} min"
    digits = 0
    while digits < 6 and abs(round(step * 10**digits) - step * 10**digits) > 1e-9:
        digits += 1
    return f"{value:.{digits}f} s"


def _task_title(rec: TaskTiming, label: str) -> str:
    text = f"{rec.name or rec.task_id} · {rec.state}"
    if rec.runtime is not None:
        text += f" · ran {seconds(rec.runtime)}"
    if rec.wait is not None:
        text += f" · waited {seconds(rec.wait)}"
    return f"{text} · {label}"


def layout(records: Sequence[TaskTiming], now: float, summary: Summary | None = None) -> Picture:
    """The picture of ``records`` (running tasks drawn up to ``now``; ``summary``: theirs, if known)."""
    summary = summary or summarize(records, now)
    lanes = lanes_of(records)
    labels = lane_labels(lanes)
    timed = [r for r in records if r.started is not None]
    waits = [r for r in timed if r.sent is not None and r.sent < r.started]  # type: ignore[operator]
    top = TOP + (QUEUE if waits else 0)
    plot_left, plot_right = LEFT, WIDTH - RIGHT
    axis_y = top + len(lanes) * (LANE + GAP) + 2
    height = int(axis_y + 44)
    if not timed:
        return Picture(WIDTH, TOP + 20, summary.headline(), [], [], "", TOP, "", [], TOP, [], plot_left, plot_right)
    begin = min(_first_seen(r) for r in timed)
    end = max(r.ended if r.ended is not None else now for r in timed)
    span = max(end - begin, 1e-3)
    scale = (plot_right - plot_left) / span

    def px(t: float) -> float:
        return plot_left + (t - begin) * scale

    row = {lane: i for i, lane in enumerate(lanes)}
    bars: list[Bar] = []
    used: dict[str, str] = {}
    for lane, label in zip(lanes, labels, strict=True):
        y = top + row[lane] * (LANE + GAP)
        mine = sorted((r for r in timed if r.lane == lane), key=lambda r: r.started or 0.0)
        for rec in mine:
            style = BAR_STYLES.get(rec.state, "info")
            fill = THEME.fill(style)
            used.setdefault(rec.state, fill)
            x0, x1 = px(rec.started), px(rec.ended if rec.ended is not None else now)  # type: ignore[arg-type]
            last = bars[-1] if bars and bars[-1].y == y else None
            if last is not None and last.fill == fill and x0 - (last.x + last.width) < 1.0 and x1 - x0 < 1.0:
                merged = last.tasks + 1  # neighbours under a pixel: one rectangle, not thousands
                bars[-1] = Bar(last.x, y, max(last.width, x1 - last.x), fill,
                               f"{merged} tasks · {rec.state} · {label}", merged)
                continue
            # A failure as short as a pixel still shows: at least MIN_MARK wide, drawn last.
            least = 1.0 if style == "success" else MIN_MARK
            bars.append(Bar(x0, y, max(x1 - x0, least), fill, _task_title(rec, label)))
    bars.sort(key=lambda bar: bar.fill != THEME.fill("success"))  # stable: lanes keep their order
    queue, queue_label = "", ""
    if waits:
        queue, queue_label = _queue_outline(waits, px, plot_left, plot_right, TOP + QUEUE - 6)
    step = _nice_step(span)
    ticks = [(px(begin + i * step), _tick_label(i * step, step)) for i in range(int(span / step) + 1)]
    legend = [(state, fill) for state, fill in sorted(used.items(), key=lambda item: _state_rank(item[0]))]
    if waits:
        legend.append(("queued", THEME.track))
    return Picture(WIDTH, height, summary.headline(),
                   [(top + i * (LANE + GAP) + LANE - 4, label) for i, label in enumerate(labels)],
                   bars, queue, TOP, queue_label, ticks, axis_y, legend, plot_left, plot_right)


def _queue_outline(waits: Sequence[TaskTiming], px: Callable[[float], float], left: int, right: int,
                   base: float) -> tuple[str, str]:
    """The queued-tasks area as polygon points, one column per pixel (its deepest moment), and its label."""
    steps = sorted([(r.sent, 1) for r in waits] + [(r.started, -1) for r in waits])  # type: ignore[misc]
    columns = [0] * (right - left + 1)
    depth = 0
    for (t, delta), following in zip(steps, steps[1:] + [(None, 0)], strict=True):
        depth += delta
        if depth <= 0:
            continue
        first = int(px(t)) - left  # type: ignore[arg-type]
        last = int(px(following[0])) - left if following[0] is not None else first  # type: ignore[arg-type]
        for col in range(max(first, 0), min(last, len(columns) - 1) + 1):
            columns[col] = max(columns[col], depth)
    peak = max(columns)
    scale = (QUEUE - 10) / max(peak, 1)
    points = [(left, base)] + [(left + col, base - d * scale) for col, d in enumerate(columns)] + [(right, base)]
    return " ".join(f"{x:.0f},{y:.1f}" for x, y in points), f"queued (max {peak})"


def _first_seen(rec: TaskTiming) -> float:
    """When a timed task was first known: sent, else started."""
    started = rec.started if rec.started is not None else 0.0
    return min(started, rec.sent) if rec.sent is not None else started


def _state_rank(state: str) -> tuple[int, str]:
    order = [states.SUCCESS, states.FAILURE, states.REVOKED, states.RETRY, "PROGRESS", states.STARTED]
    return (order.index(state) if state in order else len(order), state)
