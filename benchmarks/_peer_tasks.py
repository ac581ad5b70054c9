"""The peers benchmark's work, for every system but celerynb (whose tasks are notebook cells).

Plain functions (``plus_one``, ``sleep_10ms``), pickled by reference by dask and ipyparallel
(their worker processes import this module: ``benchmarks/`` is on their ``PYTHONPATH``), and a
plain Celery app whose tasks wrap them, as a user's project would define it: JSON, Redis broker
and backend, nothing of celerynb. ``celery -A _peer_tasks worker`` serves it; the URL (with its
password) comes from the environment, never the command line.
"""

from __future__ import annotations

import os
import time

from celery import Celery

URL_ENV = "CELERYNB_BENCH_PEERS_URL"


def plus_one(x):
    return x + 1


def sleep_10ms(x):
    time.sleep(0.01)
    return x


_url = os.environ.get(URL_ENV, "redis://127.0.0.1:1/0")  # unset: importable, never connects
app = Celery("peers", broker=_url, backend=_url)
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)

add_one_task = app.task(name="peers.plus_one")(plus_one)
sleep_task = app.task(name="peers.sleep_10ms")(sleep_10ms)
