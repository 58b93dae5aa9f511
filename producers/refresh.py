"""Seeing the registrations Asterisk 22 does not announce: refreshes, and a new contact's details.

A REGISTER that renews a contact the node already holds emits no ContactStatus: only the
security events ``ChallengeSent``/``SuccessfulAuth`` (``AccountID`` = endpoint) — which
authenticated INVITEs emit too. So a ``SuccessfulAuth`` only says *look*: the producer asks the
node for that endpoint's contacts (``PJSIPShowEndpoint``) and a contact whose expiration moved
forward was refreshed (a REFRESH event); a contact it did not know yet gets its details (user
agent, expiry, Call-ID, qualify frequency: what ContactStatus does not carry). The same question
follows every new contact's ContactStatus, so live registrations are complete at once.

Endpoints without authentication emit no security event at all: a periodic comparison of the
node's contact list (``PJSIPShowContacts``, every ``refresh_scan_interval`` seconds) finds their
refreshes; that interval is the worst delay for them (docs/producer.md).

Questions are bounded: at most ``detail_rate`` actions per second (a token bucket), one pending
question per endpoint however many security events arrive for it meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from .ami import ContactInfo

__all__ = ["TokenBucket", "PendingEndpoints", "refreshed"]


class TokenBucket:
    """``rate`` actions per second on average, bursts of at most ``burst``."""

    def __init__(self, rate: float, burst: int | None = None):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, int(rate)))
        self.tokens = self.burst
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def delay(self) -> float:
        """Seconds until one token is available (0: now)."""
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    async def take(self) -> None:
        while (wait := self.delay()) > 0:
            await asyncio.sleep(wait)  # the bucket's pace: the wait is the rate limit itself
        self.tokens -= 1


class PendingEndpoints:
    """Endpoints waiting for a question, first asked first, each at most once, with the time (ms)
    of the earliest signal that queued them (what a refresh found by the question is dated)."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, int | None] = OrderedDict()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, endpoint: str, at_ms: int | None = None) -> bool:
        """Queue ``endpoint`` unless it already waits (then keep its earliest signal time); True
        when added."""
        if endpoint in self._items:
            known = self._items[endpoint]
            if at_ms is not None and (known is None or at_ms < known):
                self._items[endpoint] = at_ms
            return False
        self._items[endpoint] = at_ms
        self._ready.set()
        return True

    def clear(self) -> None:
        self._items.clear()
        self._ready.clear()

    async def next_signal(self) -> tuple[str, int | None]:
        """The next endpoint and the time of the signal that queued it first."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popitem(last=False)

    async def next(self) -> str:
        return (await self.next_signal())[0]


def refreshed(new: ContactInfo, known: ContactInfo | None) -> bool | None:
    """What a contact's details say against what the producer knew of it.

    ``False``: a contact the producer did not know (publish its details); ``True``: its expiration
    moved forward (a REGISTER renewed it: publish a REFRESH); ``None``: nothing new."""
    if known is None:
        return False
    if new.expires_at_ms is not None and (known.expires_at_ms is None or new.expires_at_ms > known.expires_at_ms):
        return True
    return None
