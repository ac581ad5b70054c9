"""What a progress display shows, computed from snapshots: no widgets, no I/O, easy to test.

The widget display, the text twin and the static HTML summary all render these views, so the
three always agree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from celery import states

from celerynb.tracking.snapshot import EXPIRED_INFO, LOST, MOVED_INFO, WORKER_LOST, TaskSnapshot

BAR_STYLES = {
    states.PENDING: "",
    states.RECEIVED: "info",
    states.STARTED: "info",
    "PROGRESS": "info",
    states.RETRY: "warning",
    states.SUCCESS: "success",
    states.FAILURE: "danger",
    states.REVOKED: "warning",
    "ABORTED": "warning",
    states.REJECTED: "danger",
    states.IGNORED: "",
    LOST: "danger",
    WORKER_LOST: "warning",
}
#: Order of states in counts: finished ones last.
STATE_ORDER = ["PENDING", "RECEIVED", "STARTED", "PROGRESS", "RETRY", WORKER_LOST, "SUCCESS", "FAILURE", "REVOKED", "ABORTED", LOST]


@dataclass(frozen=True)
class TaskView:
    """One task as displayed: a percentage, a style, and a deterministic one-line detail."""

    task_id: str
    name: str
    state: str
    percent: float
    bar_style: str
    detail: str
    ready: bool
    error: str = ""
    #: 2, 3, ... for a task sent again by ``celerynb.retry_failed`` (its detail says so).
    attempt: int = 1

    @property
    def fill(self) -> float:
        """How much of the bar is coloured: all of it once the task ended (a failure is a full
        red bar, not an empty one); its progress until then."""
        return 100.0 if self.ready else self.percent

    @property
    def note(self) -> str:
        """The detail after the state's name (shown beside its badge)."""
        for prefix in (self.state, self.state.replace("_", " ")):
            if self.detail.startswith(prefix):
                return self.detail[len(prefix):].strip()
        return self.detail


@dataclass(frozen=True)
class GroupView:
    """Many tasks as one aggregate bar: done/total plus counts per state."""

    total: int
    done: int
    percent: float
    bar_style: str
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[TaskView] = field(default_factory=list)
    redelivered: int = 0

    @property
    def ready(self) -> bool:
        return self.done == self.total


#: The keys of a progress report that are read, in order: ``progress`` (the guide's, in %; a
#: float between 0 and 1 is a fraction), ``percent`` (celery-progress), then ``current``/``total``.
PERCENT_KEYS = ("progress", "percent")
#: Text shown next to it: the guide's ``status``, celery-progress's ``description``, a ``message``.
STATUS_KEYS = ("status", "description", "message")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def progress_percent(info: Any) -> float | None:
    """A task's own progress report in %: see :data:`PERCENT_KEYS` (None: not a progress report)."""
    if not isinstance(info, dict):
        return None
    for key in PERCENT_KEYS:
        value = info.get(key)
        if _number(value):
            value = float(value) * (100.0 if key == "progress" and isinstance(value, float) and 0 < value < 1 else 1)
            return max(0.0, min(100.0, value))
    current, total = info.get("current"), info.get("total")
    if isinstance(current, int | float) and isinstance(total, int | float) and total > 0:
        return max(0.0, min(100.0, 100.0 * current / total))
    return None


def call_arguments(args: Any, kwargs: Any = None, width: int = 40) -> str:
    """The arguments of a call as written in it: ``3, y=1``, from the stored lists or the
    published reprs (``(3,)``, ``{'y': 1}``), so every row reads alike whichever was known."""
    args, kwargs = _literal(args), _literal(kwargs)
    if isinstance(args, list | tuple):
        parts = [_short(repr(a), width) for a in args]
    elif args in (None, ""):
        parts = []
    else:  # a repr too long to parse: drop its brackets
        parts = [str(args).strip("()[]").rstrip(",")]
    if isinstance(kwargs, dict):
        parts += [f"{k}={_short(repr(v), width)}" for k, v in kwargs.items()]
    elif kwargs not in (None, "", "{}"):
        parts.append(str(kwargs).strip("{}"))
    return _short(", ".join(parts), width)


def _literal(value: Any) -> Any:
    if isinstance(value, str) and len(value) <= 2000:
        import ast

        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return value
    return value


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def error_text(info: Any) -> str:
    """``Type: message`` of a stored exception (Celery stores ``exc_message`` as the args list)."""
    if not isinstance(info, dict) or "exc_type" not in info:
        return "" if info is None else str(info)
    message = info.get("exc_message", "")
    if isinstance(message, list | tuple):
        message = " ".join(str(part) for part in message)
    return f"{info.get('exc_type')}: {message}" if message else str(info.get("exc_type"))


