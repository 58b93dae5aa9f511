"""SQL sink: the locations table in SQLite, PostgreSQL or MariaDB/MySQL for func_odbc.

``astreg sink sql --url URL`` keeps table ``astreg_locations`` (one row per endpoint, primary
key ``endpoint``, index on ``resource``) equal to the compacted locations topic through
SQLAlchemy 2 asyncio: batched upserts (``ON CONFLICT DO UPDATE`` on PostgreSQL and SQLite,
``ON DUPLICATE KEY UPDATE`` on MariaDB/MySQL) and batched deletes, parameterized only. The table
is created on start, and columns a newer astreg added are added to an older table. SQLite runs
in WAL mode so Asterisk (func_odbc, res_config_sqlite3) can read while the sink writes. A
store that cannot be reached or does not answer in time raises SinkUnavailable; a row the
store refuses (a constraint) raises PermanentWriteError and is dead-lettered by the runner.

Every batch also upserts, in the same transaction, the next offset of each partition it covers
into ``astreg_sink_offsets`` (``topic``, ``topic_partition``, ``next_offset``): the runner compares
them with the group's offsets to find a database restored from an older backup or recreated
empty. A missing table (the database dropped and recreated under the sink) raises StoreLost: the
runner creates the tables again and rebuilds. Columns are sized for what SIP allows (a contact
host is up to 255 characters), and an older table's narrower columns are widened on start. The
view ``astreg_routes`` has one row per resource: the endpoint that speaks for it when several
technologies register the same resource (``sinks.routes``).
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
    SmallInteger,
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
from sqlalchemy.pool import NullPool

from astreg.errors import ConfigError, PermanentWriteError, SinkUnavailable, StoreLost
from schemas.models import Contact, EndpointLocation

from .routes import UNROUTABLE, route_rank
from .settings import SqlSettings

__all__ = ["SqlSink", "SqlSettings", "TABLE", "OFFSETS", "ROUTES_VIEW", "row_of", "contact_dict", "classify"]

logger = logging.getLogger(__name__)

metadata = MetaData()
TABLE = Table(
    "astreg_locations",
    metadata,
    Column("endpoint", String(255), primary_key=True, comment="TECH/resource, e.g. PJSIP/1001"),
    Column("technology", String(32), nullable=False),
    Column("resource", String(255), nullable=False, index=True),
    Column("node", String(255), comment="primary node the dialplan routes to (NULL: none routable)"),
    # A contact host: an IP literal or a name of up to 255 characters (RFC 1035/3261).
    Column("ip", String(255)),
    Column("port", Integer),
    Column("transport", String(16)),  # udp, tcp, tls, ws, wss, sctp
    Column("status", String(16), nullable=False),
    Column("device_state", String(16), nullable=False),
    Column("contact_uri", Text),
    Column("user_agent", Text),
    Column("rtt_us", BigInteger),
    Column("expires_at", BigInteger, comment="UTC epoch ms"),
    Column("updated_at", BigInteger, nullable=False, comment="UTC epoch ms"),
    Column("contacts", JSON, comment="every contact of the endpoint, primary first"),
    Column("route_rank", SmallInteger, comment="order among the technologies of one resource (sinks.routes)"),
)
OFFSETS = Table(
    "astreg_sink_offsets",
    metadata,
    Column("topic", String(249), primary_key=True),  # Kafka topic names: at most 249 characters
    Column("topic_partition", Integer, primary_key=True, autoincrement=False),
    Column("next_offset", BigInteger, nullable=False, comment="next offset of the topic to apply"),
)
ROUTES_VIEW = "astreg_routes"
# One row per resource: the endpoint that speaks for it (lowest route_rank, then technology).
# NOT EXISTS rather than a window function: SQLite, PostgreSQL and MariaDB all push the
# dialplan's WHERE resource = ... into it and use the resource index.
_ROUTES_SELECT = (
    "SELECT l.resource, l.endpoint, l.technology, l.node, l.ip, l.port, l.transport, l.status, l.device_state,"
    " l.contact_uri, l.updated_at FROM astreg_locations l WHERE NOT EXISTS (SELECT 1 FROM astreg_locations o"
    " WHERE o.resource = l.resource AND o.endpoint <> l.endpoint AND (o.route_rank < l.route_rank"
    " OR (o.route_rank = l.route_rank AND o.technology < l.technology)))"
)
# The rank of rows written before the column existed, from the same rule.
_RANK_SQL = (
    "CASE technology "
    + " ".join(f"WHEN '{t}' THEN {route_rank(t, True)}" for t in ("PJSIP", "SIP", "IAX2"))
    + f" ELSE {route_rank('', True)} END + CASE WHEN node IS NULL THEN {UNROUTABLE} ELSE 0 END"
)
_UPDATABLE = [c.name for c in TABLE.columns if c.name != "endpoint"]
_COLUMNS = [c.name for c in TABLE.columns]

# PostgreSQL: one statement per batch whatever its size, every value a bound array (still fully
# parameterized); about 5x faster than a multi-row VALUES list and never near the 32767-parameter
# limit. The casts name each array's element type; contacts travel as JSON text.
_PG_TYPES = {"port": "int", "rtt_us": "bigint", "expires_at": "bigint", "updated_at": "bigint",
             "route_rank": "smallint"}
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
        "route_rank": route_rank(loc.technology, loc.primary_node is not None),
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
        [route_rank(x.technology, x.primary_node is not None) for x in locs],
    )


class SqlSink:
    """Upsert/delete endpoint rows in one SQL table (see the module docstring)."""

    kind = "sql"
    full_replay = False

    def __init__(self, settings: SqlSettings):
        self.settings = settings
        self.engine: AsyncEngine | None = None
        self._upsert: Any = None
        self._offsets_upsert: Any = None
        self._ready = False  # set up once: a missing database is now an outage, not a wrong URL

    async def setup(self) -> None:
        if self.engine is None:
            self.engine = self._make_engine()
        dialect = self.engine.dialect.name
        self._upsert = self._upsert_statement(TABLE, dialect, ["endpoint"])
        self._offsets_upsert = self._upsert_statement(OFFSETS, dialect, ["topic", "topic_partition"])
        await self._guard(self._migrate(), "create/migrate tables")
        self._ready = True

    def _make_engine(self) -> AsyncEngine:
        url = self.settings.url
        kw: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            # No pool: each batch opens the file by name, so a file replaced or deleted under the
            # sink (a restore, a mistake) is seen at the next batch instead of written to unlinked.
            kw = {"connect_args": {"timeout": self.settings.write_timeout}, "poolclass": NullPool}
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
    def _upsert_statement(table: Table, dialect: str, keys: list[str]) -> Any:
        others = [c.name for c in table.columns if c.name not in keys]
        if dialect == "mysql":
            from sqlalchemy.dialects.mysql import insert as my_insert

            mins = my_insert(table)
            return mins.on_duplicate_key_update({c: mins.inserted[c] for c in others})
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        from sqlalchemy.dialects.sqlite import insert as lite_insert  # same ON CONFLICT API

        ins: Any = pg_insert(table) if dialect == "postgresql" else lite_insert(table)
        return ins.on_conflict_do_update(index_elements=keys, set_={c: ins.excluded[c] for c in others})

    async def _migrate(self) -> None:
        assert self.engine is not None
        dialect = self.engine.dialect
        prep = dialect.identifier_preparer
        name = prep.quote(TABLE.name)
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            existing = await conn.run_sync(lambda c: {col["name"]: col for col in inspect(c).get_columns(TABLE.name)})
            views = await conn.run_sync(lambda c: set(inspect(c).get_view_names()))
            narrow = [col for col in TABLE.columns if col.name in existing and _narrower(existing[col.name]["type"], col.type)]
            if narrow and dialect.name != "sqlite" and ROUTES_VIEW in views:
                # PostgreSQL cannot change the type of a column a view reads: the view is made again below.
                await conn.exec_driver_sql(f"DROP VIEW {ROUTES_VIEW}")
                views.discard(ROUTES_VIEW)
            # Identifiers and types are ours, never input: DDL cannot take bind parameters.
            for col in narrow:
                if dialect.name == "sqlite":
                    continue  # SQLite does not enforce VARCHAR lengths
                typ = col.type.compile(dialect)
                logger.info("sql sink: widening column %s to %s", col.name, typ)
                if dialect.name == "postgresql":
                    await conn.exec_driver_sql(f"ALTER TABLE {name} ALTER COLUMN {prep.quote(col.name)} TYPE {typ}")
                else:
                    null = "NULL" if col.nullable else "NOT NULL"
                    await conn.exec_driver_sql(f"ALTER TABLE {name} MODIFY COLUMN {prep.quote(col.name)} {typ} {null}")
            for col in TABLE.columns:
                if col.name in existing:
                    continue
                ddl = f"ALTER TABLE {name} ADD COLUMN {prep.quote(col.name)} {col.type.compile(dialect)}"
                logger.info("sql sink: adding column %s", col.name)
                await conn.exec_driver_sql(ddl)
            if "route_rank" not in existing:
                await conn.exec_driver_sql(f"UPDATE {name} SET route_rank = {_RANK_SQL} WHERE route_rank IS NULL")
            # An older table may lack the index the dialplan's lookup by extension needs.
            for index in TABLE.indexes:
                await conn.run_sync(_create_index, index)
            if ROUTES_VIEW not in views:
                await conn.exec_driver_sql(f"CREATE VIEW {ROUTES_VIEW} AS {_ROUTES_SELECT}")

    async def write_batch(
        self, upserts: dict[str, EndpointLocation], deletes: set[str], offsets: dict[Any, int] | None = None
    ) -> None:
        assert self.engine is not None
        postgres = self.engine.dialect.name == "postgresql"
        items = list(upserts.items())
        rows = [] if postgres else [row_of(k, v) for k, v in items]
        gone = sorted(deletes)
        marks = [{"topic": tp.topic, "topic_partition": tp.partition, "next_offset": off}
                 for tp, off in sorted((offsets or {}).items())]

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
                if marks:  # in the rows' transaction: the offsets never claim rows that are not there
                    await conn.execute(self._offsets_upsert, marks)

        await self._guard(write(), "write")

    async def read_offsets(self, topic: str) -> dict[int, int]:
        assert self.engine is not None

        async def read() -> dict[int, int]:
            assert self.engine is not None
            async with self.engine.connect() as conn:
                rows = await conn.execute(
                    select(OFFSETS.c.topic_partition, OFFSETS.c.next_offset).where(OFFSETS.c.topic == topic))
                found = {int(p): int(o) for p, o in rows}
                # The rows' table may be gone while the offsets' is not (dropped by hand).
                await conn.execute(select(TABLE.c.endpoint).limit(1))
                return found

        return await self._guard(read(), "read offsets")  # type: ignore[no-any-return]

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
        """Await ``coro`` with a deadline, sorting store failures into the runner's error classes."""
        try:
            return await asyncio.wait_for(coro, self.settings.write_timeout)
        except TimeoutError as exc:
            raise SinkUnavailable(f"{what}: no answer within {self.settings.write_timeout}s", 1.0) from exc
        except (sa_exc.IntegrityError, sa_exc.DataError) as exc:
            raise PermanentWriteError(f"{what}: {exc.orig}") from exc
        except sa_exc.DBAPIError as exc:
            kind = classify(exc)
            text = f"{what}: {_first_line(exc.orig if exc.orig is not None else exc)}"
            if kind == "row":
                raise PermanentWriteError(text) from exc
            if kind == "lost":
                raise StoreLost(text, 0.0) from exc
            if kind == "fatal" or (kind == "database" and not self._ready):
                raise ConfigError(f"SQL sink: {text} ({_safe_url(self.settings.url)})") from exc
            raise SinkUnavailable(text, 1.0) from exc
        except OSError as exc:
            raise SinkUnavailable(f"{what}: {type(exc).__name__}: {_first_line(exc)}", 1.0) from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _safe_url(url: str) -> str:
    """The URL without its password, for an error message."""
    head, sep, tail = url.partition("://")
    if "@" not in tail:
        return url
    cred, _, host = tail.rpartition("@")
    return f"{head}{sep}{cred.partition(':')[0]}@{host}"


