"""Child processes driven through pipes: the load clients and the chaos viewers both run this way.

The parent starts `count` spawned processes, each running `serve(conn)` on uvloop, and sends them
small `(command, argument)` tuples; each child answers every command with exactly one reply, so
`ProcessPool.all` can send to every child and then collect the replies in order. A child's serve
loop reads the commands from `commands(conn)`: a closed pipe (the parent is gone) reads as
`("exit", None)`, so no child outlives its parent's pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import threading
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any

Serve = Callable[[Connection], Coroutine[Any, Any, None]]


def commands(conn: Connection) -> asyncio.Queue[tuple[str, Any]]:
    """The parent's commands, as they come. A thread reads the pipe: it stays blocking, which
    the event loop's add_reader would not allow. Call from within the running loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def read() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                msg = ("exit", None)
            loop.call_soon_threadsafe(queue.put_nowait, msg)
            if msg[0] == "exit":
                return

    threading.Thread(target=read, daemon=True).start()
    return queue


def reply(conn: Connection, value: Any = None) -> None:
    """Answer the last command; a parent already gone is not an error (the child is leaving)."""
    with contextlib.suppress(OSError):
        conn.send(value)


def _run(serve: Serve, conn: Connection) -> None:
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(conn))


class ProcessPool:
    """`count` spawned children, each running `serve(conn)` (a module-level coroutine function,
    so that spawn can pickle it by name). Stopped by `close`, or on leaving a `with` block."""

    def __init__(self, serve: Serve, count: int) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self._procs: list[Any] = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_run, args=(serve, child), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self._procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def each(self, messages: list[tuple[str, Any]]) -> list[Any]:
        """Message i to child i, then every reply in order."""
        for pipe, msg in zip(self.pipes, messages, strict=True):
            pipe.send(msg)
        return [pipe.recv() for pipe in self.pipes]

    def all(self, cmd: str, arg: Any = None) -> list[Any]:
        """The same command to every child; their replies in order."""
        return self.each([(cmd, arg)] * len(self.pipes))

    def close(self) -> None:
        """Ask every child to exit, wait a little, then kill whoever is left."""
        with contextlib.suppress(OSError, EOFError):
            self.all("exit")
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
        self._procs.clear()
        self.pipes.clear()
