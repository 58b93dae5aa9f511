"""When node silence is evidence: the bounds shared by the workers' node book and the alerter.

A node is silent when no record of its producer arrives. That says something about the node only
while the reader hears the cluster: a reader that cannot reach the broker, is late itself (a
starved CPU, a stalled loop), or reads from a cluster that takes no writes, sees every node
silent at once. Both the workers (``streams.tables.NodeBook``) and the alerter
(``streams.alerts.runner``) stop counting silence then.
"""

from __future__ import annotations

__all__ = ["BLIND_AFTER_MS", "FLOW_GRACE_MS"]

#: A gap longer than this without an answer from the broker is not node silence.
BLIND_AFTER_MS = 2500

#: After the cluster was away (or while every node is silent at once), the longest a reader waits
#: for the heartbeats to flow again before it counts silence again: the nodes topic's partition
#: may take writes some seconds after the rest of the cluster (its replicas catching up), and the
#: producers first resend what they buffered. A node that died meanwhile is noticed this much later.
FLOW_GRACE_MS = 60_000
