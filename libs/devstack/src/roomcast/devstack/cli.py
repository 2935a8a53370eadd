"""`roomcast dev`: the whole stack on this machine, with a demo, in one command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import click

from roomcast.devstack.demo import demo_rooms, run_demo_producer
from roomcast.devstack.process import (
    BrokerError,
    ManagedProcess,
    describe_exit,
    install_signal_handlers,
    port_in_use,
    port_in_use_message,
)
from roomcast.devstack.supervisor import Child, GaveUp, Supervisor, port_hint

ROOMCAST = [sys.executable, "-m", "roomcast.cli"]

EXIT_CODES = """\b
Exit status:
  0  stopped by Ctrl-C, SIGTERM or --duration
  1  could not start (a port in use, a broker that did not come up, ...),
     or a service kept crashing (its own output is shown)
  2  bad usage: an unknown option or a bad value
"""


def _echo(line: str) -> None:
    click.echo(f"{time.strftime('%H:%M:%S')} {line}", err=True)


def _service(
    name: str,
    args: list[str],
    log_dir: Path,
    needs: tuple[str, ...],
    ports: dict[int, str],
    health_url: str | None = None,
) -> Child:
    """A roomcast subcommand as a supervised child; with `health_url`, started = it answers."""
    proc = ManagedProcess(name, ROOMCAST + args, log_dir / f"{name}.log")

    def start() -> None:
        proc.start()
        if health_url is not None:
            _wait_healthy(health_url, proc, ports, timeout=30)

    return Child(name, start, lambda: proc.stop(timeout=20), lambda: proc, needs, ports)


def _wait_healthy(url: str, proc: ManagedProcess, ports: dict[int, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            out = proc.log_tail(20)
            raise BrokerError(
                f"{proc.name} exited at start ({describe_exit(proc.returncode)});"
                f" its output ({proc.log_path}):\n{out}{port_hint(out, ports)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise BrokerError(
        f"{proc.name} not healthy after {timeout:g}s; its output ({proc.log_path}):\n"
        + proc.log_tail(20)
    )


def _check_ports(wanted: list[tuple[int, str, str]]) -> None:
    """Fail before starting anything if a port we are about to listen on is taken."""
    problems: list[str] = []
    seen: dict[int, str] = {}
    for port, what, option in wanted:
        if port in seen:
            problems.append(
                f"port {port} is asked for both {seen[port]} and {what};"
                f" choose another with {option}"
            )
        elif port_in_use(port):
            problems.append(port_in_use_message(port, what, option))
        seen[port] = what
    if problems:
        raise click.ClickException("\n".join(problems))


@click.command(epilog=EXIT_CODES)
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
@click.option(
    "--kafka-port", default=9092, type=click.IntRange(1, 65535), show_default=True,
    help="Port of the Kafka we start.",
)  # fmt: skip
@click.option(
    "--nats-port", default=4222, type=click.IntRange(1, 65535), show_default=True,
    help="Port of the NATS we start.",
)  # fmt: skip
@click.option(
    "--port", default=8080, type=click.IntRange(1, 65535), show_default=True,
    help="The gateway's WebSocket port.",
)  # fmt: skip
@click.option(
    "--ingest-metrics-port", default=9464, type=click.IntRange(0, 65535), show_default=True,
    help="The ingest worker's Prometheus /metrics port (0: none).",
)  # fmt: skip
@click.option(
    "--gateway-metrics-port", default=9465, type=click.IntRange(0, 65535), show_default=True,
    help="The gateway's /metrics, /healthz, /readyz port (0: none).",
)  # fmt: skip
@click.option(
    "--chat-port", default=8090, type=click.IntRange(0, 65535), show_default=True,
    help="The demo page's chat box: POST /chat on 127.0.0.1 writes to Kafka (0: read-only page).",
)  # fmt: skip
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
    ingest_metrics_port: int,
    gateway_metrics_port: int,
    chat_port: int,
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

    \b
    Supervision: a child that dies (nats-server, Kafka, ingest or the gateway) is restarted with
    backoff (0.5 s, doubling up to 8 s), with one line saying how it ended; brokers come back on
    the same port with the same data. A child that crashes 5 times in a row, each within 30 s of
    its start, stops everything and its own output is shown.
    """
    from roomcast.devstack import LocalKafka, LocalNats
    from roomcast.devstack.kafka import ensure_topics

    names = demo_rooms(rooms)
    if demo_only:
        if kafka is None:
            raise click.UsageError("--demo-only needs --kafka (or ROOMCAST_KAFKA)")
        click.echo(f"demo: {rate:g} events/s over {', '.join(names)} to {kafka} {topic}")
        asyncio.run(_run(None, kafka, topic, names, rate, duration))
        return
    page = f"http://127.0.0.1:{port}/"
    click.echo(f"demo page: {page}?room={names[0]}   (gateway stats: {page}stats)")
    wanted = [(port, "the gateway", "--port")]
    if chat_port:
        wanted.append((chat_port, "the demo page's chat box", "--chat-port"))
    if ingest_metrics_port:
        wanted.append((ingest_metrics_port, "ingest metrics", "--ingest-metrics-port"))
    if gateway_metrics_port:
        wanted.append((gateway_metrics_port, "gateway metrics", "--gateway-metrics-port"))
    if nats is None:
        wanted.append((nats_port, "NATS", "--nats-port"))
    if kafka is None:
        wanted.append((kafka_port, "Kafka", "--kafka-port"))
    _check_ports(wanted)
    state_dir.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    supervisor = None
    try:
        try:
            if nats is None:
                click.echo(f"starting NATS (JetStream) on 127.0.0.1:{nats_port} ...")
                nb = LocalNats(state_dir / "nats", port=nats_port)
                children.append(Child("nats-server", nb.start, nb.stop, lambda: nb.process))
                children[-1].start()
                nats = nb.url
            if kafka is None:
                click.echo(f"starting Kafka 4.3.1 (KRaft) on 127.0.0.1:{kafka_port} ...")
                kb = LocalKafka(state_dir / "kafka", port=kafka_port, topics={topic: 8})
                children.append(Child("kafka", kb.start, kb.stop, lambda: kb.process))
                children[-1].start()
                kafka = kb.bootstrap
            else:
                click.echo(f"using Kafka at {kafka}; creating {topic} (8 partitions) if missing")
                ensure_topics(kafka, {topic: 8, f"{topic}.dlq": 1})
            brokers = tuple(c.name for c in children)
            ingest = _service(
                "ingest",
                ["ingest", "--kafka", kafka, "--nats", nats, "--topic", topic]
                + ["--window-ms", str(window_ms), "--metrics-port", str(ingest_metrics_port)]
                # Static group membership, one name per `roomcast dev`: a restarted ingest
                # takes its partitions back at once instead of after the session timeout.
                + ["--instance-id", f"dev-{socket.gethostname()}-{os.getpid()}"],
                state_dir,
                needs=brokers,
                ports={ingest_metrics_port: "--ingest-metrics-port"} if ingest_metrics_port else {},
                # Its metrics endpoint answers once it runs (it does not wait for the brokers).
                health_url=f"http://127.0.0.1:{ingest_metrics_port}/metrics"
                if ingest_metrics_port
                else None,
            )
            children.append(ingest)
            ingest.start()
            gateway_ports = {port: "--port"}
            if gateway_metrics_port:
                gateway_ports[gateway_metrics_port] = "--gateway-metrics-port"
            gateway = _service(
                "gateway",
                ["gateway", "--nats", nats, "--host", "127.0.0.1", "--port", str(port)]
                + ["--workers", "1", "--metrics-port", str(gateway_metrics_port)]
                + ["--auth", "off"]  # a local demo: anyone on this machine may watch
                + ["--demo-chat-url", f"http://127.0.0.1:{chat_port}/chat" if chat_port else ""],
                state_dir,
                needs=tuple(b for b in brokers if b == "nats-server"),
                ports=gateway_ports,
                health_url=f"http://127.0.0.1:{port}/healthz",
            )
            children.append(gateway)
            gateway.start()
        except BrokerError as exc:
            raise click.ClickException(str(exc)) from None
        metrics = (
            f"metrics http://127.0.0.1:{ingest_metrics_port}/metrics"
            if ingest_metrics_port
            else "no metrics port"
        )
        gw_metrics = (
            f"metrics http://127.0.0.1:{gateway_metrics_port}/metrics"
            if gateway_metrics_port
            else "no metrics port"
        )
        click.echo(
            "\nroomcast is running:\n"
            f"  demo page {page}?room={names[0]}   stats {page}stats\n"
            f"  Kafka     {kafka}  topic {topic}\n"
            f"  NATS      {nats}\n"
            f"  ingest    window {window_ms} ms, {metrics}   log {state_dir / 'ingest.log'}\n"
            f"  gateway   ws://127.0.0.1:{port}/ws, {gw_metrics}\n"
            f"            log {state_dir / 'gateway.log'}\n"
            f"  demo      {rate:g} events/s over {', '.join(names)}\n"
            + (
                f"  chat box  POST http://127.0.0.1:{chat_port}/chat (the page's; to Kafka)\n\n"
                if chat_port
                else "  chat box  off (--chat-port 0): the page is read-only\n\n"
            )
            + f"watch a room:   roomcast watch {names[0]}\n"
            f'say something:  roomcast produce --room {names[0]} \'{{"text":"hi"}}\'\n'
            "A service or broker that dies is restarted. Ctrl-C stops everything.\n"
        )
        supervisor = Supervisor(children, _echo)
        gave_up, sent = asyncio.run(
            _run(supervisor, kafka, topic, names, rate, duration, chat_port, port)
        )
        # asyncio put back the default handlers: a SIGTERM now must still stop the children.
        install_signal_handlers()
        if gave_up is not None:
            _report(gave_up)
        click.echo("\nstopping ..." + (f" (the demo produced {sent} events)" if sent else ""))
    except KeyboardInterrupt:  # Ctrl-C while starting
        click.echo("\nstopping ...")
        gave_up = None
    finally:
        if supervisor is not None:
            supervisor.shutdown()
        else:
            for c in reversed(children):
                c.stop()
    if gave_up is not None:
        sys.exit(1)


