"""IPython integration: ``%load_ext celerynb``, the ``%celery`` and ``%%celery_task`` magics,
cell tasks, display formatters and nested asyncio. The layer users touch in a notebook."""
