"""celerynb's Celery settings: JSON only, started-state tracking, fast failure, two queues.

Usable for any app: ``app.config_from_object("celerynb.workers.settings")``.
"""

from celery.schedules import crontab
from kombu import Exchange, Queue

# Serialization: JSON only. Pickle is never accepted.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# States and results.
task_track_started = True
result_extended = True
result_expires = 24 * 3600
task_store_eager_result = True

# Limits: long enough for real work, short enough that nothing blocks a worker forever.
task_time_limit = 60 * 60
task_soft_time_limit = 55 * 60

# Queues: the guide routes urgent work to ``high-priority``.
task_default_queue = "default"
task_queues = (
    Queue("default", Exchange("default"), routing_key="default"),
    Queue("high-priority", Exchange("high-priority"), routing_key="high-priority"),
)
task_create_missing_queues = True

# Fail fast on the client side: a dead broker is an error in seconds, not a minute of retries.
broker_connection_timeout = 3.0
broker_connection_retry_on_startup = True
task_publish_retry_policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
redis_socket_connect_timeout = 3.0
redis_retry_on_timeout = False
result_backend_transport_options = {
    "retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
}
# The Redis transport pushes (BRPOP): a message is taken the moment it arrives. The polling
# interval is BRPOP's own timeout, i.e. how soon an idle worker notices it should stop
# (kombu's default, 1 s, makes a kernel shutdown slow; 0.1 s costs ~10 cheap commands/s).
broker_transport_options = {"visibility_timeout": 3600, "polling_interval": 0.1}

# Events: workers send heartbeats, so their event dispatcher exists and ``enable_events`` (Flower,
# ``celery control enable_events``, ``celerynb.ClusterMonitor``) turns task events on at once. They
# stay off until asked: each is a publish on the hot path (measured: a ``.delay()`` loop at 0.6x with
# task-sent events, a round trip +0.3 ms with -E). A ClusterMonitor turns ``task_send_sent_event``
# on for this process while it runs.
task_send_sent_event = False
worker_send_task_events = False

worker_hijack_root_logger = False
# Accepts tasks registered after start, including shipped notebook cells.
worker_consumer = "celerynb.workers.consumer:Consumer"
worker_redirect_stdouts = False
# ``--pool prefork`` (the default): a terminated task's child is killed if SIGTERM does not end it.
worker_pool = "celerynb.workers.prefork:TaskPool"

timezone = "UTC"
enable_utc = True

# The guide's periodic tasks.
beat_schedule = {
    "cleanup-every-hour": {
        "task": "tasks.cleanup",
        "schedule": 3600.0,
        "args": (),
    },
    "daily-report": {
        "task": "tasks.generate_report",
        "schedule": crontab(hour=7, minute=30),
        "args": ("daily",),
    },
}
