"""astreg/tools/bench/web.py: the load generator refuses anything but loopback, percentiles are right."""

from __future__ import annotations

import pytest

from astreg.tools.bench import web as webbench


@pytest.mark.parametrize("url", ["http://10.0.0.5:6066", "http://example.org:6066", "http://0.0.0.0:1"])
async def test_refuses_non_loopback(url: str) -> None:
    with pytest.raises(ValueError, match="only loads loopback"):
        await webbench.measure_node_lookups(url, ["PJSIP/1"], requests=1)


def test_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert webbench._percentile(values, 0.5) == 51.0
    assert webbench._percentile(values, 0.99) == 99.0
    assert webbench._percentile([3.0], 0.99) == 3.0
