"""Test harness: real Apache Kafka (KRaft, from Maven Central), real PostgreSQL/MariaDB/Redis.

* ``kafka``: KafkaSettings for the session's broker. Default (``--kafka=apache``): one Apache
  Kafka broker started once per test session by :class:`astreg.kafka.ApacheKafka`, random ports,
  with the test tuning below. ``--kafka=embedded``: the embedded Tansu broker (the demo's
  default). ``KAFKA_BOOTSTRAP_SERVERS`` set (or ``--kafka=external``) → that external broker.
* ``apache_cluster``: the session's ApacheKafka object itself (SASL/TLS tests start their own).
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
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hypothesis  # noqa: F401  (see below)
import pytest

from astreg.auth import ensure_cluster_key
from astreg.broker import EmbeddedBroker
from astreg.kafka import ApacheKafka
from astreg.proc import ProcessGroup
from astreg.settings import KafkaSettings, TopicSettings
from astreg.topics import ensure_topics
from tests.support.databases import MYSQL_HOST, PG_ADMIN, REDIS_URL, mysql_admin
from tests.support.redis_server import PrivateRedis

# hypothesis is imported here, not lazily by its pytest plugin at the end of the session: after
# the Faust agent tests, a late import's AST parse hit CPython 3.11.7's "AST constructor
# recursion depth mismatch" SystemError when only tests/stream was selected.
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

# Every process the tests start signs and checks records like a deployment: one cluster secret
# for the session, in the environment every child inherits (tests of --insecure-no-auth and of
# the key options set their own).
_KEYS = Path(tempfile.mkdtemp(prefix="astreg-test-keys-"))
CLUSTER_KEY = ensure_cluster_key(_KEYS)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_KEYS, ignore_errors=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kafka",
        default="auto",
        choices=["auto", "apache", "embedded", "external"],
        help="Which Kafka the tests use (auto: KAFKA_BOOTSTRAP_SERVERS if set, else apache).",
    )


# Broker tuning of the test harness only (never product defaults): no initial rebalance delay,
# small internal topics (quick to create on 2 cores), a cleaner that looks often (compaction
# tests use small segments per topic).
TEST_BROKER_CONFIG = {
    "group.initial.rebalance.delay.ms": "0",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.num.partitions": "4",
    "log.cleaner.backoff.ms": "500",
    "log.retention.check.interval.ms": "1000",
    "log.segment.delete.delay.ms": "1000",
    "log.initial.task.delay.ms": "0",
    "num.network.threads": "2",
    "num.io.threads": "4",
    "log.flush.interval.ms": "9223372036854775807",
}


def kafka_mode(config: pytest.Config) -> str:
    mode = str(config.getoption("--kafka"))
    if mode == "auto":
        return "external" if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else "apache"
    return mode


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the embedded broker, leave out the tests of Apache Kafka itself (compaction, SASL/TLS,
    `astreg kafka`): deselected and counted, not skipped as if they had run."""
    if kafka_mode(config) != "embedded":
        return
    apache = [item for item in items if item.get_closest_marker("apache")]
    if apache:
        config.hook.pytest_deselected(items=apache)
        items[:] = [item for item in items if not item.get_closest_marker("apache")]


@pytest.fixture(scope="session")
def apache_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    cluster = ApacheKafka(brokers=1, data_dir=tmp_path_factory.mktemp("kafka"), config=TEST_BROKER_CONFIG)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def unique() -> str:
    """A fresh name fragment for topics, groups, databases and key prefixes."""
    return unique_name()


@pytest.fixture(scope="session")
def kafka(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSettings]:
    mode = kafka_mode(request.config)
    if mode == "external":
        external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not external:
            pytest.fail("--kafka=external needs KAFKA_BOOTSTRAP_SERVERS")
        yield KafkaSettings(bootstrap=external).resolved()
        return
    if mode == "apache":
        cluster: ApacheKafka = request.getfixturevalue("apache_cluster")
        yield cluster.client_settings(embedded=False)
        return
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    broker = EmbeddedBroker(log_file=log).start()
    try:
        yield KafkaSettings(bootstrap=broker.bootstrap, embedded=True)
    finally:
        broker.stop()


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
    run = mysql_admin
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


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test alone, for faults that would disturb the shared one."""
    server = PrivateRedis(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def run(coro):  # type: ignore[no-untyped-def]
    """Run a coroutine from sync test code."""
    return asyncio.run(coro)
