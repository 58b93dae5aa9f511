"""A worker forwarding a request to another worker of its group: the caller's token never goes
further than the worker it was given to; the peer gets a credential good for that one path, for
a short time, that no other request can reuse. A real HTTP server stands for the peer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from astreg.broker import free_port
from streams.metrics import StreamMetrics
from streams.web.settings import WebSettings
from streams.web.views import PEER, PEER_WINDOW_S, WebService, peer_key_of

CALLER_TOKEN = "caller-token-for-worker-a"


class Peer:
    """An HTTP server that records what it was sent."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.raw_path, dict(request.headers)))
        return web.Response(text="node1")


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = Peer()
    app = web.Application()
    app.router.add_get("/{tail:.*}", p.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", p.port).start()
    try:
        yield p
    finally:
        await runner.cleanup()


def service(session: Any, token: str | None = CALLER_TOKEN) -> WebService:
    """The two methods under test need the settings, metrics, HTTP client and peer key only."""
    s = WebService.__new__(WebService)
    s.settings = WebSettings(api_token=token)
    s.metrics = StreamMetrics()
    s.app = SimpleNamespace(http_client=session)  # type: ignore[assignment]
    s.peer_key = peer_key_of(b"s" * 32)
    return s


async def test_a_forwarded_request_carries_a_peer_credential_not_the_caller_s_token(peer: Peer) -> None:
    async with aiohttp.ClientSession() as session:
        worker = service(session)
        caller = make_mocked_request("GET", "/api/v1/endpoints/1001/node",
                                     headers={"Authorization": f"Bearer {CALLER_TOKEN}"})
        path = "/api/v1/endpoints/PJSIP%2F1001/node"
        status, body, _ = await worker._peer_get(f"http://127.0.0.1:{peer.port}{path}", caller, "node")
    assert (status, body) == (200, "node1")
    ((raw_path, headers),) = peer.seen
    assert CALLER_TOKEN not in " ".join(headers.values())
    assert "Authorization" not in headers
    credential = headers[PEER]
    # The receiving worker (same cluster secret) accepts it for that path, and for nothing else.
    assert worker.authorized(make_mocked_request("GET", raw_path, headers={PEER: credential}))
    assert not worker.authorized(make_mocked_request("GET", "/api/v1/endpoints", headers={PEER: credential}))
    assert not worker.authorized(make_mocked_request("GET", raw_path + "?limit=1000", headers={PEER: credential}))
    assert not worker.authorized(make_mocked_request("GET", raw_path))


async def test_a_peer_credential_expires_and_needs_the_cluster_secret() -> None:
    async with aiohttp.ClientSession() as session:
        worker = service(session)
        path = "/api/v1/endpoints/PJSIP%2F1001"
        old = worker.peer_credential(path, int(time.time()) - PEER_WINDOW_S - 5)
        assert not worker.authorized(make_mocked_request("GET", path, headers={PEER: old}))
        other = service(session)
        other.peer_key = peer_key_of(b"t" * 32)  # another cluster's workers
        forged = other.peer_credential(path, int(time.time()))
        assert not worker.authorized(make_mocked_request("GET", path, headers={PEER: forged}))
        assert not worker.authorized(make_mocked_request("GET", path, headers={PEER: "garbage"}))
        assert worker.authorized(make_mocked_request("GET", path, headers={"Authorization": f"Bearer {CALLER_TOKEN}"}))