def _narrower(have: Any, want: Any) -> bool:
    """An existing VARCHAR shorter than ours (a table of an earlier release)."""
    return bool(getattr(have, "length", None) and getattr(want, "length", None) and have.length < want.length)


# SQLSTATE (PostgreSQL) and MariaDB/MySQL error numbers of each class. "database": the database
# does not exist — a wrong URL at start, a drop-and-recreate in progress once the sink ran.
_PG_FATAL = ("28", "42501")  # invalid authorization / password; insufficient privilege
_PG_LOST = ("42P01",)  # undefined_table
_PG_DATABASE = ("3D000",)  # invalid_catalog_name
_MY_FATAL = {1044, 1045, 1142, 1698}  # access denied (db, user, table), no password plugin
_MY_LOST = {1146}  # table doesn't exist
_MY_DATABASE = {1049}  # unknown database


def classify(exc: Exception) -> str:
    """``row`` (this row can never be written), ``lost`` (the tables are gone), ``fatal``
    (credentials or privileges), ``database`` (no such database) or ``transient``.

    asyncpg's errors reach SQLAlchemy as plain DBAPIError, so the class is read from the code.
    """
    orig = getattr(exc, "orig", None)
    args = getattr(orig, "args", ()) or ()
    errno = args[0] if args and isinstance(args[0], int) else None
    if errno is not None:  # MariaDB/MySQL: the error number is precise, its SQLSTATE is not
        if errno in _MY_LOST:
            return "lost"
        if errno in _MY_FATAL:
            return "fatal"
        if errno in _MY_DATABASE:
            return "database"
        if 1264 <= errno <= 1265 or errno in (1048, 1062, 1366, 1406, 1452):
            return "row"  # out of range, NULL, duplicate, incorrect value, too long, foreign key
        return "transient"
    code = str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")
    if code:
        if code[:2] in ("22", "23"):
            return "row"
        if code in _PG_LOST:
            return "lost"
        if code[:2] == _PG_FATAL[0] or code in _PG_FATAL[1:]:
            return "fatal"
        if code in _PG_DATABASE:
            return "database"
        return "transient"
    message = str(orig or exc)
    if "no such table" in message:  # SQLite
        return "lost"
    return "transient"


def _create_index(sync_conn: Any, index: Any) -> None:
    index.create(sync_conn, checkfirst=True)
