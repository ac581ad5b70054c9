"""A user's Celery project, laid out as in Celery's "Next steps" guide."""

import os

from celery import Celery

app = Celery(
    "proj",
    broker=os.environ.get("PROJ_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("PROJ_BACKEND", "redis://127.0.0.1:6379/12"),
    include=["proj.tasks"],
)
app.conf.update(result_expires=3600, task_serializer="json", accept_content=["json"])
