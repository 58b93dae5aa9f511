"""Administration of the machine's real PostgreSQL and MariaDB for tests: statements as the
superuser, and a sink's database dropped and recreated empty."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PG_ADMIN", "MYSQL_HOST", "REDIS_URL", "pg_admin", "mysql_admin", "recreate_empty"]

PG_ADMIN = os.environ.get("ASTREG_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_HOST = os.environ.get("ASTREG_TEST_MYSQL_HOST", "127.0.0.1")
REDIS_URL = os.environ.get("ASTREG_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _db_name(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?", 1)[0]


async def pg_admin(sql: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(PG_ADMIN, timeout=5)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


async def mysql_admin(sql: str) -> None:
    import asyncmy

    conn = await asyncmy.connect(host=MYSQL_HOST, port=3306, user="root", password="")
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
    finally:
        conn.close()


async def recreate_empty(url: str) -> None:
    """Drop the sink's database and create it again, empty (what a restore-to-nothing does)."""
    name = _db_name(url)
    if url.startswith("sqlite"):
        path = Path(url.split(":///", 1)[1])
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    elif url.startswith("postgresql"):
        await pg_admin(f'DROP DATABASE "{name}" WITH (FORCE)')
        await pg_admin(f'CREATE DATABASE "{name}"')
    else:
        await mysql_admin(f"DROP DATABASE `{name}`")
        await mysql_admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
