"""What ``%celery status`` and ``%celery tasks`` show: HTML in a notebook, plain text elsewhere."""

from __future__ import annotations

from typing import Any

from celery import Celery

from celerynb import config
from celerynb.rendering import render
from celerynb.workers import urls


def notebook_tasks(app: Celery) -> list[Any]:
    """``%%celery_task`` cells and ``@app.task`` functions defined in the notebook."""
    if not app.configured:  # nothing registered yet; reading tasks would start the server
        return []
    return sorted((t for t in app.tasks.values() if _from_notebook(t)), key=lambda t: t.name)


def _mode(app: Celery, cluster: Any) -> str:
    if not app.configured and urls.source_of(app) is None:  # reading settings would start the server
        return "not started"
    if app.conf.task_always_eager:
        return "eager (tasks run in the cell)"
    source = urls.source_of(app)
    if cluster is not None and cluster.workers:
        return f"in-kernel workers ({source})"
    return {"embedded": "embedded", "discovery": "celerynb up cluster", "env": "external (environment)",
            "explicit": "external", "app": "the app's own broker"}.get(source or "", "not started")


#: Shown instead of queue lengths when the cluster's embedded server is gone.
SERVER_DIED = "server:  died, and its queued tasks with it: %celery restart starts a new one"


def _cell_support(accepts: bool | None) -> str:
    """How a worker process stands with cell tasks; None: a plain Celery worker, not celerynb's app."""
    if accepts is None:
        return "plain Celery worker: the app's own tasks, no cell tasks"
    return "accepts cell tasks" if accepts else "refuses cell tasks: no cell key"


class ClusterStatus:
    """A snapshot of the cluster taken when the object is made."""

    def __init__(self, app: Celery, cluster: Any, *, ask_workers: bool = False) -> None:
        """``ask_workers``: broadcast to every worker whether it runs cell tasks (up to 1 s)."""
        self.app = app
        self.mode = _mode(app, cluster)
        self.status = cluster.status() if cluster is not None and cluster.app is app else None
        if self.status is None and urls.source_of(app):
            self.status = {"running": False, "broker": config.mask_url(app.conf.broker_url)}
        self.tasks = [t.name for t in notebook_tasks(app)]
        self.remote: dict[str, bool | None] = {}
        died = bool((self.status or {}).get("server_died"))
        if ask_workers and not died and urls.source_of(app) and not app.conf.task_always_eager and (
            urls.source_of(app) != "embedded" or (cluster is not None and cluster.processes)
        ):
            from celerynb.cluster.queues import cell_support

            local = {w["name"] for w in (self.status or {}).get("workers", []) if w["kind"] == "thread"}
            try:
                self.remote = {k: v for k, v in cell_support(app, timeout=1.0).items() if k not in local}
            except Exception:  # noqa: BLE001 - status must show even when the broker does not answer
                self.remote = {}

    def __repr__(self) -> str:
        s = self.status or {}
        if not s.get("running"):
            first = ("celerynb: connected, no workers in this kernel" if s.get("broker") else
                     "celerynb: no local cluster in this kernel (it starts on first use, or with %celery start)")
            lines = [first, f"app:     {self.app.main}"]
            if s.get("broker"):
                lines.append(f"broker:  {s['broker']}")
            lines.append(f"mode:    {self.mode}")
        else:
            lines = [
                "celerynb cluster",
                f"app:     {self.app.main}",
                f"broker:  {s['broker']}",
                *([SERVER_DIED] if s.get("server_died") else []),
                f"mode:    {self.mode}",
                "workers: " + (", ".join(
                    f"{w['name'].split('@')[0]} ({w['kind']}, {w['pool']} x{w['concurrency']}"
                    f"{', accepts cell tasks' if w['kind'] == 'thread' else ''}"
                    f"{', DIED' if w.get('died') else ''})" for w in s["workers"]
                ) or "none"),
                "queues:  " + ", ".join(f"{q}={n}" for q, n in s["queues"].items()),
                f"log:     {s['log_file']}",
            ]
        if self.remote:
            lines.append("worker processes: " + ", ".join(
                f"{name} ({_cell_support(ok)})"
                for name, ok in sorted(self.remote.items())
            ))
        lines.append("notebook tasks: " + (", ".join(self.tasks) or "none"))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return render("cluster_status", status=self.status or {"running": False}, mode=self.mode,
                      remote=[(name, _cell_support(ok)) for name, ok in sorted(self.remote.items())], tasks=self.tasks)


def _from_notebook(task: Any) -> bool:
    """A ``%%celery_task`` cell, or a plain ``@app.task`` defined in the notebook itself."""
    return hasattr(task, "_celerynb_source") or type(task).__module__ in ("__main__", "notebook")


class TaskList:
    """Registered tasks of an app: notebook tasks first, then package tasks; Celery's and celerynb's own
    (``celery.*``, the ``celerynb.*`` batch runners of ``map``) hidden."""

    def __init__(self, app: Celery) -> None:
        with urls.without_starting_a_server():  # a listing reads the configuration: nothing to start
            app.loader.import_default_modules()  # the app's ``include`` modules define its tasks
            tasks = [t for name, t in sorted(app.tasks.items()) if not name.startswith(("celery.", "celerynb."))]
        self.rows = [
            (t.name, "notebook" if _from_notebook(t) else "package", getattr(t, "queue", None) or "default")
            for t in sorted(tasks, key=lambda t: (not _from_notebook(t), t.name))
        ]

    def __repr__(self) -> str:
        width = max((len(r[0]) for r in self.rows), default=4)
        return "\n".join(f"{name:<{width}}  {kind:<8}  {queue}" for name, kind, queue in self.rows)

    def _repr_html_(self) -> str:
        return render("task_list", rows=self.rows)
