"""Who may speak for a node: per-node keys and the signature every record carries.

Kafka ACLs decide *who may write a topic*; they cannot decide *for which node* a record speaks,
because every producer writes the same registrations and nodes topics. So each record a
producer writes is signed with its node's key, and a worker applies a record about node N only
when the signature is N's (docs/security.md).

* **Keys.** One cluster secret (32 random bytes, ``astreg keys new``) is held by the stream
  workers. Each node's key is derived from it (``HMAC-SHA256(secret, "astreg node key" 0 node)``,
  ``astreg keys derive --node N``) and given to that node's producer only: a producer can
  sign for its own node and no other. Synthetic decisions of the workers (stale, expire,
  reconcile) are signed with the workers' key, derived the same way under a name no node id can
  take.
* **Signature.** keyed BLAKE2b-256 (RFC 7693's MAC mode) of ``"astreg1" 0 kind 0 len(record key)
  record key record value`` in the record header ``astreg-sig``. ``kind`` (``registrations`` / ``nodes``) keeps a record of one
  topic from being replayed into the other; the record key is covered so a value cannot be
  moved under another key. Replays of a whole record are harmless: the table ignores a
  ``(producer_epoch, seq)`` it has applied.

Why a MAC and not public-key signatures: verifying an Ed25519 signature costs ~60 µs, more than
the whole per-event budget of a worker (≤ 25 µs); a keyed BLAKE2b of a record costs ~0.3 µs
(HMAC-SHA256 through OpenSSL 3 costs ~1.5 µs, most of it per-call set-up; BLAKE2 is built into
CPython and its keyed state is copied per record). The price is that the workers hold the secret
every node key derives from: they are the trusted party of the pipeline anyway (they write the
table every sink copies).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "SIG_HEADER", "WORKERS", "KEY_BYTES", "new_secret", "derive_node_key", "derive_workers_key", "load_key",
    "write_key", "Signer", "Verifier", "signature_of", "header_value", "Keyring", "ensure_cluster_key",
]

SIG_HEADER = "astreg-sig"
KEY_BYTES = 32
WORKERS = "\0workers"  # the workers' signing identity: a node id can never contain NUL
_NODE_LABEL = b"astreg node key\0"
_PREFIX = b"astreg1\0"


def new_secret() -> bytes:
    """A fresh cluster secret."""
    return secrets.token_bytes(KEY_BYTES)


def derive_node_key(secret: bytes, node: str) -> bytes:
    """The key of ``node``'s producer, derived from the cluster secret."""
    return hmac.digest(secret, _NODE_LABEL + node.encode(), hashlib.sha256)


def derive_workers_key(secret: bytes) -> bytes:
    """The key the workers sign their synthetic events with."""
    return derive_node_key(secret, WORKERS)


