"""Every use of another project's private attributes, in one place.

Public APIs do not cover a worker inside a kernel, moving an app to a new server, or bulk
publishing, so celerynb reaches into Celery, kombu, the standard library and ipywidgets here
and nowhere else. Each shim names the version it was checked on; ``tests/test_compat.py``
has one test per shim that fails loudly when a release removes what it reaches for.

Checked on: celery 5.7.0, kombu 5.7.0, redis-py 8.1.0, ipywidgets 8.1.9, CPython 3.11-3.13.
"""


from __future__ import annotations

from celerynb._compat.celery_internals import (
    active_request_ids,
    allow_result_get,
    celery_current_apps,
    clear_worker_stop_flags,
    drop_app_connection_caches,
    drop_kombu_pools,
    eager_task_name,
    eager_value,
    exec_options,
    explain_result_errors,
    is_revoked,
    item_results,
    live_receivers,
    mark_revoked,
    no_result_subscribe_per_task,
    pop_current_task,
    push_current_task,
    replace_task_registry,
    request_worker_stop,
    result_backend_if_created,
    result_meta,
    route_redis_result_stores,
    sends_plain_messages,
    set_celery_current_apps,
    skip_redundant_result_reads,
    take_result_pubsub,
    task_registry,
    unproxied,
)
from celerynb._compat.jupyter_internals import (
    act_on_clicks_at_once,
    run_before_thread_join_at_exit,
    widget_mimebundle,
)
from celerynb._compat.kombu_internals import (
    caught_puts,
    is_redis_channel,
    json_codec_is,
    put,
    queue_expires,
    redis_bound_queues,
    redis_list_key,
    redis_queue_lists,
    reserved_request_ids,
    restore_unacked,
    reuse_redis_clients,
    supports_batch_publish,
    unacked_messages,
)

__all__ = [
    "act_on_clicks_at_once",
    "active_request_ids",
    "allow_result_get",
    "caught_puts",
    "celery_current_apps",
    "clear_worker_stop_flags",
    "drop_app_connection_caches",
    "drop_kombu_pools",
    "eager_task_name",
    "eager_value",
    "exec_options",
    "explain_result_errors",
    "is_redis_channel",
    "is_revoked",
    "item_results",
    "json_codec_is",
    "live_receivers",
    "mark_revoked",
    "no_result_subscribe_per_task",
    "pop_current_task",
    "push_current_task",
    "put",
    "queue_expires",
    "redis_bound_queues",
    "redis_list_key",
    "redis_queue_lists",
    "replace_task_registry",
    "request_worker_stop",
    "reserved_request_ids",
    "restore_unacked",
    "result_backend_if_created",
    "result_meta",
    "reuse_redis_clients",
    "route_redis_result_stores",
    "run_before_thread_join_at_exit",
    "sends_plain_messages",
    "set_celery_current_apps",
    "skip_redundant_result_reads",
    "supports_batch_publish",
    "take_result_pubsub",
    "task_registry",
    "unacked_messages",
    "unproxied",
    "widget_mimebundle",
]
