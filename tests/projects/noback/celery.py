"""A project with a broker and no result backend."""

from celery import Celery

app = Celery("noback", broker="redis://127.0.0.1:6379/12", include=["noback.tasks"])
