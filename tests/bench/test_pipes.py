"""The child processes the load clients and the chaos viewers run in: one reply per command, in
order, and no child outlives its parent's pipe."""

from __future__ import annotations

import os
import time
from multiprocessing.connection import Connection

import psutil

from roomcast.bench import pipes


async def _echo(conn: Connection) -> None:
    queue = pipes.commands(conn)
    while True:
        cmd, arg = await queue.get()
        if cmd == "exit":
            pipes.reply(conn)
            return
        pipes.reply(conn, (cmd, arg, os.getpid()))


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.05)
    return False


def test_each_child_answers_its_own_command_and_close_stops_them() -> None:
    pool = pipes.ProcessPool(_echo, 2)
    try:
        pids = pool.pids
        assert len(set(pids)) == 2
        assert pool.each([("a", 1), ("b", 2)]) == [("a", 1, pids[0]), ("b", 2, pids[1])]
        assert pool.all("c", [3]) == [("c", [3], pids[0]), ("c", [3], pids[1])]
    finally:
        pool.close()
    assert all(_gone(pid, 1) for pid in pids)
    assert pool.pids == []


def test_a_child_leaves_when_its_parent_pipe_closes() -> None:
    pool = pipes.ProcessPool(_echo, 1)
    try:
        (pid,) = pool.pids
        assert pool.all("ping") == [("ping", None, pid)]
        pool.pipes[0].close()  # the parent gone, as far as the child can tell
        assert _gone(pid, 10), "the child outlived its parent's pipe"
    finally:
        pool.close()
