"""Redis sink: a hash per endpoint plus a one-round-trip node lookup per resource.

``astreg sink redis --url redis://HOST:6379/0 [--key-prefix astreg:]`` keeps, for every endpoint
of the locations topic, the hash ``<prefix>loc:<endpoint id>`` (fields: endpoint, technology,
resource, node, ip, port, transport, status, device_state, contact_uri, user_agent, rtt_us,
expires_at, updated_at, contacts as JSON; absent values are absent fields) and the string
``<prefix>node:<resource>`` = primary node (absent when no contact is routable). Each batch is
one atomic server-side script call per 2,000 endpoints (EVALSHA with the chunk as one JSON
argument; atomic like MULTI/EXEC); a tombstone deletes both keys. Redis keys and values are binary-safe,
so any endpoint name is stored literally. Connection errors and timeouts (e.g. ``CLIENT PAUSE``)
raise SinkUnavailable. The string ``<prefix>meta:store`` holds an id of the store's contents: a
Redis that restarted without persistence (or was flushed) has lost it, :meth:`RedisSink.intact`
then says so and the runner rebuilds the store from the topic.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_exc

from astreg.errors import SinkUnavailable
from schemas.models import EndpointLocation

from .settings import RedisSettings
from .sql import row_of

__all__ = ["RedisSink", "RedisSettings", "hash_of"]

logger = logging.getLogger(__name__)

_CHUNK = 2000  # endpoints per script call: bounds the time Redis is busy with one script


def hash_of(key: str, loc: EndpointLocation) -> dict[str, str]:
    """The Redis hash of one location: strings only, absent values left out (pure)."""
    out: dict[str, str] = {}
    for name, value in row_of(key, loc).items():
        if value is None:
            continue
        out[name] = json.dumps(value, ensure_ascii=False) if name == "contacts" else str(value)
    return out


# One script call per chunk: Redis runs a script atomically (like MULTI/EXEC), and the chunk
# travels as one JSON argument decoded by Redis' built-in cjson, so the client packs one argument
# instead of ~35 per endpoint (with MULTI, redis-py's per-argument packing costs more than the write).
# Payload: {"u": [[loc key, node key, node or "", [field, value, ...]], ...], "d": [[loc key, node key], ...]}.
_BATCH_SCRIPT = """
local b = cjson.decode(ARGV[1])
for _, u in ipairs(b.u) do
  redis.call('DEL', u[1])
  if #u[4] > 0 then redis.call('HSET', u[1], unpack(u[4])) end
  if u[3] == '' then redis.call('DEL', u[2]) else redis.call('SET', u[2], u[3]) end
end
for _, d in ipairs(b.d) do redis.call('DEL', d[1], d[2]) end
return #b.u
"""


class RedisSink:
    """Write locations to Redis (see the module docstring)."""

    kind = "redis"
    full_replay = False

    def __init__(self, settings: RedisSettings):
        self.settings = settings
        self.prefix = settings.key_prefix
        self.client: aioredis.Redis | None = None
        self._script: Any = None
        self._store_id: str | None = None  # the marker's value when this sink last checked it

    def loc_key(self, endpoint: str) -> str:
        return f"{self.prefix}loc:{endpoint}"

    def node_key(self, resource: str) -> str:
        return f"{self.prefix}node:{resource}"

    @property
    def marker_key(self) -> str:
        return f"{self.prefix}meta:store"

    async def intact(self) -> bool:
        """False when the store lost what was written to it since this sink last looked.

        The marker holds a random id of the store's contents. Gone (Redis restarted without
        persistence, FLUSHALL) or changed (another instance of the group found it gone first):
        the keys may be gone too, so the caller rebuilds. The first answer of a process is True
        only if the marker exists (keys written by an earlier run are still there).
        """
        assert self.client is not None
        client = self.client

        async def check() -> bool:
            created = await client.set(self.marker_key, uuid.uuid4().hex, nx=True)
            raw = await client.get(self.marker_key)
            current = raw.decode() if isinstance(raw, bytes) else raw
            seen, self._store_id = self._store_id, current
            if seen is None:  # this process' first look
                return not created
            return current == seen

        return bool(await self._guard(check()))

    async def setup(self) -> None:
        if self.client is None:
            self.client = aioredis.from_url(
                self.settings.url,
                socket_timeout=self.settings.timeout,
                socket_connect_timeout=self.settings.timeout,
                decode_responses=True,
            )
        self._script = self.client.register_script(_BATCH_SCRIPT)  # EVALSHA, loaded on first use
        await self._guard(self.client.ping())

    async def write_batch(self, upserts: dict[str, EndpointLocation], deletes: set[str]) -> None:
        assert self.client is not None
        items = list(upserts.items())
        for start in range(0, max(len(items), 1), _CHUNK):
            payload: dict[str, list[Any]] = {"u": [], "d": []}
            for key, loc in items[start : start + _CHUNK]:
                # The whole hash is replaced: a field that became null must not survive.
                flat = [x for pair in hash_of(key, loc).items() for x in pair]
                payload["u"].append([self.loc_key(key), self.node_key(loc.resource), loc.primary_node or "", flat])
            if start == 0:
                payload["d"] = [[self.loc_key(k), self.node_key(k.partition("/")[2] or k)] for k in deletes]
            await self._guard(self._script(args=[json.dumps(payload, ensure_ascii=False)]))

    async def stored_keys(self) -> list[str]:
        assert self.client is not None
        head = len(self.loc_key(""))

        async def scan() -> list[str]:
            assert self.client is not None
            pattern = _glob_escape(self.loc_key("")) + "*"
            return [k[head:] async for k in self.client.scan_iter(match=pattern, count=1000)]

        keys: list[str] = await self._guard(scan())  # type: ignore[assignment]
        return keys

    async def reconcile(self, alive: set[str], owned: Callable[[str], bool]) -> int:
        from .base import delete_stale_keys

        return await delete_stale_keys(self, alive, owned)

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
