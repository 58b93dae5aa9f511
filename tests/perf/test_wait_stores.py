"""astreg/tools/e2e.py wait_stores: a store converges when it equals its truth, read whole or by
its wrong keys, and a key that goes wrong again is not missed."""

from __future__ import annotations

from typing import Any

from astreg.tools.e2e import wait_stores


class Store:
    """A dict store whose writer applies one pending change per read (a sink catching up)."""

    def __init__(self, data: dict[str, str], changes: list[tuple[str, str | None]]):
        self.data, self.changes = dict(data), list(changes)
        self.whole_reads = self.partial_reads = 0

    def _step(self) -> None:
        if self.changes:
            key, value = self.changes.pop(0)
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value

    def whole(self) -> dict[str, Any]:
        self.whole_reads += 1
        self._step()
        return dict(self.data)

    def some(self, keys: list[str]) -> dict[str, Any]:
        self.partial_reads += 1
        self._step()
        return {k: self.data[k] for k in keys if k in self.data}


async def test_partial_reads_until_right_then_a_whole_read_confirms() -> None:
    want = {f"e{i}": "node2" for i in range(100)}
    store = Store({f"e{i}": "node1" for i in range(100)} | {"extra": "node1"},
                  [(f"e{i}", "node2") for i in range(100)] + [("extra", None)])
    took = await wait_stores({"s": store.whole}, {"s": want}, timeout=10, poll=0,
                             partial={"s": store.some})
    assert took["s"] is not None and store.data == want
    assert store.whole_reads == 2 and store.partial_reads >= 100  # one to start, one to confirm


async def test_a_key_gone_wrong_before_the_confirming_read_keeps_waiting() -> None:
    want = {"a": "node2", "b": "node2"}
    # "a" is fixed, then "b" goes wrong (a late stale write) before the whole read, then is fixed.
    store = Store({"a": "node1", "b": "node2"}, [("b", "node2"), ("a", "node2"), ("b", "node1"), ("b", "node2")])
    took = await wait_stores({"s": store.whole}, {"s": want}, timeout=10, poll=0, partial={"s": store.some})
    assert took["s"] is not None and store.data == want and store.whole_reads >= 3


async def test_without_a_partial_reader_every_read_is_whole_and_timeout_is_none() -> None:
    store = Store({"a": "node1"}, [])
    took = await wait_stores({"s": store.whole}, {"s": {"a": "node2"}}, timeout=0.2, poll=0.01)
    assert took == {"s": None} and store.partial_reads == 0 and store.whole_reads > 1
