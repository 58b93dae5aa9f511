"""The worker's decoded-row cache (streams.tables.RowCache): bounded, least recently remembered out."""

from hypothesis import given
from hypothesis import strategies as st

from streams.tables import RowCache


def test_evicts_least_recently_remembered_first() -> None:
    cache = RowCache(3)
    for key in "abc":
        cache.remember(key, None)
    cache.remember("a", None)  # refreshed: now the newest
    cache.remember("d", None)  # full: "b" goes
    assert list(cache) == ["c", "a", "d"]
    assert "b" not in cache


def test_remember_replaces_the_value_without_growing() -> None:
    cache = RowCache(2)
    cache.remember("a", None)
    sentinel = object()
    cache.remember("a", sentinel)  # type: ignore[arg-type]
    assert len(cache) == 1 and cache["a"] is sentinel


@given(st.integers(1, 8), st.lists(st.sampled_from("abcdefghijkl"), max_size=60))
def test_matches_a_reference_lru(limit: int, keys: list[str]) -> None:
    cache, model = RowCache(limit), []  # model: keys, oldest first
    for i, key in enumerate(keys):
        cache.remember(key, i)  # type: ignore[arg-type]
        if key in model:
            model.remove(key)
        elif len(model) >= limit:
            model.pop(0)
        model.append(key)
        assert list(cache) == model
    assert all(cache[k] == max(i for i, x in enumerate(keys) if x == k) for k in model)


def test_a_zero_limit_keeps_nothing() -> None:
    cache = RowCache(0)
    cache.remember("a", None)
    assert len(cache) == 0
