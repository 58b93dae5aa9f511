"""Simulated hosts (tests/support/netns.py) do what the fault-injection suite relies on.

Real TCP connections between the root namespace and a host, both ways; a cut that makes the host
unreachable without resetting anything (new connections time out, an open connection's data is
lost until the heal, then delivered); a degraded link that really delays; two hosts that do not
disturb each other; nothing left behind. A machine where namespaces do not work fails here with
the reason, as the fault suite would not test what it claims.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.support.netns import NAMESPACE_PREFIX, Host, NetnsError, available, service_address
from tests.support.wait import until_sync

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# Echoes every connection's bytes back; prints its port once listening. Bounded: at most 200
# connections, each until EOF; the test stops it.
ECHO_SERVER = r"""
import socket, sys, threading
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
def serve(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        for data in iter(lambda: conn.recv(65536), b""):
            conn.sendall(data)
for _ in range(200):
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# Echoes UDP datagrams; prints its port once bound. Bounded: at most 100000 datagrams.
UDP_ECHO_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
print(s.getsockname()[1], flush=True)
for _ in range(100000):
    data, peer = s.recvfrom(100)
    s.sendto(data, peer)
"""

# One connection attempt: prints ok (echo came back), timeout, refused or error <what>.
CONNECT_ONCE = r"""
import socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"hello\n")
        got = b""
        while not got.endswith(b"hello\n"):
            chunk = s.recv(100)
            if not chunk:
                break
            got += chunk
    print("ok" if got == b"hello\n" else f"error got {got!r}")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as exc:
    print(f"error {exc!r}")
"""

# One long-lived connection driven by stdin: each line "<seconds> <token>" sends token + newline
# and waits that long for it to come back; prints a JSON line {"token", "ok", "received"} where
# received is everything echoed on this connection so far.
PERSISTENT_CLIENT = r"""
import json, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
print("connected", flush=True)
received = b""
for line in sys.stdin:
    seconds, token = line.split()
    s.sendall(token.encode() + b"\n")
    deadline = time.monotonic() + float(seconds)
    while (token.encode() + b"\n") not in received and time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        received += chunk
    ok = (token.encode() + b"\n") in received
    print(json.dumps({"token": token, "ok": ok, "received": received.decode()}), flush=True)
"""


@pytest.fixture(scope="module")
def svc() -> Iterator[str]:
    """The service address; a machine without working namespaces fails with the reason."""
    reason = available()
    if reason is not None:
        pytest.fail(reason)
    with service_address() as address:
        yield address


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; all stopped at the end, even when the test fails."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
    for proc in started:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next stdout line of ``proc``, waiting at most ``timeout`` seconds."""
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    assert readable, f"no output from {proc.args!r} within {timeout:g} s"
    line = proc.stdout.readline()
    assert line, f"{proc.args!r} exited (status {proc.poll()}) without output"
    return line.strip()


def start_echo(procs: list[subprocess.Popen[str]], bind: str, host: Host | None = None) -> int:
    """Start an echo server listening on ``bind`` (inside ``host`` if given); return its port."""
    argv = [sys.executable, "-c", ECHO_SERVER, bind]
    proc = subprocess.Popen(host.argv(argv) if host else argv, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, text=True)
    procs.append(proc)
    return int(read_line(proc, 15))


def connect_from(host: Host | None, address: str, port: int, timeout: float) -> str:
    """One connection attempt from inside ``host`` (None: the root namespace); ok, timeout,
    refused or error <what>."""
    argv = [sys.executable, "-c", CONNECT_ONCE, address, str(port), str(timeout)]
    done = subprocess.run(host.argv(argv) if host else argv, capture_output=True, text=True, timeout=timeout + 20)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def connect_to(address: str, port: int, timeout: float) -> str:
    """One connection attempt from the root namespace; same outcomes."""
    return connect_from(None, address, port, timeout)


def min_round_trip(address: str, port: int, samples: int = 5) -> float:
    """Shortest of ``samples`` echo round trips (seconds) on one connection from this process."""
    with socket.create_connection((address, port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        best = float("inf")
        for i in range(samples):
            token = f"rtt{i}\n".encode()
            start = time.monotonic()
            s.sendall(token)
            got = b""
            while got != token:
                chunk = s.recv(100)
                assert chunk, "echo server closed the connection"
                got += chunk
            best = min(best, time.monotonic() - start)
        return best


def udp_echoes(address: str, port: int, count: int) -> int:
    """Send ``count`` numbered datagrams from this process; how many distinct ones came back.

    Sent in batches of 50, each followed by reading the echoes so far, so that no socket buffer on
    the way overflows; the count is final once no echo has arrived for 1 s (at most 10 s in all).
    """
    seen: set[bytes] = set()

    def drain(s: socket.socket, quiet: float, deadline: float) -> None:
        s.settimeout(quiet)
        while len(seen) < count and time.monotonic() < deadline:
            try:
                seen.add(s.recv(100))
            except TimeoutError:
                return

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((address, port))
        deadline = time.monotonic() + 10
        for start in range(0, count, 50):
            for i in range(start, min(count, start + 50)):
                s.send(str(i).encode())
            drain(s, 0.02, deadline)
        drain(s, 1.0, deadline)
    return len(seen)


def links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], check=True, capture_output=True, text=True).stdout


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True).stdout


