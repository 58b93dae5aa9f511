"""What a Kafka cluster says about itself, asked with one raw Metadata request.

No client library and no event loop, so it works from threads, from inside running event loops
and before any component starts: the readiness check of :class:`~astreg.kafka.ApacheKafka` and
the recognition of the embedded broker (:meth:`astreg.settings.KafkaSettings.resolved`) use it.
PLAINTEXT listeners only.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

__all__ = ["ClusterInfo", "cluster_info", "EMBEDDED_CLUSTER_IDS"]

# Tansu's default cluster id, and the one astreg's EmbeddedBroker gives it.
EMBEDDED_CLUSTER_IDS = ("tansu_cluster", "astreg-embedded")


@dataclass(frozen=True)
class ClusterInfo:
    brokers: frozenset[int]
    cluster_id: str | None

    @property
    def embedded(self) -> bool:
        return self.cluster_id in EMBEDDED_CLUSTER_IDS


def cluster_info(host: str, ports: list[int], timeout: float = 2.0) -> ClusterInfo:
    """Broker ids and cluster id from a Metadata v4 answer of the first port that answers.

    Raises OSError when none answers (refused, closed, timed out or a short answer)."""
    last: OSError | None = None
    for port in ports:
        try:
            with socket.create_connection((host, port), timeout=timeout) as s:
                s.settimeout(timeout * 2)
                client = b"astreg-probe"
                # Metadata v4 (api key 3; Kafka 4 dropped v0-3), correlation id 1, no topics, no
                # auto-creation
                body = struct.pack(">hhih", 3, 4, 1, len(client)) + client + struct.pack(">ib", 0, 0)
                s.sendall(struct.pack(">i", len(body)) + body)
                (size,) = struct.unpack(">i", _recv(s, 4))
                if not 0 < size < 64 * 1024 * 1024:
                    raise OSError(f"not a Kafka answer (frame size {size})")
                return _parse(_recv(s, size))
        except OSError as exc:
            last = exc
        except struct.error as exc:
            last = OSError(f"short Metadata answer: {exc}")
    raise last or OSError("no broker port to ask")


def _parse(buf: bytes) -> ClusterInfo:
    # correlation id, throttle ms, [brokers: node_id int32, host string, port int32, rack
    # nullable string], cluster_id nullable string, controller id, topics
    pos = 8
    (count,) = struct.unpack_from(">i", buf, pos)
    pos += 4
    ids = set()
    for _ in range(count):
        (nid,) = struct.unpack_from(">i", buf, pos)
        pos += 4
        (hl,) = struct.unpack_from(">h", buf, pos)
        pos += 2 + hl + 4
        (rl,) = struct.unpack_from(">h", buf, pos)
        pos += 2 + max(rl, 0)
        ids.add(nid)
    (cl,) = struct.unpack_from(">h", buf, pos)
    cluster_id = buf[pos + 2 : pos + 2 + cl].decode("utf-8", "replace") if cl >= 0 else None
    return ClusterInfo(frozenset(ids), cluster_id)


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed by the broker")
        buf += chunk
    return buf
