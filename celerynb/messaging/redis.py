"""The guide's import path for Redis from asyncio: ``from celerynb.messaging.redis import ...``.

The client lives in :mod:`celerynb.messaging.client`, the pub/sub dispatcher in
:mod:`celerynb.messaging.pubsub`.
"""

from celerynb.messaging.client import AsyncRedisClient, NotConnected, default_url
from celerynb.messaging.pubsub import RedisPubSub

__all__ = ["AsyncRedisClient", "NotConnected", "RedisPubSub", "default_url"]
