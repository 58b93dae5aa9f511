"""One dialplan key per resource: which endpoint speaks for ``node/<resource>`` in every store.

The dialplan dials a resource (``${EXTEN}`` = ``7777``); Asterisk may have it registered through
several technologies (``PJSIP/7777`` and ``SIP/7777`` during a chan_sip → PJSIP migration).
Every store answers the resource's lookup with the same endpoint, chosen by one rule:

1. an endpoint with a routable contact (a primary node) before one without;
2. then by technology: PJSIP, SIP, IAX2, then any other technology in name order.

The key ``node/<resource>`` (AstDB), ``<prefix>node:<resource>`` (Redis) and the row of the SQL
view ``astreg_routes`` hold that endpoint's node, and disappear only when no technology has the
resource registered any more. AstDB's ``addr/``, ``state/`` and ``contact/`` keys describe the
same endpoint. Per-technology values stay available where a store has room for them: the SQL
row and the Redis hash of each endpoint id (``PJSIP/7777``); AstDB keeps the resource keys only
(four per resource, the ones the dialplan reads).

The rank is stored with each SQL row and Redis hash (``route_rank``): the SQL view and the Redis
script compare ranks, so the order is decided here, once.
"""

from __future__ import annotations

from collections.abc import Iterable

from schemas.models import EndpointLocation

__all__ = ["TECHNOLOGY_ORDER", "UNROUTABLE", "route_rank", "preferred", "resource_of"]

#: Technologies in the order they speak for a shared resource.
TECHNOLOGY_ORDER = ("PJSIP", "SIP", "IAX2")
#: Added to the rank of an endpoint without a routable contact.
UNROUTABLE = 100


def route_rank(technology: str, routable: bool) -> int:
    """Lower speaks first: routable endpoints 0-3, unroutable ones 100-103 (3: other technologies)."""
    try:
        rank = TECHNOLOGY_ORDER.index(technology)
    except ValueError:
        rank = len(TECHNOLOGY_ORDER)
    return rank if routable else rank + UNROUTABLE


def _order(loc: EndpointLocation) -> tuple[int, str]:
    return route_rank(loc.technology, loc.primary_node is not None), loc.technology


def preferred(locations: Iterable[EndpointLocation]) -> EndpointLocation | None:
    """The endpoint that speaks for a resource among its technologies' locations (None: none)."""
    return min(locations, key=_order, default=None)


def resource_of(endpoint: str) -> str:
    """``PJSIP/7777`` → ``7777`` (an id without a technology is its own resource)."""
    return endpoint.partition("/")[2] or endpoint
