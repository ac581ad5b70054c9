"""The project's app; broker, backend and queue come from the environment (tests give each run its own)."""

import os

from celery import Celery

app = Celery(
    "sharedproj",
    broker=os.environ.get("SHAREDPROJ_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("SHAREDPROJ_BACKEND", "redis://127.0.0.1:6379/13"),
    include=["sharedproj.tasks"],
)
app.conf.update(
    task_default_queue=os.environ.get("SHAREDPROJ_QUEUE", "sharedproj"),
    task_serializer="json",
    accept_content=["json"],
    result_expires=600,
    result_backend_transport_options={"global_keyprefix": os.environ.get("SHAREDPROJ_QUEUE", "sharedproj") + ":"},
)
