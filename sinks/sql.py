"""SQL sink: the locations table in SQLite, PostgreSQL or MariaDB/MySQL for func_odbc.

``astreg sink sql --url URL`` keeps table ``astreg_locations`` (one row per endpoint, primary
key ``endpoint``, index on ``resource``) equal to the compacted locations topic through
SQLAlchemy 2 asyncio: batched upserts (``ON CONFLICT DO UPDATE`` on PostgreSQL and SQLite,
``ON DUPLICATE KEY UPDATE`` on MariaDB/MySQL) and batched deletes, parameterized only. The table
is created on start, and columns a newer astreg added are added to an older table. SQLite runs
in WAL mode so Asterisk (func_odbc, res_config_sqlite3) can read while the sink writes. A
store that cannot be reached or does not answer in time raises SinkUnavailable; a row the
store refuses (a constraint) raises PermanentWriteError and is dead-lettered by the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    event,
    inspect,
    select,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from astreg.errors import ConfigError, PermanentWriteError, SinkUnavailable
from schemas.models import Contact, EndpointLocation

from .settings import SqlSettings

__all__ = ["SqlSink", "SqlSettings", "TABLE", "row_of", "contact_dict"]

logger = logging.getLogger(__name__)

metadata = MetaData()
TABLE = Table(
    "astreg_locations",
    metadata,
    Column("endpoint", String(255), primary_key=True, comment="TECH/resource, e.g. PJSIP/1001"),
    Column("technology", String(32), nullable=False),
    Column("resource", String(255), nullable=False, index=True),
    Column("node", String(255), comment="primary node the dialplan routes to (NULL: none routable)"),
    Column("ip", String(64)),
    Column("port", Integer),
    Column("transport", String(16)),
    Column("status", String(16), nullable=False),
    Column("device_state", String(16), nullable=False),
    Column("contact_uri", Text),
    Column("user_agent", Text),
    Column("rtt_us", BigInteger),
    Column("expires_at", BigInteger, comment="UTC epoch ms"),
    Column("updated_at", BigInteger, nullable=False, comment="UTC epoch ms"),
    Column("contacts", JSON, comment="every contact of the endpoint, primary first"),
)
_UPDATABLE = [c.name for c in TABLE.columns if c.name != "endpoint"]
_COLUMNS = [c.name for c in TABLE.columns]

# PostgreSQL: one statement per batch whatever its size, every value a bound array (still fully
# parameterized); about 5x faster than a multi-row VALUES list and never near the 32767-parameter
# limit. The casts name each array's element type; contacts travel as JSON text.
_PG_TYPES = {"port": "int", "rtt_us": "bigint", "expires_at": "bigint", "updated_at": "bigint"}
_PG_UPSERT = (
    f"INSERT INTO astreg_locations ({', '.join(_COLUMNS)}) "
    f"SELECT {', '.join(c + '::json' if c == 'contacts' else c for c in _COLUMNS)} FROM unnest("
    + ", ".join(f"${i}::{_PG_TYPES.get(c, 'text')}[]" for i, c in enumerate(_COLUMNS, 1))
    + f") AS t({', '.join(_COLUMNS)}) ON CONFLICT (endpoint) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _UPDATABLE)
)


def contact_dict(c: Contact) -> dict[str, Any]:
    """A contact as JSON-ready dict; equal to ``schemas.codec.to_dict`` (a test keeps it so),
    written out because it runs for every row of every batch."""
    return {
        "node": c.node, "uri": c.uri, "aor": c.aor, "status": c.status.value, "ip": c.ip, "port": c.port,
        "transport": c.transport, "user_agent": c.user_agent, "rtt_us": c.rtt_us,
        "expires_at_ms": c.expires_at_ms, "registered_at_ms": c.registered_at_ms,
        "updated_at_ms": c.updated_at_ms, "stale": c.stale, "primary": c.primary,
    }


def row_of(key: str, loc: EndpointLocation) -> dict[str, Any]:
    """The table row of one location (pure)."""
    contacts = [contact_dict(c) for c in loc.contacts]
    return {
        "endpoint": key,
        "technology": loc.technology,
        "resource": loc.resource,
        "node": loc.primary_node,
        "ip": loc.ip,
        "port": loc.port,
        "transport": loc.transport,
        "status": loc.status.value,
        "device_state": loc.device_state.value,
        "contact_uri": loc.contact_uri,
        "user_agent": loc.user_agent,
        "rtt_us": loc.rtt_us,
        "expires_at": loc.expires_at_ms,
        "updated_at": loc.updated_at_ms,
        "contacts": contacts,
    }


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _pg_arrays(part: list[tuple[str, EndpointLocation]]) -> tuple[list[Any], ...]:
    """Column-wise arrays of a chunk for _PG_UPSERT, in _COLUMNS order (built straight from the
    locations: this runs for every row and was half the cost of a write)."""
    locs = [loc for _, loc in part]
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    return (
        [k for k, _ in part],
        [x.technology for x in locs],
        [x.resource for x in locs],
        [x.primary_node for x in locs],
        [x.ip for x in locs],
        [x.port for x in locs],
        [x.transport for x in locs],
        [x.status.value for x in locs],
        [x.device_state.value for x in locs],
        [x.contact_uri for x in locs],
        [x.user_agent for x in locs],
        [x.rtt_us for x in locs],
        [x.expires_at_ms for x in locs],
        [x.updated_at_ms for x in locs],
        [dumps([contact_dict(c) for c in x.contacts]) for x in locs],
    )


class SqlSink:
    """Upsert/delete endpoint rows in one SQL table (see the module docstring)."""

    kind = "sql"
    full_replay = False

    def __init__(self, settings: SqlSettings):
        self.settings = settings
        self.engine: AsyncEngine | None = None
        self._upsert: Any = None

    async def setup(self) -> None:
        if self.engine is None:
            self.engine = self._make_engine()
        self._upsert = self._upsert_statement(self.engine.dialect.name)
        await self._guard(self._migrate(), "create/migrate table")

    def _make_engine(self) -> AsyncEngine:
        url = self.settings.url
        kw: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kw = {"connect_args": {"timeout": self.settings.write_timeout}}
        elif url.startswith("postgresql"):
            kw["connect_args"] = {"timeout": self.settings.write_timeout}
        elif url.startswith("mysql"):
            kw["connect_args"] = {"connect_timeout": int(self.settings.write_timeout)}
        else:
            raise ConfigError(f"unsupported SQL URL {url.split(':', 1)[0]!r}: use sqlite+aiosqlite, postgresql+asyncpg or mysql+asyncmy")
        engine = create_async_engine(url, json_serializer=lambda v: json.dumps(v, ensure_ascii=False), **kw)
        if engine.dialect.name == "sqlite":
            @event.listens_for(engine.sync_engine, "connect")
            def _wal(dbapi_conn: Any, _record: Any) -> None:
                # WAL: Asterisk reads the file while we write; NORMAL sync is safe in WAL mode.
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()
        return engine

    @staticmethod
    def _upsert_statement(dialect: str) -> Any:
        if dialect == "mysql":
            from sqlalchemy.dialects.mysql import insert as my_insert

            mins = my_insert(TABLE)
            return mins.on_duplicate_key_update({c: mins.inserted[c] for c in _UPDATABLE})
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        from sqlalchemy.dialects.sqlite import insert as lite_insert  # same ON CONFLICT API

        ins: Any = pg_insert(TABLE) if dialect == "postgresql" else lite_insert(TABLE)
        return ins.on_conflict_do_update(index_elements=["endpoint"], set_={c: ins.excluded[c] for c in _UPDATABLE})

    async def _migrate(self) -> None:
        assert self.engine is not None
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            existing = await conn.run_sync(lambda c: {col["name"] for col in inspect(c).get_columns(TABLE.name)})
            prep = self.engine.dialect.identifier_preparer
            for col in TABLE.columns:
                if col.name in existing:
                    continue
                # Identifiers and types are ours, never input: DDL cannot take bind parameters.
                ddl = f"ALTER TABLE {prep.quote(TABLE.name)} ADD COLUMN {prep.quote(col.name)} {col.type.compile(self.engine.dialect)}"
                logger.info("sql sink: adding column %s", col.name)
                await conn.exec_driver_sql(ddl)
            # An older table may lack the index the dialplan's lookup by extension needs.
            for index in TABLE.indexes:
                await conn.run_sync(_create_index, index)

    async def write_batch(self, upserts: dict[str, EndpointLocation], deletes: set[str]) -> None:
        assert self.engine is not None
        postgres = self.engine.dialect.name == "postgresql"
        items = list(upserts.items())
        rows = [] if postgres else [row_of(k, v) for k, v in items]
        gone = sorted(deletes)

        async def write() -> None:
            assert self.engine is not None
            async with self.engine.begin() as conn:
                if postgres:
                    await self._pg_upsert(conn, items)
                else:
                    for part in _chunks(rows, self.settings.chunk):
                        await conn.execute(self._upsert, part)
                for part in _chunks(gone, 1000):
                    await conn.execute(delete(TABLE).where(TABLE.c.endpoint.in_(part)))

        await self._guard(write(), "write")

    async def _pg_upsert(self, conn: Any, rows: list[tuple[str, EndpointLocation]]) -> None:
        """Upsert in chunks, preparing the next chunk while the server runs the previous one
        (the server works on the other core: this roughly doubles the rate)."""
        running: asyncio.Task[Any] | None = None
        try:
            for part in _chunks(rows, min(self.settings.chunk, 1000)):
                arrays = _pg_arrays(part)
                if running is not None:
                    await running
                running = asyncio.ensure_future(conn.exec_driver_sql(_PG_UPSERT, arrays))
                for _ in range(4):  # let the task put the statement on the wire before we compute
                    await asyncio.sleep(0)
            if running is not None:
                await running
        finally:
            if running is not None and not running.done():
                running.cancel()
                with contextlib.suppress(BaseException):
                    await running

    async def stored_keys(self) -> list[str]:
        assert self.engine is not None

        async def read() -> list[str]:
            assert self.engine is not None
            async with self.engine.connect() as conn:
                return list((await conn.execute(select(TABLE.c.endpoint))).scalars())

        return await self._guard(read(), "read keys")

    async def reconcile(self, alive: set[str], owned: Callable[[str], bool]) -> int:
        from .base import delete_stale_keys

        return await delete_stale_keys(self, alive, owned)

    async def flush(self) -> None:
        """Every batch is its own committed transaction: nothing is buffered."""

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None

    async def _guard(self, coro: Any, what: str) -> Any:
        """Await ``coro`` with a deadline, turning store failures into the runner's two errors."""
        try:
            return await asyncio.wait_for(coro, self.settings.write_timeout)
        except TimeoutError as exc:
            raise SinkUnavailable(f"{what}: no answer within {self.settings.write_timeout}s", 1.0) from exc
        except (sa_exc.IntegrityError, sa_exc.DataError) as exc:
            raise PermanentWriteError(f"{what}: {exc.orig}") from exc
        except sa_exc.DBAPIError as exc:
            if _refuses_the_data(exc):
                raise PermanentWriteError(f"{what}: {exc.orig}") from exc
            raise SinkUnavailable(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", 1.0) from exc
        except OSError as exc:
            raise SinkUnavailable(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", 1.0) from exc


def _create_index(sync_conn: Any, index: Any) -> None:
    index.create(sync_conn, checkfirst=True)


def _refuses_the_data(exc: Exception) -> bool:
    """SQLSTATE class 22 (data exception) or 23 (integrity): this row can never be written.

    asyncpg's errors reach SQLAlchemy as plain DBAPIError, so the class is read from the code.
    """
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or ""
    return str(code)[:2] in ("22", "23")
