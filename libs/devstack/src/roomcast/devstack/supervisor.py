"""Keep the dev stack's children running: notice any death, restart with backoff, give up on a
child that keeps crashing.

Every child (nats-server, Kafka, ingest, gateway) is polled a few times a second, so a death is
noticed (and the dead process reaped) whichever child it is. A dead child is restarted after a
backoff that doubles with each quick crash (one within `stable_s` of its start); once it has
crashed `max_crashes` times in a row that quickly, the supervisor gives up and the caller stops
the stack with that child's own output since its latest start. A child that died while
something it needs was down (ingest while Kafka restarts) is not counted as crashing: it is
restarted once what it needs is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from roomcast.devstack.process import ManagedProcess, describe_exit

ADDRESS_IN_USE = "address already in use"


@dataclass(eq=False)
class Child:
    """One supervised process: how to start it (blocking until it serves), stop it, find it."""

    name: str
    start: Callable[[], object]  # returns once it serves; raises, saying why, if it does not
    stop: Callable[[], None]
    process: Callable[[], ManagedProcess | None]
    needs: tuple[str, ...] = ()  # children that must be up before it is restarted
    ports: dict[int, str] = field(default_factory=dict)  # port -> the option that changes it
    crashes: int = 0  # quick crashes in a row

    @property
    def pid(self) -> int | None:
        proc = self.process()
        return proc.pid if proc else None

    def exit_status(self) -> int | None:
        proc = self.process()
        return proc.returncode if proc else None

    def started_at(self) -> float:
        proc = self.process()
        return proc.started_at if proc else 0.0

    def output(self, lines: int = 20) -> str:
        """What it wrote since its latest start, with a hint when it could not bind a port."""
        proc = self.process()
        text = proc.log_tail(lines) if proc else "(never started)"
        return text + port_hint(text, self.ports)


def port_hint(output: str, ports: dict[int, str]) -> str:
    if ADDRESS_IN_USE not in output.lower() or not ports:
        return ""
    which = ", ".join(f"{port} ({option})" for port, option in ports.items())
    return (
        f"\nport {which} is already in use (another roomcast dev, or another service?);"
        " stop it or choose another port with that option"
    )


@dataclass(frozen=True)
class GaveUp:
    child: Child
    reason: str  # "died (exit status 1)", "could not start", ...
    output: str  # its own output since its latest start (and a hint, if one applies)


class Supervisor:
    """Watch `children` (already started, in start order) until `stop` is set or one of them
    keeps crashing; `run()` returns that one (None on a normal stop)."""

    def __init__(
        self,
        children: list[Child],
        echo: Callable[[str], None],
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 8.0,
        max_crashes: int = 5,
        stable_s: float = 30.0,
        poll_s: float = 0.2,
    ) -> None:
        self.children = {c.name: c for c in children}
        self.echo = echo
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.max_crashes = max_crashes
        self.stable_s = stable_s
        self.poll_s = poll_s
        self.up = set(self.children)
        self.gave_up: GaveUp | None = None
        # Starting a broker blocks (Kafka: seconds): one thread per child, never the loop.
        self._pool = ThreadPoolExecutor(len(children) or 1, thread_name_prefix="devstack-start")

    async def run(self, stop: asyncio.Event) -> GaveUp | None:
        self._stop = stop
        tasks = [asyncio.create_task(self._supervise(c)) for c in self.children.values()]
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.gave_up

    def shutdown(self) -> None:
        """Stop every child, last started first, including any a restart is bringing up."""
        order = list(reversed(self.children.values()))
        for c in order:
            c.stop()
        # A start in flight ends quickly once its process is gone; whatever it brought up
        # after the stop above goes in the second round.
        self._pool.shutdown(wait=True, cancel_futures=True)
        for c in order:
            c.stop()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _down(self, names: tuple[str, ...]) -> list[str]:
        return [n for n in names if n in self.children and n not in self.up]

    async def _supervise(self, c: Child) -> None:
        while True:
            # Polled: a child's exit has no portable event (pidfd is Linux-only), and five
            # polls a second per child cost nothing. Polling also reaps it: no <defunct>.
            while (status := c.exit_status()) is None:  # noqa: ASYNC110
                await asyncio.sleep(self.poll_s)
            died_at = time.monotonic()
            reason = f"died ({describe_exit(status)})"
            output = c.output()
            ran_s = died_at - c.started_at()
            excused = self._down(c.needs)
            self.up.discard(c.name)
            while True:  # until it is back
                if excused:
                    c.crashes = 0
                elif ran_s < self.stable_s:
                    c.crashes += 1
                else:
                    c.crashes = 1
                if c.crashes >= self.max_crashes:
                    self.gave_up = GaveUp(c, reason, output)
                    self._stop.set()
                    return
                wait = min(self.backoff_initial_s * 2 ** max(c.crashes - 1, 0), self.backoff_max_s)
                verb = "was" if len(excused) == 1 else "were"
                why = f" while {' and '.join(excused)} {verb} down" if excused else ""
                self.echo(f"{c.name} {reason}{why}; restarting in {wait:g} s")
                await self._sleep(wait)
                while self._down(c.needs) and not self._stop.is_set():  # noqa: ASYNC110
                    await asyncio.sleep(self.poll_s)
                if self._stop.is_set():
                    return
                c.stop()  # reap it, and anything it left in its process group
                try:
                    await asyncio.wrap_future(self._pool.submit(c.start))
                except Exception as exc:
                    status = c.exit_status()
                    how = f" ({describe_exit(status)})" if status is not None else ""
                    reason, output, ran_s = f"could not start{how}", str(exc), 0.0
                    excused = self._down(c.needs)
                    continue
                break
            self.up.add(c.name)
            self.echo(f"{c.name} is back (pid {c.pid}), {time.monotonic() - died_at:.1f} s after")
