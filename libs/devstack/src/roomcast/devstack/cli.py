"""`roomcast dev`: the whole stack on this machine, with a demo, in one command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click

from roomcast.devstack.demo import demo_rooms, run_demo_producer

ROOMCAST = [sys.executable, "-m", "roomcast.cli"]


class _Proc:
    """A service subprocess in its own process group, logging to a file."""

    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            ROOMCAST + args, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def _wait_healthy(url: str, proc: _Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise click.ClickException(f"{proc.name} exited at start:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise click.ClickException(f"{proc.name} not healthy after {timeout:g}s:\n{proc.tail()}")


@click.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".state/dev"),
    show_default=True,
    help="Where broker data and service logs live (kept between runs).",
)
@click.option(
    "--kafka",
    default=None,
    envvar="ROOMCAST_KAFKA",
    show_envvar=True,
    help="Use this Kafka (HOST:PORT) instead of starting one.",
)
@click.option(
    "--nats",
    default=None,
    envvar="ROOMCAST_NATS",
    show_envvar=True,
    help="Use this NATS (nats://HOST:PORT) instead of starting one.",
)
@click.option("--kafka-port", default=9092, show_default=True, help="Port of the Kafka we start.")
@click.option("--nats-port", default=4222, show_default=True, help="Port of the NATS we start.")
@click.option("--port", default=8080, show_default=True, help="The gateway's WebSocket port.")
@click.option("--topic", default="roomcast.events", show_default=True)
@click.option("--window-ms", default=1000, show_default=True, help="Ingest merge window.")
@click.option("--rooms", default=3, show_default=True, help="Demo rooms: demo-1 ... demo-N.")
@click.option("--rate", default=20.0, show_default=True, help="Demo events per second, in all.")
@click.option(
    "--duration", default=0.0, help="Stop by itself after this many seconds (0: until Ctrl-C)."
)
@click.option(
    "--demo-only",
    is_flag=True,
    help="Run only the demo producer against --kafka (docker-compose uses this).",
)
def dev(
    state_dir: Path,
    kafka: str | None,
    nats: str | None,
    kafka_port: int,
    nats_port: int,
    port: int,
    topic: str,
    window_ms: int,
    rooms: int,
    rate: float,
    duration: float,
    demo_only: bool,
) -> None:
    """Run NATS, Kafka, an ingest worker, a gateway and a demo producer; Ctrl-C stops them all.

    \b
    The first run resolves Kafka's jars with Maven (a minute or two); later runs start in seconds.
    Then, in another terminal:
        roomcast watch demo-1                       # the demo's hot room, one line per blob
        roomcast watch demo-2 --events              # one line per event
        roomcast produce --room demo-1 '{"text":"hello from me"}'
    Logs: STATE_DIR/*.log. Brokers' data stays in STATE_DIR between runs.
    """
    from roomcast.devstack import BrokerError, LocalKafka, LocalNats
    from roomcast.devstack.kafka import ensure_topics

    names = demo_rooms(rooms)
    if demo_only:
        if kafka is None:
            raise click.UsageError("--demo-only needs --kafka (or ROOMCAST_KAFKA)")
        click.echo(f"demo: {rate:g} events/s over {', '.join(names)} to {kafka} {topic}")
        asyncio.run(_run_demo(kafka, topic, names, rate, duration, []))
        return
    state_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            if nats is None:
                click.echo(f"starting NATS (JetStream) on 127.0.0.1:{nats_port} ...")
                nats = stack.enter_context(LocalNats(state_dir / "nats", port=nats_port)).url
            if kafka is None:
                click.echo(f"starting Kafka 4.3.1 (KRaft) on 127.0.0.1:{kafka_port} ...")
                broker = stack.enter_context(
                    LocalKafka(state_dir / "kafka", port=kafka_port, topics={topic: 8})
                )
                kafka = broker.bootstrap
            else:
                click.echo(f"using Kafka at {kafka}; creating {topic} (8 partitions) if missing")
                ensure_topics(kafka, {topic: 8, f"{topic}.dlq": 1})
        except BrokerError as exc:
            raise click.ClickException(str(exc)) from None
        procs: list[_Proc] = []
        stack.callback(lambda: [p.stop() for p in reversed(procs)])
        procs.append(
            _Proc(
                "ingest",
                [
                    "ingest",
                    "--kafka",
                    kafka,
                    "--nats",
                    nats,
                    "--topic",
                    topic,
                    "--window-ms",
                    str(window_ms),
                ],
                state_dir,
            )
        )
        gateway = _Proc(
            "gateway",
            ["gateway", "--nats", nats, "--port", str(port), "--workers", "1", "--auth", "off"],
            state_dir,
        )
        procs.append(gateway)
        _wait_healthy(f"http://127.0.0.1:{port}/healthz", gateway, 30)
        click.echo(
            "\nroomcast is running:\n"
            f"  Kafka     {kafka}  topic {topic}\n"
            f"  NATS      {nats}\n"
            f"  ingest    window {window_ms} ms        log {procs[0].log_path}\n"
            f"  gateway   ws://127.0.0.1:{port}/ws   log {gateway.log_path}\n"
            f"  demo      {rate:g} events/s over {', '.join(names)}\n\n"
            f"watch a room:   roomcast watch {names[0]}\n"
            f'say something:  roomcast produce --room {names[0]} \'{{"text":"hi"}}\'\n'
            "Ctrl-C stops everything.\n"
        )
        try:
            sent = asyncio.run(_run_demo(kafka, topic, names, rate, duration, procs))
        except KeyboardInterrupt:
            sent = None
        click.echo("\nstopping ..." + (f" (the demo produced {sent} events)" if sent else ""))


async def _run_demo(
    kafka: str, topic: str, rooms: list[str], rate: float, duration: float, procs: list[_Proc]
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration > 0:
        loop.call_later(duration, stop.set)

    async def watchdog() -> None:
        while not stop.is_set():
            for p in procs:
                if not p.alive():
                    click.echo(f"{p.name} exited (code {p.proc.returncode}):\n{p.tail()}", err=True)
                    stop.set()
            await asyncio.sleep(0.5)

    dog = asyncio.create_task(watchdog())
    try:
        return await run_demo_producer(kafka, topic, rooms, rate, stop)
    finally:
        dog.cancel()
