"""The producer's refresh bookkeeping: the decision, the one-question-per-endpoint queue, the rate."""

from __future__ import annotations

import asyncio

import pytest

from producers.ami import ContactInfo
from producers.refresh import PendingEndpoints, TokenBucket, refreshed


def test_an_expiration_moving_forward_is_a_refresh() -> None:
    known = ContactInfo(user_agent="ua", expires_at_ms=60_000)
    assert refreshed(ContactInfo(expires_at_ms=120_000), known) is True
    assert refreshed(ContactInfo(expires_at_ms=60_000), known) is None  # an INVITE's SuccessfulAuth
    assert refreshed(ContactInfo(expires_at_ms=59_000), known) is None
    assert refreshed(ContactInfo(expires_at_ms=60_000), None) is False  # new: its details


async def test_each_endpoint_waits_once_in_arrival_order() -> None:
    q = PendingEndpoints()
    assert q.add("PJSIP/1") and q.add("PJSIP/2") and not q.add("PJSIP/1")
    assert len(q) == 2
    assert [await q.next(), await q.next()] == ["PJSIP/1", "PJSIP/2"]
    waiter = asyncio.ensure_future(q.next())
    await asyncio.sleep(0)  # one turn of the loop: the waiter runs up to its wait (nothing to await)
    assert not waiter.done()
    q.add("PJSIP/3")
    assert await asyncio.wait_for(waiter, 1.0) == "PJSIP/3"


def test_the_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3)
    for _ in range(3):
        assert bucket.delay() == 0
        bucket.tokens -= 1
    wait = bucket.delay()
    assert 0.05 < wait <= 0.1  # one token every 0.1 s
    with pytest.raises(ValueError):
        TokenBucket(rate=0)


async def test_an_endpoint_keeps_the_time_of_its_earliest_signal() -> None:
    """A refresh found by the question is dated by the first security event that queued it."""
    q = PendingEndpoints()
    assert q.add("1001", 5_000)
    assert not q.add("1001", 7_000) and not q.add("1001")
    assert q.add("1002") and not q.add("1002", 9_000)
    assert [await q.next_signal(), await q.next_signal()] == [("1001", 5_000), ("1002", 9_000)]
