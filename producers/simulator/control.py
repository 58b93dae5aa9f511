"""Control HTTP server of a running simulator (aiohttp): truth, stats, scenario steps, actions.

    GET  /truth                     the state the pipeline must converge to (JSON)
    GET  /stats                     events/bytes/clients per node
    GET  /journal                   with --journal: the registration events each AMI session was sent
    POST /scenario {"name": "move", "params": {"count": 5}}
    POST /action   {"op": "register", "params": {"phone": 3, "node": "node2"}}
         ops: register refresh unregister expire move qualify device_state call hold unhold
              hangup crash recover restart inject_fault astdb_read_only
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from aiohttp import web

from astreg.errors import SimulatorError

from .core import Simulator
from .scenarios import run_scenario

logger = logging.getLogger(__name__)

__all__ = ["ControlServer", "ACTIONS"]

ACTIONS = ("register", "refresh", "unregister", "expire", "move", "qualify", "device_state", "call", "hold",
           "unhold", "hangup", "crash", "recover", "restart", "shutdown", "boot", "inject_fault",
           "astdb_read_only")


class ControlServer:
    def __init__(self, sim: Simulator, host: str, port: int):
        self.sim, self.host, self.port = sim, host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/truth", self._truth)
        app.router.add_get("/stats", self._stats)
        app.router.add_get("/journal", self._journal)
        app.router.add_post("/scenario", self._scenario)
        app.router.add_post("/action", self._action)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]  # the port the system picked

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _truth(self, request: web.Request) -> web.Response:
        return web.json_response(self.sim.truth())

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.sim.stats())

    async def _journal(self, request: web.Request) -> web.Response:
        return web.json_response(self.sim.journal())

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="body must be a JSON object")
        return body

    async def _scenario(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            result = await run_scenario(self.sim, str(body.get("name", "")), **dict(body.get("params") or {}))
        except SimulatorError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True, "result": result, "seq": self.sim.seq})

    async def _action(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        op = str(body.get("op") or body.get("action") or "")
        params = dict(body.get("params") or {})
        if op not in ACTIONS:
            return web.json_response({"error": f"unknown op {op!r} (have {', '.join(ACTIONS)})"}, status=400)
        method = getattr(self.sim, op)
        try:
            inspect.signature(method).bind(**params)
        except TypeError as exc:
            return web.json_response({"error": f"bad parameters for {op}: {exc}"}, status=400)
        try:
            result = await method(**params)
        except SimulatorError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True, "result": result, "seq": self.sim.seq})
