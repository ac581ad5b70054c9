"""A project laid out the Django way: tasks declared with ``@shared_task``, bound to the current app."""

from .celery import app

__all__ = ["app"]