def write_key(path: Path, key: bytes, *, overwrite: bool = False) -> None:
    """Write ``key`` (base64, one line) to a new file readable by its owner only."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists: a key is never overwritten (remove it first)") from None
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(key).decode() + "\n")


def load_key(path: Path) -> bytes:
    """Read a key file written by :func:`write_key`; refused when others may read it."""
    try:
        st = path.stat()
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"key file {path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}): "
                          f"chmod 600 {path}")
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError:
        raise ConfigError(f"key file {path} does not hold a base64 key") from None
    if len(key) < KEY_BYTES:
        raise ConfigError(f"key in {path} is {len(key)} bytes; at least {KEY_BYTES} are needed")
    return key


def signature_of(key: bytes, kind: bytes, record_key: bytes | None, value: bytes | None) -> bytes:
    """Keyed BLAKE2b-256 (RFC 7693's keyed mode, a MAC) of the record's kind, key and value."""
    return _mac(key, kind, record_key, value, hashlib.blake2b(key=key, digest_size=32))


def _mac(key: bytes, kind: bytes, record_key: bytes | None, value: bytes | None, state: Any) -> bytes:
    # Lengths first: ("ab", "c") and ("a", "bc") never sign alike.
    k, v = record_key or b"", value or b""
    state.update(b"".join((_PREFIX, kind, b"\0", len(k).to_bytes(4, "big"), k, v)))
    return state.digest()  # type: ignore[no-any-return]


class Signer:
    """Signs the records of one identity (a node's producer, or the workers)."""

    __slots__ = ("key", "identity", "_state")

    def __init__(self, key: bytes, identity: str):
        self.key = key
        self.identity = identity
        self._state = hashlib.blake2b(key=key, digest_size=32)  # keyed once, copied per record

    def headers(self, kind: bytes, record_key: bytes | None, value: bytes | None) -> list[tuple[str, bytes]]:
        return [(SIG_HEADER, _mac(self.key, kind, record_key, value, self._state.copy()))]


def header_value(headers: Iterable[tuple[str, bytes]] | None, name: str = SIG_HEADER) -> bytes | None:
    """The first header ``name`` of a record (aiokafka and Faust give a sequence of pairs)."""
    if not headers:
        return None
    if isinstance(headers, dict):
        return headers.get(name)  # type: ignore[no-any-return]
    for k, v in headers:
        if k == name:
            return v
    return None


class Verifier:
    """Checks that a record about ``node`` is signed with that node's key (workers' side).

    Node keys are derived from the cluster secret once per node and kept. ``None`` as the
    secret: authenticity is not checked (``--insecure-no-auth``), every record passes.
    """

    def __init__(self, secret: bytes | None):
        self.secret = secret
        self._keys: dict[str, bytes] = {}
        self._states: dict[bytes, Any] = {}  # key -> keyed BLAKE2b state, copied per record
        self.workers = derive_workers_key(secret) if secret is not None else None

    @property
    def enabled(self) -> bool:
        return self.secret is not None

    def key_of(self, node: str) -> bytes:
        key = self._keys.get(node)
        if key is None:
            assert self.secret is not None
            key = self._keys[node] = derive_node_key(self.secret, node)
        return key

    def workers_signer(self) -> Signer | None:
        return Signer(self.workers, WORKERS) if self.workers is not None else None

    def check(self, kind: bytes, node: str, synthetic: bool, record_key: bytes | None, value: bytes | None,
              headers: Iterable[tuple[str, bytes]] | None) -> str | None:
        """None when authentic (or not checked), else the reason it is not."""
        if self.secret is None:
            return None
        sig = header_value(headers)
        if sig is None:
            return "unsigned"
        key = self.workers if synthetic else self.key_of(node)
        assert key is not None
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = hashlib.blake2b(key=key, digest_size=32)
        if not hmac.compare_digest(sig, _mac(key, kind, record_key, value, state.copy())):
            return "bad_signature"
        return None


class Keyring:
    """The cluster secret used to sign as any node: for the tools that stand in for a whole
    cluster on one machine (demo, bench, tests), never for a producer."""

    def __init__(self, secret: bytes):
        self.verifier = Verifier(secret)

    @classmethod
    def from_env(cls) -> Keyring | None:
        """The keyring of ``ASTREG_CLUSTER_KEY_FILE``, None when unset (no authenticity)."""
        path = os.environ.get("ASTREG_CLUSTER_KEY_FILE")
        return cls(load_key(Path(path))) if path else None

    def headers(self, kind: bytes, node: str, record_key: bytes | None, value: bytes | None,
                synthetic: bool = False) -> list[tuple[str, bytes]]:
        v = self.verifier
        key = v.workers if synthetic else v.key_of(node)
        assert key is not None
        return [(SIG_HEADER, signature_of(key, kind, record_key, value))]


def ensure_cluster_key(directory: Path) -> Path:
    """For one-machine tools (demo, bench): ``ASTREG_CLUSTER_KEY_FILE`` when set, else a cluster
    secret in ``directory`` (made once), exported to this process and its children."""
    given = os.environ.get("ASTREG_CLUSTER_KEY_FILE")
    if given:
        return Path(given)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "cluster.key"
    if not path.exists():
        write_key(path, new_secret())
    os.environ["ASTREG_CLUSTER_KEY_FILE"] = str(path)
    return path
