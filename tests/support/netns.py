"""Simulated hosts for the fault-injection suite: network namespaces whose link can be cut or degraded.

A real Asterisk cluster has its nodes, producers and brokers on separate machines, and the faults
that matter most are network faults: a node that drops off the network while its TCP connections
stay open, a lossy or slow link. Killing a process does not reproduce that. This module gives a
test separate "hosts" on one machine, each a Linux network namespace with one link to the root
namespace, and lets the test break that link like a real network would.

Layout
------
* Service address ``10.231.0.1`` (:data:`SERVICE_ADDRESS`): a local address of the root namespace
  on the interface ``astregsvc0``, which every host reaches through its link. Services that hosts
  must reach (Kafka brokers, an AMI simulator) listen on it or on ``0.0.0.0``; processes of the
  root namespace reach it too, as it is local. :func:`service_address` creates it when missing and
  removes it afterwards only if it created it.
* :class:`Host` ``(name, index)``: namespace ``astreg-<name>``; its link is a pair of TUN devices,
  ``astv<index>r`` in the root namespace (``10.232.<index>.1/24``) and ``astv<index>n`` inside
  (``10.232.<index>.2/24``, :attr:`Host.address`), ``lo`` up inside and a default route via the
  root side. :meth:`Host.argv` prefixes a command with ``ip netns exec`` to run it on the host.

Why TUN devices and a relay rather than a veth pair and ``tc netem``
-------------------------------------------------------------------
The kernel of the machines this suite runs on is built without ``netem`` (``CONFIG_NET_SCH_NETEM``),
without the ``dummy`` interface type and without the ``gact`` drop action, so ``tc`` can neither
delay packets nor drop a share of them. Each host's link is therefore carried by a small relay
process (this file run with ``--relay``, stdlib only) that holds both TUN devices and copies every
IP packet from one to the other, dropping or delaying it as configured:

* :meth:`Host.cut` drops every packet both ways (and those already queued): established TCP
  connections see loss and retransmit, new connections time out, nothing is refused or reset,
  as in a real partition. :meth:`Host.heal` restores the link; retransmissions then get through
  and the open connections resume.
* :meth:`Host.degrade` ``(loss_percent, delay_ms)`` drops each packet with that probability and
  delays each by ``delay_ms`` in each direction (a round trip takes at least twice that), like
  ``netem loss`` plus ``netem delay`` on both ends of a link. At most ``QUEUE_LIMIT`` packets
  wait in the delay line (more are dropped, like netem's queue limit).

No sysctl is changed: both ends of every connection are local to a namespace (the service address
and the root side of each link are local to the root namespace), so nothing is forwarded and
``ip_forward`` may stay 0; and each namespace's route back to the other side leaves through the
link the packet came in on, so even strict ``rp_filter`` accepts it.

The relay lives as long as its control pipe: when the test process ends, however it ends, the
relay exits and the TUN devices vanish with it. The service address is a ``bridge`` without
ports, since the ``dummy`` type is missing; it only carries a local address.

Requirements: root, ``ip`` (iproute2), ``/dev/net/tun``. :func:`available` says why not when
something is missing; the suite fails with that reason rather than skipping. Every name this
module creates starts with ``astreg`` or ``astv``, and it never changes other interfaces.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import heapq
import itertools
import os
import random
import re
import select
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from types import TracebackType

__all__ = [
    "NAMESPACE_PREFIX",
    "QUEUE_LIMIT",
    "SERVICE_ADDRESS",
    "SERVICE_INTERFACE",
    "Host",
    "NetnsError",
    "available",
    "cleanup_stale",
    "service_address",
]

NAMESPACE_PREFIX = "astreg-"
SERVICE_INTERFACE = "astregsvc0"
SERVICE_ADDRESS = "10.231.0.1"
QUEUE_LIMIT = 10000
_LINK_PREFIX = "astv"
_PROBE = "astregprobe0"
_COMMAND_TIMEOUT = 15.0
_RELAY_TIMEOUT = 10.0
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


class NetnsError(RuntimeError):
    """A namespace, interface or link command failed; the message names it and its stderr."""


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a setup command; raise :class:`NetnsError` with the command and its stderr on failure."""
    try:
        return subprocess.run(list(argv), check=True, capture_output=True, text=True,
                              timeout=_COMMAND_TIMEOUT)
    except subprocess.CalledProcessError as exc:
        raise NetnsError(f"`{' '.join(argv)}` failed (exit {exc.returncode}): "
                         f"{(exc.stderr or '').strip()}") from exc
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"`{' '.join(argv)}` did not finish within {_COMMAND_TIMEOUT:g} s") from exc
    except OSError as exc:
        raise NetnsError(f"`{' '.join(argv)}` could not run: {exc}") from exc


