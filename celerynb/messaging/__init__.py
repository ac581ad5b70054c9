"""Messaging next to Celery: asyncio Redis client, pub/sub dispatcher, and the Redis-to-Celery bridge.

``celerynb.messaging.redis`` holds :class:`AsyncRedisClient` and :class:`RedisPubSub`;
``celerynb.messaging.bridge`` holds :func:`redis_celery_bridge`. Nothing is imported here so
that ``import celerynb.messaging`` stays cheap and the submodule names are not shadowed.
"""
