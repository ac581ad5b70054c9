"""The pre-configured Celery app: ``celery -A celerynb.workers.celery_app worker``.

Its broker and result backend are resolved on first use (see :mod:`celerynb.config`): the
environment, then a running ``celerynb up``, else an embedded server started on demand.
"""

from celery import Celery, signals

from celerynb import _compat
from celerynb.workers import batch, capture, cells, local_results, result_store, task_errors, urls

_compat.reuse_redis_clients()  # kombu builds a Redis client per command otherwise (3 per task)
_compat.explain_result_errors(annotate=task_errors.add_task_traceback)  # .get() shows the task's frames
_compat.skip_redundant_result_reads()  # .get() of a task subscribed to at send: no read first (a round trip)
_compat.skip_result_subscriptions(local_results.expected)  # run and stored in this process: handed over
result_store.install()  # one atomic round trip per stored state (Celery: two, and a RETRY-over-SUCCESS race)

app = Celery(
    "celerynb",
    include=["celerynb.workers.tasks"],
    task_cls="celerynb.workers.base:NotebookTask",
    tasks=cells.CellTaskRegistry(),
)
app._celerynb_managed = True  # its URLs are resolved by celerynb (see urls.py)
cells.install(app)
cells.add_cell_support_step(app)
batch.register(app)  # celerynb.map's batch messages (celerynb.workers.batch)
app.config_from_object("celerynb.workers.settings")
# Each task's output captured in worker processes (in-kernel workers install their own).
signals.worker_process_init.connect(capture.on_worker_process_init, weak=False, dispatch_uid="celerynb-capture-child")
signals.worker_init.connect(capture.on_worker_init, weak=False, dispatch_uid="celerynb-capture-worker")
app.on_configure.connect(urls.on_configure, sender=app, weak=False)

__all__ = ["app"]