def _namespaces() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    out = _run("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _links() -> list[str]:
    """Names of the interfaces of the root namespace (``ip -o link``), without ``@peer`` suffixes."""
    names = []
    for line in _run("ip", "-o", "link", "show").stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def available() -> str | None:
    """None when simulated hosts work on this machine, else why not (for a test failure message).

    Checks root, ``ip``, that a namespace and a bridge can be created (and removes both) and that
    ``/dev/net/tun`` opens.
    """
    if os.geteuid() != 0:
        return "simulated hosts need root (network namespaces, TUN devices)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing: apt-get install -y iproute2"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (kernel without CONFIG_TUN?)"
    probe_ns = f"{NAMESPACE_PREFIX}probe{os.getpid()}"
    try:
        _run("ip", "netns", "add", probe_ns)
        _run("ip", "netns", "del", probe_ns)
        _run("ip", "link", "add", _PROBE, "type", "bridge")
        _run("ip", "link", "del", _PROBE)
        fd = os.open("/dev/net/tun", os.O_RDWR)
        os.close(fd)
    except (NetnsError, OSError) as exc:
        with contextlib.suppress(NetnsError):
            if probe_ns in _namespaces():
                _run("ip", "netns", "del", probe_ns)
            if _PROBE in _links():
                _run("ip", "link", "del", _PROBE)
        return f"simulated hosts do not work here: {exc}"
    return None


def cleanup_stale() -> list[str]:
    """Remove what a crashed earlier run left: ``astreg-*`` namespaces, ``astv*`` and ``astreg*``
    interfaces (service address included). Returns the names removed.

    Only for a machine where no other test session uses simulated hosts right now: it cannot tell
    a leftover from a namespace in use.
    """
    removed = []
    for ns in _namespaces():
        if ns.startswith(NAMESPACE_PREFIX):
            _run("ip", "netns", "del", ns)
            removed.append(ns)
    for link in _links():
        if link.startswith((_LINK_PREFIX, "astreg")):
            with contextlib.suppress(NetnsError):  # a TUN device vanishes when its relay exits
                _run("ip", "link", "del", link)
                removed.append(link)
    return removed


@contextlib.contextmanager
def service_address() -> Iterator[str]:
    """The root-namespace address every host reaches (:data:`SERVICE_ADDRESS`), for the ``with``.

    Creates ``astregsvc0`` with the address when missing and removes it on exit only if this call
    created it, so nested or concurrent users of one machine share it.
    """
    created = SERVICE_INTERFACE not in _links()
    if created:
        _run("ip", "link", "add", SERVICE_INTERFACE, "type", "bridge")
    try:
        shown = _run("ip", "-o", "-4", "addr", "show", "dev", SERVICE_INTERFACE).stdout
        if f" {SERVICE_ADDRESS}/" not in shown:
            _run("ip", "addr", "add", f"{SERVICE_ADDRESS}/32", "dev", SERVICE_INTERFACE)
        _run("ip", "link", "set", SERVICE_INTERFACE, "up")
        yield SERVICE_ADDRESS
    finally:
        if created:
            with contextlib.suppress(NetnsError):
                _run("ip", "link", "del", SERVICE_INTERFACE)


class Host:
    """A simulated host: namespace ``astreg-<name>`` linked to the root namespace (see module doc).

    ``index`` (1..254) picks the link's interface names and subnet ``10.232.<index>.0/24``; two
    hosts alive at once need distinct indexes. Creating it sets everything up (or removes what it
    made and raises :class:`NetnsError`); :meth:`close` or leaving the ``with`` removes it. Stop the
    processes started on the host before closing it.
    """

    def __init__(self, name: str, index: int) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"host name {name!r}: lowercase letters, digits and '-', at most 32")
        if not 1 <= index <= 254:
            raise ValueError(f"host index {index}: 1..254")
        self.name = name
        self.index = index
        self.namespace = f"{NAMESPACE_PREFIX}{name}"
        self.root_device = f"{_LINK_PREFIX}{index}r"
        self.host_device = f"{_LINK_PREFIX}{index}n"
        self.gateway = f"10.232.{index}.1"
        self.address = f"10.232.{index}.2"
        self._relay: subprocess.Popen[bytes] | None = None
        self._replies = b""
        self._ns_created = False
        self._closed = False
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        if self.namespace in _namespaces():
            raise NetnsError(f"namespace {self.namespace} exists already (a crashed run? cleanup_stale())")
        _run("ip", "netns", "add", self.namespace)
        self._ns_created = True
        self._relay = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__), "--relay", self.root_device, self.host_device],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        self._expect("ready")
        _run("ip", "link", "set", self.host_device, "netns", self.namespace)
        _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.root_device)
        _run("ip", "link", "set", self.root_device, "up")
        inside = ("ip", "-n", self.namespace)
        _run(*inside, "link", "set", "lo", "up")
        _run(*inside, "addr", "add", f"{self.address}/24", "dev", self.host_device)
        _run(*inside, "link", "set", self.host_device, "up")
        _run(*inside, "route", "add", "default", "via", self.gateway, "dev", self.host_device)

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.index}, address={self.address!r})"

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host's namespace (for ``subprocess.Popen`` or ``run``)."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def cut(self) -> None:
        """Drop every packet both ways, queued ones too: the host is partitioned, nothing is reset."""
        self._set(100.0, 0)

    def heal(self) -> None:
        """Undo :meth:`cut` or :meth:`degrade`: no loss, no delay."""
        self._set(0.0, 0)

    def degrade(self, loss_percent: float, delay_ms: int) -> None:
        """Drop each packet with probability ``loss_percent``/100 and delay it ``delay_ms`` each way."""
        if not 0 <= loss_percent <= 100:
            raise ValueError(f"loss_percent {loss_percent}: 0..100")
        if delay_ms < 0:
            raise ValueError(f"delay_ms {delay_ms}: not negative")
        self._set(float(loss_percent), int(delay_ms))

    def close(self) -> None:
        """Stop the link's relay (its TUN devices vanish with it) and delete the namespace.

        Safe to call again; removes only what this host created.
        """
        if self._closed:
            return
        self._closed = True
        errors = []
        relay, self._relay = self._relay, None
        if relay is not None:
            _stop_relay(relay)
        if self._ns_created:
            try:
                _run("ip", "netns", "del", self.namespace)
            except NetnsError as exc:
                errors.append(str(exc))
        if errors:
            raise NetnsError("; ".join(errors))

    def __enter__(self) -> Host:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _set(self, loss_percent: float, delay_ms: int) -> None:
        relay = self._relay
        if relay is None or relay.stdin is None:
            raise NetnsError(f"{self!r} is closed")
        try:
            relay.stdin.write(f"set {loss_percent} {delay_ms}\n".encode())
        except OSError as exc:
            raise NetnsError(f"the link relay of {self!r} is gone: {exc}; {_stderr(relay)}") from exc
        self._expect("ok")

    def _expect(self, reply: str) -> None:
        """Wait (bounded) for the relay's next reply line and check it is ``reply``."""
        relay = self._relay
        assert relay is not None and relay.stdout is not None
        fd = relay.stdout.fileno()
        deadline = time.monotonic() + _RELAY_TIMEOUT
        while b"\n" not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NetnsError(f"the link relay of {self!r} did not answer within {_RELAY_TIMEOUT:g} s")
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise NetnsError(f"the link relay of {self!r} exited: {_stderr(relay)}")
            self._replies += chunk
        line, self._replies = self._replies.split(b"\n", 1)
        if line.decode(errors="replace") != reply:
            raise NetnsError(f"the link relay of {self!r} answered {line!r}, not {reply!r}")


