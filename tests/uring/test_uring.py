"""roomcast.uring over real sockets: socketpairs and loopback TCP, full buffers, closed and reset
peers. Every sender is checked against one contract: every fd gets one non-blocking send of the
frame; only the fds whose send did not complete come back, as (index, bytes sent or -errno)."""

from __future__ import annotations

import array
import errno
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import roomcast.uring as uring
from roomcast.uring import Ring, available, write_all, write_all_python

Sender = Callable[[list[int], bytes], list[tuple[int, int]]]

REASON = available()
needs_ring = pytest.mark.skipif(REASON is not None, reason=f"io_uring unavailable: {REASON}")


# name -> ring entries and send_all keywords, or a plain sender. 7 and 256 entries: batches that
# are not multiples of entries (5000 fds).
SENDERS: dict[str, tuple[int, dict[str, bool]] | Sender] = {
    "ring-256": (256, {}),
    "ring-7": (7, {}),
    "ring-32-nogil": (32, {"release_gil": True}),
    "write_all": write_all,
    "write_all_python": write_all_python,
}


@pytest.fixture(params=list(SENDERS))
def sender(request: pytest.FixtureRequest) -> Iterator[Sender]:
    spec = SENDERS[request.param]
    if callable(spec):
        yield spec
        return
    if REASON is not None:
        pytest.skip(f"io_uring unavailable: {REASON}")
    entries, kw = spec
    # Made before the test's sockets: made after a close, the ring would take the closed fd's
    # number (the reuse hazard the gateway's caller must avoid).
    ring = Ring(entries)
    yield lambda fds, data: ring.send_all(fds, data, **kw)
    ring.close()


def socketpairs(n: int) -> list[tuple[socket.socket, socket.socket]]:
    pairs = []
    for _ in range(n):
        a, b = socket.socketpair()
        a.setblocking(False)  # the gateway's sockets are non-blocking (write_all_python needs it)
        pairs.append((a, b))
    return pairs


def tcp_pairs(n: int) -> list[tuple[socket.socket, socket.socket]]:
    """n loopback TCP connections: (server side, client side)."""
    with socket.create_server(("127.0.0.1", 0), backlog=128) as lsock:
        port = lsock.getsockname()[1]
        pairs = []
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", port))
            s, _ = lsock.accept()
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pairs.append((s, c))
    return pairs


