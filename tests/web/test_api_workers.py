"""The JSON API against real ``astreg worker`` processes (two workers, embedded broker).

Routed lookups (asked of the worker that does not own the key), the plain-text node answer
for Asterisk's CURL(), filters and cursor paging over 10,000 endpoints, 404/409/400 answers,
nodes, health/readiness, metrics, and bearer-token auth on and off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from astreg.proc import ProcessGroup
from astreg.settings import KafkaSettings, TopicSettings
from streams.web.views import CSP, SECURITY_HEADERS
from tests.support.wait import until

from .conftest import NODES, SCRIPT_UA, Cluster, Feeder, wait_ready, wait_total

pytestmark = [pytest.mark.integration, pytest.mark.demo_path]


async def get(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None,
              **params: str) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    async with http.get(aiohttp.client.URL(url, encoded=True), headers=headers or {}, params=params or None) as r:
        body: Any = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body, r.headers


def ep(endpoint: str) -> str:
    return quote(endpoint, safe="")


async def test_lookup_is_routed_to_the_owner(web_cluster: Cluster, http: aiohttp.ClientSession) -> None:
    w1, w2 = web_cluster.workers
    served_by: dict[str, set[str]] = {w1.url: set(), w2.url: set()}
    for i in range(0, 40):
        endpoint = f"PJSIP/{10000 + i}"
        want = web_cluster.expected[endpoint]
        for w in (w1, w2):
            status, row, headers = await get(http, f"{w.url}/api/v1/endpoints/{ep(endpoint)}")
            assert status == 200, row
            assert row["endpoint"] == endpoint and row["primary_node"] == want["node"]
            assert row["ip"] == want["ip"] and row["device_state"] == want["device"]
            assert row["stale"] is False
            assert len(row["contacts"]) == 1
            c = row["contacts"][0]
            assert c["node"] == want["node"] and c["ip"] == want["ip"] and c["port"] == 5060
            assert c["transport"] == "udp" and c["status"] == "REACHABLE" and c["rtt_us"] == 100 + i
            assert c["user_agent"] == want["ua"] and c["expires_at_ms"] and c["primary"] is True
            served_by[w.url].add(headers["X-Astreg-Served-By"])
    # each worker answered some keys itself and fetched the others from the other worker
    assert len(served_by[w1.url]) == 2 and len(served_by[w2.url]) == 2


async def test_plain_text_node_for_curl(web_cluster: Cluster, http: aiohttp.ClientSession) -> None:
    for w in web_cluster.workers:
        for i in range(10):
            endpoint = f"PJSIP/{10000 + i}"
            for name in (ep(endpoint), str(10000 + i)):
                if name == "10005":
                    continue  # ambiguous: PJSIP/10005 and SIP/10005
                status, body, headers = await get(http, f"{w.url}/api/v1/endpoints/{name}/node")
                assert status == 200 and body == web_cluster.expected[endpoint]["node"]
                assert headers["Content-Type"].startswith("text/plain")
        status, body, _ = await get(http, f"{w.url}/api/v1/endpoints/PJSIP%2F99999/node")
        assert (status, body) == (404, "")
        status, body, _ = await get(http, f"{w.url}/api/v1/endpoints/10005/node")
        assert (status, body) == (409, "")


async def test_bare_name_unknown_and_ambiguous(web_cluster: Cluster, http: aiohttp.ClientSession) -> None:
    url = web_cluster.workers[0].url
    status, row, _ = await get(http, f"{url}/api/v1/endpoints/10001")
    assert status == 200 and row["endpoint"] == "PJSIP/10001"
    status, body, headers = await get(http, f"{url}/api/v1/endpoints/99999")
    assert status == 404 and body["error"] == "endpoint not registered" and body["endpoint"] == "99999"
    assert headers["Content-Type"].startswith("application/json")
    status, body, _ = await get(http, f"{url}/api/v1/endpoints/10005")
    assert status == 409 and body["candidates"] == ["PJSIP/10005", "SIP/10005"]
    status, row, _ = await get(http, f"{url}/api/v1/endpoints/SIP%2F10005")
    assert status == 200 and row["primary_node"] == "node1" and row["ip"] == "192.168.7.5"
    status, body, _ = await get(http, f"{url}/api/v1/endpoints/PJSIP%2F")
    assert status == 400 and "not an endpoint id" in body["error"]


async def _walk(http: aiohttp.ClientSession, url: str, **params: str) -> tuple[list[dict[str, Any]], int]:
    items: list[dict[str, Any]] = []
    cursor = None
    total = -1
    for _ in range(200):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        status, page, _ = await get(http, f"{url}/api/v1/endpoints", **query)
        assert status == 200, page
        items += page["items"]
        total = page["total"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items, total
    raise AssertionError("paging did not end")


async def test_paging_over_10000_endpoints(web_cluster: Cluster, http: aiohttp.ClientSession) -> None:
    items, total = await _walk(http, web_cluster.workers[1].url, limit="1000")
    ids = [i["endpoint"] for i in items]
    assert total == len(web_cluster.expected) == 10_001
    assert ids == sorted(web_cluster.expected)  # every endpoint once, in endpoint order
    by_id = {i["endpoint"]: i for i in items}
    assert by_id["PJSIP/10042"]["user_agent"] == SCRIPT_UA  # stored and served as plain data


async def test_filters_and_sorting(web_cluster: Cluster, http: aiohttp.ClientSession) -> None:
    url = web_cluster.workers[0].url
    expected = web_cluster.expected
    items, total = await _walk(http, url, node="node1", limit="500")
    want = sorted(e for e, v in expected.items() if v["node"] == "node1")
    assert [i["endpoint"] for i in items] == want and total == len(want)

    items, total = await _walk(http, url, device_state="inuse", limit="1000")
    want = sorted(e for e, v in expected.items() if v["device"] == "INUSE")
    assert [i["endpoint"] for i in items] == want and total == len(want)

    items, total = await _walk(http, url, q="10.0.1.", state="REGISTERED", limit="100")
    want = sorted(e for e, v in expected.items() if "10.0.1." in str(v["ip"]))
    assert [i["endpoint"] for i in items] == want and total == len(want) > 0

    status, page, _ = await get(http, f"{url}/api/v1/endpoints", q="<script>", limit="5")
    assert status == 200 and [i["endpoint"] for i in page["items"]] == ["PJSIP/10042"]

    items, total = await _walk(http, url, sort="rtt", order="desc", limit="1000", node="node2")
    rtts = [i["rtt_us"] for i in items]
    assert rtts == sorted(rtts, reverse=True) and total == len(items) == sum(
        1 for v in expected.values() if v["node"] == "node2")

    status, body, _ = await get(http, f"{url}/api/v1/endpoints", state="gone")
    assert status == 400 and "state='gone'" in body["error"]
    status, body, _ = await get(http, f"{url}/api/v1/endpoints", cursor="garbage!")
    assert status == 400 and "cursor" in body["error"]


async def test_nodes(web_cluster: Cluster, http: aiohttp.ClientSession) -> None:
    for w in web_cluster.workers:
        status, body, _ = await get(http, f"{w.url}/api/v1/nodes")
        assert status == 200
        nodes = {n["node"]: n for n in body["nodes"]}
        assert set(nodes) == set(NODES)
        for name, n in nodes.items():
            want = sum(1 for v in web_cluster.expected.values() if v["node"] == name)
            assert n["table"]["contacts"] == want and n["table"]["primary"] == want
            assert n["state"] == "up" and n["ami_link"] == "UP" and n["asterisk_version"] == "22.10.1"


async def test_every_worker_probes_the_cluster_writes(web_cluster: Cluster, http: aiohttp.ClientSession) -> None:
    """Each worker's write probe runs (its topic exists: ``astreg worker`` creates it), and says
    when the cluster last acknowledged a write: what node silence is judged against."""
    import re
    import time

    for w in web_cluster.workers:
        async def acked_at(w: Any = w) -> float:
            text = (await get(http, f"{w.url}/metrics"))[1]
            found = re.search(r"^astreg_stream_cluster_writable_at_seconds ([0-9.e+]+)$", text, re.M)
            return float(found.group(1)) if found else 0.0

        at = await until(acked_at, 30, interval=0.2, what=f"{w.child.name}'s write probe to be acknowledged")
        assert time.time() - 60 < at <= time.time()
        assert "is missing (astreg worker creates it)" not in w.child.log()


async def test_health_ready_metrics_and_headers(web_cluster: Cluster, http: aiohttp.ClientSession) -> None:
    w = web_cluster.workers[0]
    assert (await get(http, f"{w.url}/healthz"))[0] == 200
    status, body, _ = await get(http, f"{w.url}/readyz")
    assert status == 200 and body["status"] == "ready" and body["partitions"]
    status, text, _ = await get(http, f"{w.url}/metrics")
    assert status == 200
    assert "astreg_web_requests_total" in text and "astreg_stream_events" in text
    assert "astreg_web_local_rows" in text and "astreg_faust_" in text
    status, html, headers = await get(http, f"{w.url}/")
    assert status == 200 and "<table id=\"endpoints\">" in html
    assert headers["Content-Security-Policy"] == CSP and headers["X-Content-Type-Options"] == "nosniff"
    # Faust's own table views are not served (they would bypass the token)
    assert (await get(http, f"{w.url}/table/locations/"))[0] == 404


async def test_every_response_carries_the_security_headers(web_cluster: Cluster, http: aiohttp.ClientSession) -> None:
    """API answers, the page, static files, probes, /metrics, errors of the API and aiohttp's own
    404/405 pages."""
    w = web_cluster.workers[0]
    cases = [("GET", "/healthz", 200), ("GET", "/readyz", 200), ("GET", "/metrics", 200), ("GET", "/", 200),
             ("GET", "/static/app.js", 200), ("GET", "/api/v1/nodes", 200), ("GET", "/api/v1/endpoints?limit=x", 400),
             ("GET", "/api/v1/endpoints?cursor=" + "W" * 5000, 400), ("GET", "/no/such/page", 404),
             ("POST", "/healthz", 405)]
    for method, path, status in cases:
        async with http.request(method, f"{w.url}{path}") as resp:
            assert resp.status == status, (path, resp.status)
            missing = {k: v for k, v in SECURITY_HEADERS.items() if k not in resp.headers}
            assert missing == {}, (method, path, missing)


async def test_live_change_is_visible_from_every_worker(web_cluster: Cluster, http: aiohttp.ClientSession) -> None:
    feeder = web_cluster.feeder
    # PJSIP/10003 moves from node0 to node2
    await feeder.send([feeder.contact("PJSIP/10003", "node2", ip="172.16.0.3")])

    async def moved() -> bool:
        answers = [await get(http, f"{w.url}/api/v1/endpoints/10003/node") for w in web_cluster.workers]
        return all(a[:2] == (200, "node2") for a in answers)

    await until(moved, 30, interval=0.5, what="every worker to answer node2 for PJSIP/10003")
    web_cluster.expected["PJSIP/10003"]["node"] = "node2"  # keep the module's truth current
    status, row, _ = await get(http, f"{web_cluster.workers[0].url}/api/v1/endpoints/PJSIP%2F10003")
    assert row["nodes"] == ["node2", "node0"] and row["contacts"][0]["primary"] is True
    web_cluster.expected["PJSIP/10003"]["ip"] = "172.16.0.3"


# ---------------------------------------------------------------- auth


async def test_bearer_token(kafka: KafkaSettings, topics: TopicSettings, procs: ProcessGroup, tmp_path: Path,
                            http: aiohttp.ClientSession) -> None:
    token = "s3cret-token"
    cluster = Cluster(kafka, topics, procs, Feeder(kafka, topics), [], token=token)
    w = cluster.start_worker("wt", tmp_path / "wt", token=token)
    feeder = cluster.feeder
    await feeder.send([feeder.heartbeat("node0"), feeder.contact("PJSIP/1001", "node0", ip="10.0.0.1")])
    await wait_ready(http, [w], topics.partitions)
    await wait_total(http, cluster, 1)

    good = {"Authorization": f"Bearer {token}"}
    bad = {"Authorization": "Bearer nope"}
    for path in ("/api/v1/endpoints/PJSIP%2F1001", "/api/v1/endpoints/1001/node", "/api/v1/endpoints",
                 "/api/v1/nodes", "/api/v1/_local/endpoints"):
        status, body, headers = await get(http, f"{w.url}{path}")
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer", path
        assert (await get(http, f"{w.url}{path}", bad))[0] == 401, path
        assert (await get(http, f"{w.url}{path}", good))[0] == 200, path
    status, body, _ = await get(http, f"{w.url}/api/v1/endpoints/1001/node", token=token)
    assert (status, body) == (200, "node0")  # ?token= for CURL() without headers
    for path in ("/healthz", "/readyz", "/", "/static/app.js"):
        assert (await get(http, f"{w.url}{path}"))[0] == 200, path
    # A second worker: the owner of PJSIP/1001's partition is one of the two, so one of them
    # forwards. The forwarded request carries the worker's peer credential, not the caller's token.
    w2 = cluster.start_worker("wt2", tmp_path / "wt2", token=token)
    await wait_ready(http, [w, w2], topics.partitions)
    for worker in (w, w2):
        assert (await get(http, f"{worker.url}/api/v1/endpoints/1001/node", good))[:2] == (200, "node0")
        status, body, _ = await get(http, f"{worker.url}/api/v1/endpoints", good)
        assert status == 200 and body["total"] == 1
        assert (await get(http, f"{worker.url}/api/v1/endpoints/1001/node", bad))[0] == 401
