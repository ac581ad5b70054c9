"""What a worker process imports: the pre-configured app and the predefined tasks.

Nothing here imports IPython or widgets, so ``celery -A celerynb.workers.celery_app worker``
stays lean.
"""
