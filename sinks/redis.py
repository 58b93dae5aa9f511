"""Redis sink: a hash per endpoint plus a one-round-trip node lookup per resource.

``astreg sink redis --url redis://HOST:6379/0 [--key-prefix astreg:]`` keeps, for every endpoint
of the locations topic, the hash ``<prefix>loc:<endpoint id>`` (fields: endpoint, technology,
resource, node, ip, port, transport, status, device_state, contact_uri, user_agent, rtt_us,
expires_at, updated_at, contacts as JSON, route_rank; absent values are absent fields), the set
``<prefix>res:<resource>`` of the endpoint ids registered for a resource, and the string
``<prefix>node:<resource>`` = the node of the endpoint that speaks for the resource
(``sinks.routes``: routable first, then PJSIP, SIP, IAX2), absent when none is routable. Each batch
is one atomic server-side script call per 2,000 endpoints (EVALSHA with the chunk as one JSON
argument); the script decides the resource's key from the set, so sinks of one group writing
different partitions agree. The last chunk of a batch also writes the next offset of each
partition into the hash ``<prefix>meta:offsets:<topic>``: the runner compares them with its own
to find a Redis that restarted without persistence, was flushed or restored from an older
snapshot. Redis keys and values are binary-safe, so any endpoint name is stored literally.
Connection errors, timeouts (``CLIENT PAUSE``) and refusals that pass (OOM, READONLY, LOADING,
MISCONF, BUSY) raise SinkUnavailable; a refused password is fatal (ConfigError).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_exc

from astreg.errors import ConfigError, PermanentWriteError, SinkUnavailable
from schemas.models import EndpointLocation

from .routes import resource_of
from .settings import RedisSettings
from .sql import row_of

__all__ = ["RedisSink", "RedisSettings", "hash_of", "classify"]

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
# Payload: {"u": [[loc key, resource set key, node key, endpoint id, [field, value, ...]], ...],
#           "d": [[loc key, resource set key, node key, endpoint id], ...],
#           "o": [offsets key, [partition, next offset, ...]] or absent}; ARGV[2] = "<prefix>loc:",
# ARGV[3] = "<prefix>meta:batches" (a count of the calls). That INCR comes first on purpose: Redis
# refuses a script on OOM (or READONLY) at its first write only if that command may grow memory
# (a DEL first would let the whole script past maxmemory), so a refusal leaves nothing written.
# A resource's node key is decided after the rows, from every endpoint registered for it: the
# lowest route_rank (sinks.routes), then the technology's name. The offsets come last: a script
# that fails half-way (OOM) never claims rows it did not write.
_BATCH_SCRIPT = """
redis.call('INCR', ARGV[3])
local b = cjson.decode(ARGV[1])
local loc = ARGV[2]
local touched = {}
for _, u in ipairs(b.u) do
  redis.call('DEL', u[1])
  if #u[5] > 0 then redis.call('HSET', u[1], unpack(u[5])) end
  redis.call('SADD', u[2], u[4])
  touched[u[2]] = u[3]
end
for _, d in ipairs(b.d) do
  redis.call('DEL', d[1])
  redis.call('SREM', d[2], d[4])
  touched[d[2]] = d[3]
end
for set, key in pairs(touched) do
  local found, node, rank, tech = false, false, 0, ''
  for _, ep in ipairs(redis.call('SMEMBERS', set)) do
    local h = redis.call('HMGET', loc .. ep, 'route_rank', 'technology', 'node')
    local r = tonumber(h[1])
    if r ~= nil and (not found or r < rank or (r == rank and h[2] < tech)) then
      found, node, rank, tech = true, h[3], r, h[2]
    end
  end
  if node then redis.call('SET', key, node) else redis.call('DEL', key) end
end
if b.o then redis.call('HSET', b.o[1], unpack(b.o[2])) end
return #b.u
"""

# Error replies that pass: memory, a replica, a load, a failed save, a busy script, a cluster moving.
_TRANSIENT_REPLIES = ("OOM", "READONLY", "LOADING", "MISCONF", "BUSY", "TRYAGAIN", "MASTERDOWN",
                      "CLUSTERDOWN", "NOREPLICAS")
_FATAL_REPLIES = ("NOAUTH", "WRONGPASS", "NOPERM")


def classify(exc: BaseException) -> str:
    """``fatal`` (credentials, permissions), ``transient`` (retry) or ``row`` (that record)."""
    if isinstance(exc, redis_exc.AuthenticationError | redis_exc.NoPermissionError):
        return "fatal"
    message = str(exc).lstrip()
    if isinstance(exc, redis_exc.ResponseError):
        if message.startswith(_FATAL_REPLIES) or "NOAUTH" in message or "WRONGPASS" in message:
            return "fatal"
        # redis-py turns OOM and READONLY replies into their own classes and drops the prefix.
        if isinstance(exc, redis_exc.ReadOnlyError | redis_exc.OutOfMemoryError) or message.startswith(_TRANSIENT_REPLIES):
            return "transient"
        return "row"
    return "transient"


class RedisSink:
    """Write locations to Redis (see the module docstring)."""

    kind = "redis"
    full_replay = False

    def __init__(self, settings: RedisSettings):
        self.settings = settings
        self.prefix = settings.key_prefix
        self.client: aioredis.Redis | None = None
        self._script: Any = None

    def loc_key(self, endpoint: str) -> str:
        return f"{self.prefix}loc:{endpoint}"

    def node_key(self, resource: str) -> str:
        return f"{self.prefix}node:{resource}"

    def resource_key(self, resource: str) -> str:
        return f"{self.prefix}res:{resource}"

    def offsets_key(self, topic: str) -> str:
        return f"{self.prefix}meta:offsets:{topic}"

    async def read_offsets(self, topic: str) -> dict[int, int]:
        assert self.client is not None
        raw: dict[str, str] = await self._guard(self.client.hgetall(self.offsets_key(topic)))  # type: ignore[assignment]
        return {int(p): int(o) for p, o in raw.items()}

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

    async def write_batch(
        self, upserts: dict[str, EndpointLocation], deletes: set[str], offsets: dict[Any, int] | None = None
    ) -> None:
        assert self.client is not None
        items = list(upserts.items())
        chunks = list(range(0, max(len(items), 1), _CHUNK))
        for start in chunks:
            payload: dict[str, Any] = {"u": [], "d": []}
            for key, loc in items[start : start + _CHUNK]:
                # The whole hash is replaced: a field that became null must not survive.
                flat = [x for pair in hash_of(key, loc).items() for x in pair]
                payload["u"].append([self.loc_key(key), self.resource_key(loc.resource),
                                     self.node_key(loc.resource), key, flat])
            if start == 0:
                payload["d"] = [[self.loc_key(k), self.resource_key(resource_of(k)), self.node_key(resource_of(k)), k]
                                for k in deletes]
            if start == chunks[-1] and offsets:
                topic = next(iter(offsets)).topic
                payload["o"] = [self.offsets_key(topic), [x for tp, off in sorted(offsets.items())
                                                          for x in (tp.partition, off)]]
            await self._guard(self._script(args=[json.dumps(payload, ensure_ascii=False), self.loc_key(""),
                                                 f"{self.prefix}meta:batches"]))

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
        except (redis_exc.RedisError, OSError) as exc:
            kind = classify(exc)
            text = f"redis: {type(exc).__name__}: {str(exc).strip()[:200]}"
            if kind == "fatal":
                raise ConfigError(f"Redis sink: {text}") from exc
            if kind == "row":
                raise PermanentWriteError(text) from exc
            raise SinkUnavailable(text, 1.0) from exc


def _glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so a prefix matches literally."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