def _stderr(relay: subprocess.Popen[bytes]) -> str:
    """What a dead relay wrote to stderr (empty when it is still running)."""
    try:
        relay.wait(timeout=2)
    except subprocess.TimeoutExpired:
        return "(still running)"
    err = relay.stderr.read() if relay.stderr is not None else b""
    return err.decode(errors="replace").strip() or f"exit status {relay.returncode}"


def _stop_relay(relay: subprocess.Popen[bytes]) -> None:
    """Close the relay's control pipe (it exits on EOF), then kill it if it lingers."""
    for pipe in (relay.stdin, relay.stdout, relay.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    try:
        relay.wait(timeout=5)
    except subprocess.TimeoutExpired:
        relay.kill()
        relay.wait(timeout=5)


# ------------------------------------------------------------------ the relay process


def _open_tun(name: str) -> int:
    """Create TUN device ``name`` (IP packets, no extra header) and return its non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


def _write_packet(fd: int, packet: bytes) -> None:
    """Hand a packet to a TUN device; one the kernel refuses (device down, full) is lost."""
    with contextlib.suppress(BlockingIOError, OSError):
        os.write(fd, packet)


def _relay_main(root_device: str, host_device: str) -> int:
    """Carry packets between two TUN devices with the configured loss and delay.

    Control on stdin, one command a line, each answered on stdout: ``set <loss %> <delay ms>`` →
    ``ok``. Runs until stdin closes. Each wakeup reads at most 64 packets a device, so control
    commands are served under load.
    """
    try:
        a, b = _open_tun(root_device), _open_tun(host_device)
    except OSError as exc:
        print(f"cannot create the TUN devices {root_device}/{host_device} (is another host using "
              f"this index?): {exc}", file=sys.stderr)
        return 1
    peer = {a: b, b: a}
    control = sys.stdin.fileno()
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    loss, delay = 0.0, 0.0
    line_buf = b""
    queue: list[tuple[float, int, int, bytes]] = []
    order = itertools.count()
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
        readable, _, _ = select.select([a, b, control], [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            if fd == control:
                data = os.read(control, 4096)
                if not data:
                    return 0
                line_buf += data
                while b"\n" in line_buf:
                    line, line_buf = line_buf.split(b"\n", 1)
                    words = line.decode(errors="replace").split()
                    if len(words) == 3 and words[0] == "set":
                        loss, delay = float(words[1]), int(words[2]) / 1000.0
                        if loss >= 100:
                            queue.clear()
                        out.write(b"ok\n")
                    else:
                        out.write(b"error unknown command " + line + b"\n")
                    out.flush()
                continue
            for _ in range(64):
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in (errno.EIO, errno.EBADFD):
                        break
                    raise
                if loss >= 100 or (loss > 0 and random.random() * 100 < loss):
                    continue
                if delay <= 0 and not queue:
                    _write_packet(peer[fd], packet)
                elif len(queue) < QUEUE_LIMIT:
                    heapq.heappush(queue, (now + delay, next(order), peer[fd], packet))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, fd, packet = heapq.heappop(queue)
            _write_packet(fd, packet)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--relay":
        sys.exit(_relay_main(sys.argv[2], sys.argv[3]))
    sys.exit(f"usage: {sys.argv[0]} --relay ROOT_DEVICE HOST_DEVICE")
