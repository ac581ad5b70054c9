"""A small Celery project, laid out as in Celery's "Next steps" guide (tutorial 14).

Its own settings point at RabbitMQ and Redis on localhost; the tutorial runs it on celerynb's
embedded server with ``%celery use proj --local`` instead, so nothing needs to be installed.
"""

from celery import Celery

app = Celery(
    "proj",
    broker="amqp://guest:guest@localhost:5672//",
    backend="redis://localhost:6379/0",
    include=["proj.tasks"],
)
app.conf.update(result_expires=3600, task_serializer="json", accept_content=["json"], result_serializer="json")
