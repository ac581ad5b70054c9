"""The same end-to-end checks against the machine's Redis 7 and RabbitMQ (skipped where absent).

RabbitMQ is the broker with the Redis result backend, as the guide's production setup does.
"""

from __future__ import annotations

import _e2e
import pytest

import celerynb
from celerynb.workers import tasks, urls

pytestmark = pytest.mark.external


@pytest.fixture
def fresh(app):
    """The app resolved afresh after the test (``connect`` is sticky by design)."""
    yield app
    celerynb.stop()
    urls.forget(app)


def test_everything_on_machine_redis7(fresh, redis7_url):
    import redis

    cluster = celerynb.connect(redis7_url)
    assert cluster is celerynb.current() and cluster.server is None
    assert urls.source_of(fresh) == "explicit" and fresh.conf.broker_url == redis7_url
    _e2e.check_everything()
    # The results really are in that database.
    result = tasks.analyze_content.delay("stored in redis seven")
    result.get(timeout=30)
    client = redis.Redis.from_url(redis7_url)
    try:
        assert client.exists(f"celery-task-meta-{result.id}") == 1
        assert client.info("server")["redis_version"].startswith("7.")
    finally:
        client.close()


def test_everything_on_rabbitmq_with_redis_backend(fresh, rabbitmq_url, redis7_url):
    cluster = celerynb.connect(rabbitmq_url, backend=redis7_url)
    assert cluster.running and fresh.conf.broker_url == rabbitmq_url
    assert fresh.conf.result_backend == redis7_url
    assert cluster.status()["broker"] == "amqp://guest:***@127.0.0.1:5672//"
    _e2e.check_everything()


def test_rabbitmq_without_backend_says_results_are_unavailable(fresh, rabbitmq_url):
    """RabbitMQ alone has no result backend: submitting works, and results say why they are missing."""
    celerynb.connect(rabbitmq_url)
    assert not fresh.conf.result_backend
    result = tasks.analyze_content.delay("no backend")
    with pytest.raises(NotImplementedError, match="result backend"):
        result.get(timeout=5)
