"""What a bench run starts and stops: brokers (unless given), servers, and their CPU and memory."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from roomcast.devstack import LocalKafka, LocalNats
from roomcast.devstack.process import BrokerError, ManagedProcess, free_port, wait_for_port

PYTHON = sys.executable


@dataclass
class Brokers:
    nats: str
    kafka: str | None


@contextlib.contextmanager
def brokers(state_dir: Path, kafka: bool) -> Iterator[Brokers]:
    """ROOMCAST_NATS / ROOMCAST_KAFKA if set, else real ones started here and stopped after."""
    with contextlib.ExitStack() as stack:
        nats_url = os.environ.get("ROOMCAST_NATS")
        if not nats_url:
            nats_url = stack.enter_context(LocalNats(state_dir / "nats")).url
        bootstrap = None
        if kafka:
            bootstrap = os.environ.get("ROOMCAST_KAFKA")
            if not bootstrap:
                bootstrap = stack.enter_context(
                    LocalKafka(state_dir / "kafka", topics={})
                ).bootstrap
        yield Brokers(nats_url, bootstrap)


def server_port() -> int:
    """A free port below the ephemeral range: with tens of thousands of client connections
    open, a port from the ephemeral range (what binding port 0 gives) may be taken by a
    client socket before the server binds it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10_000, max(10_001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def run_id() -> str:
    return "bench" + uuid.uuid4().hex[:8]


class Server:
    """One or more server processes (a gateway with its workers, or N reference servers)."""

    def __init__(
        self, name: str, procs: list[ManagedProcess], port: int, metrics_port: int = 0
    ) -> None:
        self.name = name
        self.procs = procs
        self.port = port
        self.metrics_port = metrics_port  # a gateway's group endpoint (/metrics, /readyz)

    def start(self, timeout: float = 30) -> Server:
        for p in self.procs:
            p.start()
        for p in self.procs:
            wait_for_port(self.port, p, timeout)
        if self.metrics_port:  # a gateway: every worker connected to NATS
            deadline = time.monotonic() + timeout
            while not _ok(f"http://127.0.0.1:{self.metrics_port}/readyz"):
                if time.monotonic() > deadline:
                    raise BrokerError(f"{self.name} not ready after {timeout} s")
                time.sleep(0.1)
        return self

    def processes(self) -> list[psutil.Process]:
        out: list[psutil.Process] = []
        for p in self.procs:
            if p.pid is None:
                continue
            with contextlib.suppress(psutil.NoSuchProcess):
                top = psutil.Process(p.pid)
                out.append(top)
                out.extend(top.children(recursive=True))
        return out

    def cpu_seconds(self, user_only: bool = False) -> float:
        return cpu_seconds(self.processes(), user_only)

    def rss_bytes(self) -> int:
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def stop(self) -> None:
        for p in self.procs:
            p.stop(timeout=20)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def softirq_threads() -> list[psutil.Process]:
    """The kernel's ksoftirqd threads. Network receive work that a CPU cannot finish where it was
    raised (inline, in the sending process) goes on in them, and is charged to them, not to the
    process that caused it: a server that sends many packets in one system call (io_uring) has
    part of its kernel work done there. The fanout scenario counts them as the server's."""
    out = []
    for proc in psutil.process_iter(["name"]):
        if (proc.info["name"] or "").startswith("ksoftirqd/"):
            out.append(proc)
    return out


def softirq_ns(threads: list[psutil.Process]) -> int:
    """Their CPU time so far, in nanoseconds: exact (schedstat's first field), where psutil's
    times come in clock ticks; for spans far shorter than a second (`uringbench`)."""
    total = 0
    for thread in threads:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{thread.pid}/schedstat").read_text().split()[0])
    return total


def cpu_seconds(procs: list[psutil.Process], user_only: bool = False) -> float:
    """CPU time of the processes (user + system; `user_only`: the time in their own code)."""
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = proc.cpu_times()
            total += t.user if user_only else t.user + t.system
    return total


def gateway(
    logs: Path,
    nats: str,
    prefix: str,
    workers: int,
    port: int | None = None,
    extra: tuple[str, ...] = (),
) -> Server:
    port = port or server_port()
    metrics_port = server_port()
    args = [
        PYTHON,
        "-m",
        "roomcast.cli",
        "gateway",
        "--metrics-port",
        str(metrics_port),
        "--nats",
        nats,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--subject-prefix",
        prefix,
        "--max-connects-per-s",
        "1000000",
        "--max-viewers",
        "19000",
        "--drain-seconds",
        "0",
        "--log-level",
        "warning",
        "--auth",
        "off",  # measured without grants unless `extra` says otherwise
        *extra,
    ]
    proc = ManagedProcess("gateway", args, logs / f"gateway-{port}.log")
    return Server("gateway", [proc], port, metrics_port)


def reference(
    logs: Path,
    kind: str,
    nats: str,
    prefix: str,
    workers: int,
    loop: str = "uvloop",
    extra: tuple[str, ...] = (),
) -> Server:
    port = server_port()
    procs = [
        ManagedProcess(
            f"{kind}-{i}",
            [
                PYTHON,
                "-m",
                "roomcast.bench.servers",
                kind,
                "--port",
                str(port),
                "--nats",
                nats,
                "--prefix",
                prefix,
                "--loop",
                loop,
                *extra,
            ],
            logs / f"{kind}-{port}-{i}.log",
        )
        for i in range(workers)
    ]
    return Server(kind, procs, port)


def history_options(rid: str) -> tuple[str, ...]:
    """The run's own history subjects and stream, for ingest and the gateways that read it."""
    return ("--history-prefix", f"{rid}.history", "--stream", rid.upper())


def ingest(
    logs: Path,
    kafka: str,
    nats: str,
    topic: str,
    rid: str,
    window_ms: int,
    extra: tuple[str, ...] = (),
) -> tuple[ManagedProcess, int]:
    metrics_port = server_port()
    args = [
        PYTHON,
        "-m",
        "roomcast.cli",
        "ingest",
        "--kafka",
        kafka,
        "--nats",
        nats,
        "--topic",
        topic,
        "--group",
        rid,
        "--window-ms",
        str(window_ms),
        "--subject-prefix",
        f"{rid}.room",
        *history_options(rid),
        "--metrics-port",
        str(metrics_port),
        "--log-level",
        "warning",
        *extra,
    ]
    return ManagedProcess("ingest", args, logs / f"ingest-{metrics_port}.log"), metrics_port


def scrape(url: str, timeout: float = 2) -> tuple[str, dict[str, float]]:
    """GET a Prometheus endpoint: (worker header or "", {sample name with labels: value})."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        worker = resp.headers.get("X-Roomcast-Worker", "")
        text = resp.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return worker, values


def gateway_totals(server: Server, names: list[str]) -> dict[str, float]:
    """Sum metrics over every worker of a gateway (its group endpoint has them all)."""
    _, values = scrape(f"http://127.0.0.1:{server.metrics_port}/metrics")
    out: dict[str, float] = {}
    for key, v in values.items():
        for name in names:
            if key == name or key.startswith(name + "{"):
                out[name] = out.get(name, 0.0) + v
    return out


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False