def test_tcp_both_ways(svc: str, procs: list[subprocess.Popen[str]]) -> None:
    root_port = start_echo(procs, svc)
    with Host("echo", 211) as host:
        assert connect_from(host, svc, root_port, 5) == "ok"
        host_port = start_echo(procs, host.address, host)
        assert connect_to(host.address, host_port, 5) == "ok"
        inside = subprocess.run(["ip", "-n", host.namespace, "-o", "link", "show"],
                                check=True, capture_output=True, text=True).stdout
        assert sorted(line.split(":")[1].strip() for line in inside.splitlines()) == ["astv211n", "lo"]


def test_cut_is_loss_not_reset_and_heal_restores(svc: str, procs: list[subprocess.Popen[str]]) -> None:
    root_port = start_echo(procs, svc)
    with Host("cut", 212) as host:
        host_port = start_echo(procs, host.address, host)
        client = subprocess.Popen(
            host.argv([sys.executable, "-c", PERSISTENT_CLIENT, svc, str(root_port)]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(client)
        assert client.stdin is not None
        assert read_line(client, 15) == "connected"

        def exchange(seconds: float, token: str) -> dict[str, object]:
            assert client.stdin is not None
            client.stdin.write(f"{seconds} {token}\n")
            client.stdin.flush()
            return json.loads(read_line(client, seconds + 15))

        assert exchange(5, "before")["ok"] is True

        host.cut()
        assert exchange(2, "during") == {"token": "during", "ok": False, "received": "before\n"}
        assert connect_from(host, svc, root_port, 2) == "timeout"
        assert connect_to(host.address, host_port, 2) == "timeout"

        host.heal()
        until_sync(lambda: connect_from(host, svc, root_port, 2) == "ok", timeout=10,
                   interval=0.1, what="a new connection from the healed host")
        assert connect_to(host.address, host_port, 5) == "ok"
        # The connection open across the cut was never reset: the data lost during the cut is
        # retransmitted and echoed once the link is back, in order.
        after = exchange(30, "after")
        assert after == {"token": "after", "ok": True, "received": "before\nduring\nafter\n"}


def test_degrade_delays_and_heal_restores(svc: str, procs: list[subprocess.Popen[str]]) -> None:
    with Host("slow", 213) as host:
        port = start_echo(procs, host.address, host)
        assert min_round_trip(host.address, port) < 0.1

        host.degrade(0, 200)
        # 200 ms each way: no round trip can be shorter than 400 ms (a little margin for clocks).
        assert min_round_trip(host.address, port) >= 0.39

        host.heal()
        assert min_round_trip(host.address, port) < 0.1


def test_degrade_loss_drops_a_share(svc: str, procs: list[subprocess.Popen[str]]) -> None:
    with Host("lossy", 214) as host:
        server = subprocess.Popen(host.argv([sys.executable, "-c", UDP_ECHO_SERVER, host.address]),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        procs.append(server)
        port = int(read_line(server, 15))
        assert udp_echoes(host.address, port, 400) == 400

        host.degrade(50, 0)
        # Half lost each way: a quarter of the datagrams come back (100 expected; the bounds
        # are about six standard deviations away).
        assert 45 <= udp_echoes(host.address, port, 400) <= 160

        host.degrade(100, 0)
        assert udp_echoes(host.address, port, 100) == 0
        assert connect_to(host.address, port, 2) == "timeout"
        host.heal()
        assert udp_echoes(host.address, port, 400) == 400


def test_two_hosts_independent_and_close_leaves_nothing(svc: str, procs: list[subprocess.Popen[str]]) -> None:
    root_port = start_echo(procs, svc)
    a = Host("one", 215)
    b = Host("two", 216)
    try:
        assert connect_from(a, svc, root_port, 5) == "ok"
        assert connect_from(b, svc, root_port, 5) == "ok"
        a.cut()
        assert connect_from(a, svc, root_port, 2) == "timeout"
        assert connect_from(b, svc, root_port, 5) == "ok"
        b.degrade(0, 100)
        a.heal()
        assert connect_from(a, svc, root_port, 5) == "ok"
        assert f"{NAMESPACE_PREFIX}one" in namespaces().split()
        assert " astv215r:" in links() and " astv216r:" in links()
    finally:
        a.close()
        b.close()
    a.close()  # idempotent
    assert not [ns for ns in namespaces().split() if ns.startswith(NAMESPACE_PREFIX)], namespaces()
    assert not [line for line in links().splitlines() if ": astv" in line], links()
    with pytest.raises(NetnsError, match="closed"):
        a.cut()


def test_taken_index_or_name_fails_clearly_and_spares_the_first(svc: str,
                                                                procs: list[subprocess.Popen[str]]) -> None:
    root_port = start_echo(procs, svc)
    with Host("first", 217) as first:
        with pytest.raises(NetnsError, match="another host using this index"):
            Host("second", 217)
        with pytest.raises(NetnsError, match="exists already"):
            Host("first", 218)
        assert f"{NAMESPACE_PREFIX}second" not in namespaces().split()
        assert " astv218r:" not in links()
        assert connect_from(first, svc, root_port, 5) == "ok"
