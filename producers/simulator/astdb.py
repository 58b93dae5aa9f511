"""Per-node AstDB: Asterisk's ``astdb`` SQLite table (``key`` = ``/family/key``, ``value``).

Pure storage with Asterisk's semantics for the DB* AMI actions; ``:memory:`` or one file per node.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

__all__ = ["AstDB"]


class AstDB:
    """The astdb table of one simulated node."""

    def __init__(self, path: str = ":memory:"):
        self.path = path
        # A fault to inject: the database refuses writes (disk full, read-only file). Asterisk's
        # ast_db_put/ast_db_del then fail and the AMI actions answer Error.
        self.read_only = False
        # Told (family, key, value) after every successful DBPut: how a benchmark sees the
        # moment a row lands without polling the table.
        self.watchers: list[Callable[[str, str, str], None]] = []
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS astdb (key VARCHAR(256), value VARCHAR(256), PRIMARY KEY(key))")

    def close(self) -> None:
        self._db.close()

    def put(self, family: str, key: str, value: str) -> bool:
        if self.read_only:
            return False
        self._db.execute("INSERT OR REPLACE INTO astdb (key, value) VALUES (?, ?)", (f"/{family}/{key}", value))
        for watch in self.watchers:
            watch(family, key, value)
        return True

    def get(self, family: str, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM astdb WHERE key = ?", (f"/{family}/{key}",)).fetchone()
        return None if row is None else str(row[0])

    def delete(self, family: str, key: str) -> bool:
        if self.read_only:
            return False
        return self._db.execute("DELETE FROM astdb WHERE key = ?", (f"/{family}/{key}",)).rowcount > 0

    @staticmethod
    def _prefix(family: str, key: str) -> str:
        if not family:
            return ""
        return f"/{family}/{key}" if key else f"/{family}"

    def tree(self, family: str = "", key: str = "") -> list[tuple[str, str]]:
        """(full key, value) under /family[/key], all rows without family, sorted like Asterisk."""
        prefix = self._prefix(family, key)
        if not prefix:
            rows = self._db.execute("SELECT key, value FROM astdb ORDER BY key")
        else:
            rows = self._db.execute(
                "SELECT key, value FROM astdb WHERE key = ? OR substr(key, 1, ?) = ? ORDER BY key",
                (prefix, len(prefix) + 1, prefix + "/"),
            )
        return [(str(k), str(v)) for k, v in rows]

    def delete_tree(self, family: str, key: str = "") -> int:
        if self.read_only:
            return 0
        prefix = self._prefix(family, key)
        cur = self._db.execute(
            "DELETE FROM astdb WHERE key = ? OR substr(key, 1, ?) = ?", (prefix, len(prefix) + 1, prefix + "/")
        )
        return int(cur.rowcount)

    def as_dict(self) -> dict[str, str]:
        return dict(self.tree())
