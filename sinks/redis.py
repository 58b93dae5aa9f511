"""Redis sink: a hash per endpoint plus a one-round-trip node lookup per resource.

``astreg sink redis --url redis://HOST:6379/0 [--key-prefix astreg:]`` keeps, for every endpoint
of the locations topic, the hash ``<prefix>loc:<endpoint id>`` (fields: endpoint, technology,
resource, node, ip, port, transport, status, device_state, contact_uri, user_agent, rtt_us,
expires_at, updated_at, contacts as JSON; absent values are absent fields) and the string
``<prefix>node:<resource>`` = primary node (absent when no contact is routable). Each batch is
one MULTI/EXEC pipeline; a tombstone deletes both keys. Redis keys and values are binary-safe,
so any endpoint name is stored literally. Connection errors and timeouts (e.g. ``CLIENT PAUSE``)
raise SinkUnavailable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis import exceptions as redis_exc

from astreg.errors import SinkUnavailable
from schemas.models import EndpointLocation

from .settings import RedisSettings
from .sql import row_of

__all__ = ["RedisSink", "RedisSettings", "hash_of"]

logger = logging.getLogger(__name__)


def hash_of(key: str, loc: EndpointLocation) -> dict[str, str]:
    """The Redis hash of one location: strings only, absent values left out (pure)."""
    out: dict[str, str] = {}
    for name, value in row_of(key, loc).items():
        if value is None:
            continue
        out[name] = json.dumps(value, ensure_ascii=False) if name == "contacts" else str(value)
    return out


class RedisSink:
    """Write locations to Redis (see the module docstring)."""

    kind = "redis"
    full_replay = False

    def __init__(self, settings: RedisSettings):
        self.settings = settings
        self.prefix = settings.key_prefix
        self.client: aioredis.Redis | None = None

    def loc_key(self, endpoint: str) -> str:
        return f"{self.prefix}loc:{endpoint}"

    def node_key(self, resource: str) -> str:
        return f"{self.prefix}node:{resource}"

    async def setup(self) -> None:
        if self.client is None:
            self.client = aioredis.from_url(
                self.settings.url,
                socket_timeout=self.settings.timeout,
                socket_connect_timeout=self.settings.timeout,
                decode_responses=True,
            )
        await self._guard(self.client.ping())

    async def write_batch(self, upserts: dict[str, EndpointLocation], deletes: set[str]) -> None:
        assert self.client is not None
        pipe = self.client.pipeline(transaction=True)
        for key, loc in upserts.items():
            # Replace the whole hash: a field that became null must not survive from before.
            pipe.delete(self.loc_key(key))
            pipe.hset(self.loc_key(key), mapping=hash_of(key, loc))
            if loc.primary_node is not None:
                pipe.set(self.node_key(loc.resource), loc.primary_node)
            else:
                pipe.delete(self.node_key(loc.resource))
        for key in deletes:
            pipe.delete(self.loc_key(key))
            pipe.delete(self.node_key(key.partition("/")[2] or key))
        await self._guard(pipe.execute())

    async def stored_keys(self) -> list[str]:
        assert self.client is not None
        head = len(self.loc_key(""))

        async def scan() -> list[str]:
            assert self.client is not None
            pattern = _glob_escape(self.loc_key("")) + "*"
            return [k[head:] async for k in self.client.scan_iter(match=pattern, count=1000)]

        return await self._guard(scan())  # type: ignore[no-any-return]

    async def reconcile(self, alive: set[str], owned: Callable[[str], bool]) -> int:
        from .base import stale_keys

        stale = stale_keys(await self.stored_keys(), alive, owned)
        if stale:
            await self.write_batch({}, set(stale))
        return len(stale)

    async def flush(self) -> None:
        """Each batch was one EXEC: nothing is buffered."""

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def _guard(self, awaitable: object) -> object:
        try:
            return await awaitable  # type: ignore[misc]
        except (redis_exc.ConnectionError, redis_exc.TimeoutError, redis_exc.BusyLoadingError, OSError) as exc:
            raise SinkUnavailable(f"redis: {type(exc).__name__}: {exc}", 1.0) from exc


def _glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so a prefix matches literally."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
