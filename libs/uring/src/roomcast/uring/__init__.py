"""roomcast.uring: the same bytes to many sockets, below the cost of one write() per socket.

The gateway writes each frame, built once, to every viewer of a room. This package does that
loop in C, two ways, with one contract:

- ``Ring(entries=256)``: an io_uring instance (raw ``io_uring_setup``/``io_uring_enter`` and
  mmap'd rings; no liburing). 256 sends per submit measured best: 32 saves much less, 1,024 and
  4,096 cost more (docs/benchmarks.md). ``OSError`` (errno kept) if io_uring cannot be used
  here: ENOSYS (old kernel), EPERM (``kernel.io_uring_disabled``, a container's seccomp policy).
- ``Ring.send_all(fds, data, *, release_gil=False)``: one ``IORING_OP_SEND`` of ``data`` per
  fd (``MSG_DONTWAIT | MSG_NOSIGNAL``), up to ``entries`` sends per ``io_uring_enter``. Each
  batch is submitted and all its completions reaped before the next, so when it returns every
  send has finished. ``release_gil=True`` lets other threads run during the syscalls (measured:
  no difference in CPU per send for one thread, see docs/benchmarks.md). Registered files were
  measured too and did not pay, so there are none. A Ring is not for concurrent use
  (``RuntimeError``); ``Ring.close()`` releases it.
- ``write_all(fds, data)``: one ``send()`` per fd in a plain C loop (the floor the bench compares
  against, and the fallback); without the C extension, a Python loop of ``os.write`` (the fds
  must then be non-blocking, as an event loop's sockets are).

``fds`` is a list of ints or an ``array('i')``; ``data`` any bytes-like object (< 2 GiB). Both
return only the fds whose send did not complete fully, in index order, as
``(index into fds, result)``: ``result >= 0`` is the number of bytes actually sent (a short
write), ``result < 0`` is ``-errno`` (``-EAGAIN`` full socket, ``-EPIPE``/``-ECONNRESET`` peer
gone, ``-EBADF`` closed fd, ...). The caller hands ``data[result:]`` (or all of ``data``) to that
viewer's own queue, in order; a viewer with bytes already queued must not be in ``fds``.

Descriptors: each call is synchronous and runs no Python code, so a list built from the live
viewers just before the call cannot name a descriptor that this thread closed (and the kernel
reused) meanwhile. With ``release_gil=True``, another thread closing a listed fd during the call
can race; the gateway has one thread per worker.

``available()`` answers None if a Ring can be made here and sends, else the reason.
"""

from __future__ import annotations

import errno
import importlib
import os
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = ["Ring", "available", "backend", "write_all", "write_all_python", "write_many"]

_ext: ModuleType | None
_ext_error: str | None
try:
    _ext = importlib.import_module("roomcast.uring._uring")
    _ext_error = None
except ImportError as exc:  # not built: no compiler or headers where it was installed
    _ext = None
    _ext_error = f"the C extension roomcast.uring._uring is not built ({exc})"


if TYPE_CHECKING:
    from roomcast.uring._uring import Ring
else:
    Ring = getattr(_ext, "Ring", None)
    if Ring is None:

        class Ring:
            """Stands in where the extension (or io_uring in it) is missing: always raises."""

            def __init__(self, entries: int = 256) -> None:
                raise OSError(errno.ENOSYS, _ext_error or "io_uring is not supported on this OS")


def write_all_python(fds: Sequence[int], data: bytes) -> list[tuple[int, int]]:
    """``write_all`` without the extension: a Python loop of ``os.write`` (non-blocking fds)."""
    failed: list[tuple[int, int]] = []
    size = len(data)
    write = os.write
    for i, fd in enumerate(fds):
        try:
            n = write(fd, data)
        except OSError as e:
            failed.append((i, -(e.errno or errno.EIO)))
            continue
        if n != size:
            failed.append((i, n))
    return failed


if TYPE_CHECKING:
    from roomcast.uring._uring import write_all
else:
    write_all = _ext.write_all if _ext is not None else write_all_python


def write_many(items: Sequence[tuple[Sequence[int], bytes]]) -> list[tuple[int, int, int]]:
    """``Ring.send_many``'s contract over ``write_all``: (item, index, result) for each send of
    each (fds, data) item that did not complete."""
    return [(j, i, r) for j, (fds, data) in enumerate(items) for i, r in write_all(fds, data)]


def backend() -> str:
    """``"c"`` if the C extension is built, else ``"python"`` (``write_all`` is then Python)."""
    return "c" if _ext is not None else "python"


_lock = threading.Lock()
_answer: list[str | None] = []


def _probe() -> str | None:
    if _ext is None:
        return _ext_error
    if not hasattr(_ext, "Ring"):
        return "io_uring is not supported on this OS (built without <linux/io_uring.h>)"
    import socket

    try:
        ring = _ext.Ring(2)
    except OSError as e:
        reason = str(e.strerror or e)
        try:
            with open("/proc/sys/kernel/io_uring_disabled") as f:
                reason += f"; kernel.io_uring_disabled = {f.read().strip()}"
        except OSError:
            pass
        return reason
    try:
        a, b = socket.socketpair()
        with a, b:
            failed = ring.send_all([a.fileno()], b"?")
            if failed:
                return f"IORING_OP_SEND failed here: {os.strerror(-failed[0][1])}"
            if b.recv(1) != b"?":
                return "IORING_OP_SEND did not deliver"
    except OSError as e:
        return f"io_uring send refused: {e}"
    finally:
        ring.close()
    return None


def available() -> str | None:
    """None if a Ring can be made here and sends; else why not (for a ``--fanout auto`` log line).

    Probed once per process (a 2-entry ring sending one byte over a socketpair)."""
    with _lock:
        if not _answer:
            _answer.append(_probe())
        return _answer[0]