@pytest.fixture
def closing() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def track(closing: list[socket.socket], pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    for a, b in pairs:
        closing += [a, b]


def recv_exact(s: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    s.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def assert_nothing_more(s: socket.socket) -> None:
    s.setblocking(False)
    with pytest.raises(BlockingIOError):
        s.recv(1)


def frame(n: int) -> bytes:
    return bytes((i * 7 + 3) % 251 for i in range(n))


@pytest.mark.parametrize("n", [1, 100, 5000])
def test_every_socketpair_gets_the_frame(sender: Sender, n: int, closing: list) -> None:
    pairs = socketpairs(n)
    track(closing, pairs)
    data = frame(253)
    assert sender([a.fileno() for a, _ in pairs], data) == []
    for _, b in pairs:
        assert recv_exact(b, len(data)) == data
        assert_nothing_more(b)


@pytest.fixture(scope="module")
def tcp5000() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    """5,000 loopback TCP connections, made once for every sender (10,000 fds)."""
    pairs = tcp_pairs(5000)
    yield pairs
    for a, b in pairs:
        a.close()
        b.close()


@pytest.mark.parametrize("n", [1, 5000])
def test_every_tcp_connection_gets_the_frame(
    sender: Sender, n: int, tcp5000: list[tuple[socket.socket, socket.socket]]
) -> None:
    pairs = tcp5000[:n]
    data = frame(200)
    for _ in range(3):  # three frames back to back, in order
        assert sender([s.fileno() for s, _ in pairs], data) == []
    for _, c in pairs:
        assert recv_exact(c, 3 * len(data)) == data * 3
        assert_nothing_more(c)


def test_fds_as_array_of_c_ints(sender: Sender, closing: list) -> None:
    pairs = socketpairs(10)
    track(closing, pairs)
    assert sender(array.array("i", [a.fileno() for a, _ in pairs]), b"abc") == []  # type: ignore[arg-type]
    assert all(recv_exact(b, 3) == b"abc" for _, b in pairs)


def test_empty_fds_and_empty_frame(sender: Sender, closing: list) -> None:
    assert sender([], b"frame") == []
    pairs = socketpairs(5)
    track(closing, pairs)
    assert sender([a.fileno() for a, _ in pairs], b"") == []
    for _, b in pairs:
        assert_nothing_more(b)


def fill(s: socket.socket) -> int:
    """Write into non-blocking s until the kernel refuses; return the bytes written."""
    total = 0
    chunk = b"f" * 65536
    while True:
        try:
            total += s.send(chunk)
        except BlockingIOError:
            return total


def drain_in_thread(c: socket.socket, n: int, out: bytearray) -> threading.Thread:
    def run() -> None:
        out.extend(recv_exact(c, n, timeout=10))

    t = threading.Thread(target=run)
    t.start()
    return t


def tiny_tcp_pair(closing: list) -> tuple[socket.socket, socket.socket]:
    (s, c) = tcp_pairs(1)[0]
    closing += [s, c]
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return s, c


def test_short_write_then_the_rest_in_order(sender: Sender, closing: list) -> None:
    """A frame bigger than a socket's buffers, its reader not reading: a short write with the
    right count; what was sent plus the remainder written afterwards is the frame, in order."""
    s, c = tiny_tcp_pair(closing)
    others = socketpairs(9)
    track(closing, others)
    fds = [a.fileno() for a, _ in others[:4]] + [s.fileno()] + [a.fileno() for a, _ in others[4:]]
    big = frame(64 * 1024)  # fits a socketpair's buffer, not the tiny TCP socket's
    failed = sender(fds, big)
    assert len(failed) == 1
    index, sent = failed[0]
    assert index == 4
    assert 0 < sent < len(big), failed
    # Keep order: the rest goes to this viewer's queue, and so does every later frame until the
    # queue is empty (a direct send now could slip in before the rest).
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # drain fast from here on
    received = bytearray()
    t = drain_in_thread(c, len(big) + 4, received)
    s.setblocking(True)
    s.sendall(big[sent:])
    s.sendall(b"next")
    t.join(10)
    assert bytes(received) == big + b"next"
    for _, b in others:
        assert recv_exact(b, len(big)) == big


def test_one_mebibyte_frame_reaches_everyone_with_the_rest_handed_over(
    sender: Sender, closing: list
) -> None:
    pairs = tcp_pairs(20) + socketpairs(20)
    track(closing, pairs)
    big = frame(1 << 20)
    failed = dict(sender([s.fileno() for s, _ in pairs], big))
    for i, (s, c) in enumerate(pairs):
        sent = failed.get(i, len(big))
        assert sent >= 0 or sent == -errno.EAGAIN, sent
        sent = max(sent, 0)
        received = bytearray()
        t = drain_in_thread(c, len(big), received)
        s.setblocking(True)
        s.sendall(big[sent:])
        t.join(10)
        assert bytes(received) == big, i


def test_full_socket_gets_eagain_the_others_the_frame(sender: Sender, closing: list) -> None:
    s, _ = tiny_tcp_pair(closing)
    fill(s)
    pairs = socketpairs(50)
    track(closing, pairs)
    fds = [a.fileno() for a, _ in pairs]
    fds.insert(17, s.fileno())
    assert sender(fds, b"frame") == [(17, -errno.EAGAIN)]
    for _, b in pairs:
        assert recv_exact(b, 5) == b"frame"


def test_closed_fd_gets_ebadf_and_the_others_the_frame(sender: Sender, closing: list) -> None:
    pairs = socketpairs(40)
    track(closing, pairs)
    fds = [a.fileno() for a, _ in pairs]
    gone = fds[11]
    pairs[11][0].close()
    assert sender(fds, b"hello") == [(11, -errno.EBADF)]
    for i, (_, b) in enumerate(pairs):
        if i != 11:
            assert recv_exact(b, 5) == b"hello"
    assert gone not in {a.fileno() for a, _ in pairs if a.fileno() >= 0}


def test_not_a_socket(sender: Sender) -> None:
    """The C senders use send(): a pipe is refused. The Python fallback uses os.write, which
    writes to any descriptor (the gateway only ever hands it sockets)."""
    r, w = os.pipe()
    try:
        if sender is write_all_python:
            assert sender([w], b"x") == [] and os.read(r, 1) == b"x"
        else:
            assert sender([w], b"x") == [(0, -errno.ENOTSOCK)]
    finally:
        os.close(r)
        os.close(w)


def test_peer_gone_gives_epipe_or_econnreset(sender: Sender, closing: list) -> None:
    # TCP peer that reset (SO_LINGER 0), and a socketpair whose other end is closed
    s, c = tcp_pairs(1)[0]
    closing.append(s)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()
    a, b = socketpairs(1)[0]
    closing.append(a)
    b.close()
    ok = socketpairs(1)
    track(closing, ok)
    failed = sender([s.fileno(), a.fileno(), ok[0][0].fileno()], b"frame")
    assert [i for i, _ in failed] == [0, 1]
    assert failed[0][1] in (-errno.ECONNRESET, -errno.EPIPE)
    assert failed[1][1] == -errno.EPIPE
    assert recv_exact(ok[0][1], 5) == b"frame"


def test_sigpipe_never_kills_the_process() -> None:
    """With SIGPIPE's default action restored (Python ignores it), sends to a closed peer
    answer -EPIPE and the process lives: MSG_NOSIGNAL on every send, io_uring's and C's."""
    code = textwrap.dedent(
        """
        import signal, socket
        from roomcast.uring import Ring, write_all, available
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        a, b = socket.socketpair()
        b.close()
        print(write_all([a.fileno()], b"x"))
        if available() is None:
            print(Ring(8).send_all([a.fileno()] * 3, b"x"))
        print("alive")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, (out.returncode, out.stderr)
    epipe = -errno.EPIPE
    assert f"[(0, {epipe})]" in out.stdout
    if REASON is None:
        assert f"[(0, {epipe}), (1, {epipe}), (2, {epipe})]" in out.stdout
    assert out.stdout.strip().endswith("alive")


@needs_ring
def test_ring_lifecycle_and_argument_errors() -> None:
    ring = Ring(100)
    assert ring.entries >= 100 and not ring.closed
    with pytest.raises(TypeError):
        ring.send_all([1.5], b"x")  # type: ignore[list-item]
    with pytest.raises(TypeError):
        ring.send_all(array.array("h", [1]), b"x")

    class Index:
        def __index__(self) -> int:
            return 1

    with pytest.raises(TypeError):
        ring.send_all([Index()], b"x")  # type: ignore[list-item]
    with pytest.raises(TypeError):
        write_all([Index()], b"x")  # type: ignore[list-item]
    with pytest.raises(TypeError):
        ring.send_all([1], "text")  # type: ignore[arg-type]
    ring.close()
    ring.close()
    assert ring.closed
    with pytest.raises(ValueError):
        ring.send_all([], b"x")
    with pytest.raises(ValueError):
        Ring(0)


def test_available_answers() -> None:
    reason = available()
    assert reason is None or (isinstance(reason, str) and reason)
    if reason is not None:
        with pytest.raises(OSError):
            Ring(8).close()


def test_the_extension_is_built_where_it_can_be() -> None:
    """A silently failed build (optional=True) would fall back to Python: catch it where gcc
    and the interpreter's headers exist, as on the project's machines and in CI."""
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not (shutil.which("gcc") or shutil.which("cc")) or not headers.exists():
        pytest.skip("no C compiler or no Python.h here")
    assert uring.backend() == "c"
    if Path("/proc/sys/kernel/io_uring_disabled").read_text().strip() == "0":
        assert REASON is None


@pytest.mark.parametrize("how", ["ring", "c-loop"])
def test_send_many_shares_batches_across_frames_and_reports_item_and_index(how: str) -> None:
    """Ring.send_many (and write_many, its C-loop twin for --fanout send): several (fds, frame)
    in one call, batches crossing items (entries 4 for 7 sends), an empty item, and a closed
    descriptor reported as (item, index, -EBADF)."""
    from roomcast.uring import Ring, available, write_many

    assert available() is None, available()
    ring = Ring(4)
    send_many = ring.send_many if how == "ring" else write_many
    pairs = socketpairs(7)
    try:
        a = [x.fileno() for x, _ in pairs[:3]]
        b = [x.fileno() for x, _ in pairs[3:]]
        assert send_many([(a, b"xy"), ([], b"zz"), (b, b"abc")]) == []
        assert [recv_exact(y, 2 if i < 3 else 3) for i, (_, y) in enumerate(pairs)] == [
            b"xy"
        ] * 3 + [b"abc"] * 4
        pairs[4][0].close()
        assert send_many([(a, b"1"), (b, b"2")]) == [(1, 1, -errno.EBADF)]
    finally:
        ring.close()
        for x, y in pairs:
            x.close()
            y.close()
