"""Test harness: real Kafka (embedded Tansu by default), real PostgreSQL/MariaDB/Redis.

* ``kafka``: KafkaSettings for the session's broker. ``KAFKA_BOOTSTRAP_SERVERS`` set → that
  external broker; ``--kafka=testcontainers`` → a real Apache Kafka in Docker (skips cleanly when
  no Docker engine answers); default → one embedded broker per test session, random port.
* ``topics``: the contract's topics under unique names for this test, created explicitly.
* ``procs``: a ProcessGroup; every process a test starts is stopped (TERM, grace, KILL) even
  when the test fails.
* ``pg_url`` / ``mysql_url`` / ``sqlite_url`` / ``redis_url`` + ``redis_prefix``: each test in its
  own database or key prefix on this machine's real servers.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hypothesis  # noqa: F401  (see below)
import pytest

from astreg.broker import EmbeddedBroker
from astreg.proc import ProcessGroup
from astreg.settings import KafkaSettings, TopicSettings
from astreg.topics import ensure_topics

# hypothesis is imported here, not lazily by its pytest plugin at the end of the session: after
# the Faust agent tests, a late import's AST parse hit CPython 3.11.7's "AST constructor
# recursion depth mismatch" SystemError when only tests/stream was selected.
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kafka",
        default="auto",
        choices=["auto", "embedded", "external", "testcontainers"],
        help="Which Kafka the tests use (auto: KAFKA_BOOTSTRAP_SERVERS if set, else embedded).",
    )


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def unique() -> str:
    """A fresh name fragment for topics, groups, databases and key prefixes."""
    return unique_name()


@pytest.fixture(scope="session")
def kafka(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSettings]:
    mode = request.config.getoption("--kafka")
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if mode == "external" or (mode == "auto" and external):
        if not external:
            pytest.skip("--kafka=external needs KAFKA_BOOTSTRAP_SERVERS")
        yield KafkaSettings(bootstrap=external, embedded=False)
        return
    if mode == "testcontainers":
        yield from _testcontainers_kafka()
        return
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    broker = EmbeddedBroker(log_file=log).start()
    try:
        yield KafkaSettings(bootstrap=broker.bootstrap, embedded=True)
    finally:
        broker.stop()


def _testcontainers_kafka() -> Iterator[KafkaSettings]:
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:  # noqa: BLE001 - any failure means: no engine here
        pytest.skip(f"--kafka=testcontainers needs a Docker engine, none answers here ({type(exc).__name__})")
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer("apache/kafka:3.8.0").with_kraft() as kc:
        yield KafkaSettings(bootstrap=kc.get_bootstrap_server(), embedded=False, idempotence=True)


@pytest.fixture
async def topics(kafka: KafkaSettings, unique: str) -> TopicSettings:
    """The contract's topics under names unique to this test (4 partitions: quick to create)."""
    t = TopicSettings(partitions=4).with_suffix(unique)
    await ensure_topics(kafka, t)
    return t


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of this test alone, for tests that stop and restart it."""
    broker = EmbeddedBroker(log_file=tmp_path / "tansu.log").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def procs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessGroup]:
    group = ProcessGroup(log_dir=tmp_path / "logs")
    try:
        yield group
    finally:
        failed = getattr(request.node, "rep_call", None)
        group.stop_all()
        if failed is not None and failed.failed:
            dest = ARTIFACTS / request.node.name
            shutil.copytree(tmp_path / "logs", dest, dirs_exist_ok=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


# ---------------------------------------------------------------- databases

PG_ADMIN = os.environ.get("ASTREG_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_HOST = os.environ.get("ASTREG_TEST_MYSQL_HOST", "127.0.0.1")
REDIS_URL = os.environ.get("ASTREG_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def pg_url(unique: str) -> AsyncIterator[str]:
    """SQLAlchemy URL of a fresh PostgreSQL database for this test."""
    import asyncpg

    try:
        admin = await asyncpg.connect(PG_ADMIN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN} is not reachable: {exc}")
    try:
        await admin.execute(f'CREATE DATABASE "{unique}"')
    finally:
        await admin.close()
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{unique}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{unique}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def mysql_url(unique: str) -> AsyncIterator[str]:
    """SQLAlchemy URL of a fresh MariaDB database for this test."""
    import asyncmy

    async def run(sql: str) -> None:
        conn = await asyncmy.connect(host=MYSQL_HOST, port=3306, user="root", password="")
        try:
            async with conn.cursor() as cur:
                await cur.execute(sql)
        finally:
            conn.close()

    try:
        await run(f"CREATE DATABASE `{unique}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"MariaDB at {MYSQL_HOST}:3306 is not reachable: {exc}")
    try:
        yield f"mysql+asyncmy://root@{MYSQL_HOST}:3306/{unique}?charset=utf8mb4"
    finally:
        await run(f"DROP DATABASE IF EXISTS `{unique}`")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'astreg.sqlite'}"


@pytest.fixture
async def redis_prefix(unique: str) -> AsyncIterator[str]:
    """A key prefix of this test alone on the real Redis; its keys are deleted afterwards."""
    import redis.asyncio as aioredis

    prefix = f"{unique}:"
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Redis at {REDIS_URL} is not reachable: {exc}")
    try:
        yield prefix
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


def run(coro):  # type: ignore[no-untyped-def]
    """Run a coroutine from sync test code."""
    return asyncio.run(coro)