def _report(g: GaveUp) -> None:
    proc = g.child.process()
    if g.reason.startswith("died") and proc is not None:
        header = f"The last time it {g.reason}; its output since it started ({proc.log_path}):"
    else:
        header = f"The last time it {g.reason}:"
    body = "\n".join("  " + line for line in g.output.splitlines())
    click.echo(
        f"\n{g.child.name} keeps crashing ({g.child.crashes} times in a row, each soon after it"
        f" started); stopping everything.\n{header}\n{body}",
        err=True,
    )


async def _run(
    supervisor: Supervisor | None,
    kafka: str,
    topic: str,
    rooms: list[str],
    rate: float,
    duration: float,
    chat_port: int = 0,
    page_port: int = 0,
) -> tuple[GaveUp | None, int | None]:
    """The demo producer and the supervisor, until Ctrl-C, SIGTERM, --duration or a give-up."""
    # The demo's own lines say when Kafka is gone and back; aiokafka's would repeat it each try.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration > 0:
        loop.call_later(duration, stop.set)

    async def demo() -> int | None:
        try:
            return await run_demo_producer(kafka, topic, rooms, rate, stop, _echo)
        except Exception as exc:  # the demo is a convenience: its failure never stops the stack
            _echo(f"the demo producer stopped: {exc!r}")
            return None

    demo_task = asyncio.create_task(demo())
    chat = None
    if chat_port:
        try:
            chat = await _start_chat(kafka, topic, chat_port, page_port)
        except Exception as exc:  # like the demo: a convenience, never a reason to stop
            _echo(f"the demo page's chat box is off: {exc!r}")
    gave_up = None
    try:
        if supervisor is not None:
            gave_up = await supervisor.run(stop)
        else:
            await stop.wait()
    finally:
        if chat is not None:
            await chat()
    return gave_up, await demo_task


async def _start_chat(
    kafka: str, topic: str, port: int, page_port: int
) -> Callable[[], Awaitable[None]]:
    """The demo page's chat box (POST /chat -> Kafka); returns how to stop it."""
    from aiokafka import AIOKafkaProducer

    from roomcast.devstack.chat import ChatEndpoint, kafka_sender

    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", request_timeout_ms=8_000)
    await producer.start()
    origins = [f"http://127.0.0.1:{page_port}", f"http://localhost:{page_port}"]
    endpoint = ChatEndpoint(
        port, kafka_sender(producer, topic), asyncio.get_running_loop(), origins
    ).start()

    async def stop() -> None:
        await asyncio.to_thread(endpoint.stop)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 5)

    return stop