def task_view(snap: TaskSnapshot, previous: float = 0.0, name: str | None = None, attempt: int = 1) -> TaskView:
    """The view of one snapshot; ``previous`` keeps the bar where it was when a task fails;
    ``attempt`` > 1 for a task sent again (``retry_failed``)."""
    state = snap.state
    label = snap.name or name or "task"
    percent = previous
    detail = state
    error = ""
    if state == states.SUCCESS:
        percent = 100.0
    elif state == "PROGRESS" or (state not in states.ALL_STATES and progress_percent(snap.info) is not None):
        # The guide's PROGRESS, or a state of the task's own (IN_PROGRESS, ...) carrying a report.
        found = progress_percent(snap.info)
        percent = previous if found is None else found
        info = snap.info if isinstance(snap.info, dict) else {}
        status = next((info[k] for k in STATUS_KEYS if isinstance(info.get(k), str) and info[k]), None)
        detail = f"{state} {percent:.0f}%" + (f" {status}" if status else "")
    elif state == states.RETRY:
        retry_number = (snap.retries or 0) + 1
        error = error_text(snap.info)
        detail = f"RETRY (retry {retry_number})" + (f" {error}" if error else "")
    elif state == states.FAILURE:
        error = error_text(snap.info)
        detail = f"FAILURE {error}" if error else "FAILURE"
    elif state == states.REVOKED:
        detail = "REVOKED (cancelled)"
    elif state == WORKER_LOST:
        status = snap.info.get("status") if isinstance(snap.info, dict) else None
        detail = f"WORKER LOST ({status})" if status else "WORKER LOST"
    elif state == LOST:
        error = {MOVED_INFO: "the cluster it was sent to is gone",
                 EXPIRED_INFO: "its result expired"}.get(snap.info, "the server restarted without persistence: submit again")
        detail = f"LOST ({error})"
    if snap.redeliveries:
        detail += f" (redelivered {snap.redeliveries}x after a worker was lost)"
    if attempt > 1:
        detail += f" (attempt {attempt})"
    return TaskView(
        task_id=snap.task_id, name=label, state=state, percent=percent,
        bar_style=BAR_STYLES.get(state, "info"), detail=detail, ready=snap.ready, error=error, attempt=attempt,
    )


def group_view(views: list[TaskView]) -> GroupView:
    counts: dict[str, int] = {}
    for view in views:
        counts[view.state] = counts.get(view.state, 0) + 1
    failed = [v for v in views if v.state in (states.FAILURE, states.REJECTED, LOST)]
    redelivered = sum(1 for v in views if "(redelivered " in v.detail)
    partial = sum(v.percent for v in views if not v.ready)
    return aggregate(counts, len(views), sum(1 for v in views if v.ready), failed[:5], redelivered, partial)


def aggregate(counts: dict[str, int], total: int, done: int, failures: list[TaskView], redelivered: int,
              partial: float = 0.0) -> GroupView:
    """The aggregate bar from counts per state (shared by :func:`group_view` and the tally).

    ``partial`` is the sum of the unfinished tasks' own percentages: eight tasks halfway through
    make a half-full bar, not an empty one that waits for the first to end."""
    ordered = {s: counts[s] for s in STATE_ORDER if counts.get(s)}
    ordered.update({s: n for s, n in counts.items() if s not in ordered and n})
    if done < total:
        style = "warning" if counts.get(states.RETRY) else "info"
    elif failures:
        style = "danger"
    elif counts.get(states.REVOKED) or counts.get("ABORTED"):
        style = "warning"
    else:
        style = "success"
    percent = min(100.0, (100.0 * done + partial) / total) if total else 100.0
    return GroupView(total=total, done=done, percent=percent, bar_style=style, counts=ordered, failures=failures,
                     redelivered=redelivered)


def text_bar(percent: float, width: int = 20) -> str:
    filled = int(round(width * percent / 100.0))
    return "|" + "#" * filled + " " * (width - filled) + "|"


def cancelling(view: TaskView) -> TaskView:
    """A cancelled task still running (in a long call, or its process not gone yet)."""
    if view.ready:
        return view
    return dataclasses.replace(view, detail=f"{view.detail} · cancelling", bar_style="warning")


def task_line(view: TaskView) -> str:
    """Deterministic: no ids, no times (nbval compares it)."""
    return f"{view.name}: {view.percent:3.0f}% {text_bar(view.percent)} {view.detail}"


def counts_text(group: GroupView) -> str:
    text = " · ".join(f"{state} {n}" for state, n in group.counts.items())
    return text + (f" · redelivered {group.redelivered}" if group.redelivered else "")


def group_line(group: GroupView) -> str:
    return (f"{group.total} tasks: {group.percent:3.0f}% {text_bar(group.percent)} "
            f"{group.done}/{group.total} done · {counts_text(group)}")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 9.95:  # a tenth of a second matters for short tasks: "0.3s", not "0s"
        return f"{max(0.0, seconds):.1f}s"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def eta(elapsed: float, percent: float) -> float | None:
    """Seconds left at the current average rate; None before any progress."""
    if percent <= 0 or percent >= 100:
        return None if percent <= 0 else 0.0
    return elapsed * (100.0 - percent) / percent
