"""The web section's baseline: aiohttp answering ``/api/v1/endpoints/{endpoint}/node`` with a
constant, in a process of its own, so that the load generator measures the same HTTP stack with
no table, routing or checks behind it::

    python -m astreg.tools.bench.constant --port 8099
"""

from __future__ import annotations

import argparse

from aiohttp import web

__all__ = ["app", "main"]

BODY = b'{"endpoint": "PJSIP/100000", "node": "node1", "status": "REACHABLE"}'


def app() -> web.Application:
    async def node(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="application/json")

    application = web.Application()
    application.router.add_get("/api/v1/endpoints/{endpoint}/node", node)
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
