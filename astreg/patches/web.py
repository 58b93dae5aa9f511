"""Faust's built-in web views, dropped: the worker serves its own page and API in their place.

Faust mounts blueprints of its own (an index on "/", the router, table contents, graph, stats)
that would answer without the API's bearer-token check. Some have a setting to turn them off,
the production index has none, and the list of what is mounted is private.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from faust.types import AppT

__all__ = ["INTERNALS", "enabled_blueprints", "drop_blueprints", "on_every_response"]

INTERNALS = [
    "faust.web.base:Web.blueprints",
    "faust.web.base:BlueprintManager._enabled",
    "faust.web.base:BlueprintManager.apply uses self._enabled",
    "faust.web.drivers.aiohttp:Web.__init__ uses self.web_app",
]


def enabled_blueprints(app: AppT) -> list[tuple[str, Any]]:
    """``(prefix, blueprint)`` pairs the app's web server will mount (a blueprint or its
    ``"module:attribute"`` name)."""
    return list(app.web.blueprints._enabled)  # type: ignore[attr-defined]


def drop_blueprints(app: AppT, names: Collection[str]) -> None:
    """Keep the app's web server from mounting the blueprints named ``names`` (call before it starts)."""
    enabled = app.web.blueprints._enabled  # type: ignore[attr-defined]
    enabled[:] = [(prefix, bp) for prefix, bp in enabled if bp not in names]


def on_every_response(app: AppT, handler: Callable[[Any, Any], Awaitable[None]]) -> None:
    """Call ``handler(request, response)`` before every response of the app's web server is sent,
    aiohttp's own error pages included (its ``on_response_prepare`` signal; before it starts)."""
    app.web.web_app.on_response_prepare.append(handler)  # type: ignore[attr-defined]
