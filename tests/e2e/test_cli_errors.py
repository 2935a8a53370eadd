"""What `roomcast dev`, `watch` and `produce` say when something is wrong, and their exit codes."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support import ROOMCAST, unique


@contextlib.contextmanager
def listening(n: int) -> Iterator[list[int]]:
    """`n` loopback ports, each taken by a listening socket for the duration."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
            s.listen()
        yield [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _dev(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ROOMCAST_KAFKA", "ROOMCAST_NATS")}
    return subprocess.run(
        [*ROOMCAST, "dev", "--state-dir", str(tmp_path / "state"), "--duration", "5", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_dev_gateway_port_in_use_is_a_clear_error_before_anything_starts(
    tmp_path: Path, kafka_bootstrap: str, nats_url: str
) -> None:
    with listening(1) as [port]:
        done = _dev(
            tmp_path,
            *("--kafka", kafka_bootstrap, "--nats", nats_url, "--topic", unique("ports")),
            *("--port", str(port)),
        )
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        f"port {port} for the gateway is already in use" in done.stderr
        and "choose another port with --port" in done.stderr
    ), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "state" / "gateway.log").exists()  # nothing was started


def test_dev_names_every_busy_port_with_the_option_that_changes_it(tmp_path: Path) -> None:
    with listening(4) as [gateway, metrics, nats, kafka]:
        done = _dev(
            tmp_path,
            *("--port", str(gateway), "--ingest-metrics-port", str(metrics)),
            *("--nats-port", str(nats), "--kafka-port", str(kafka)),
        )
    assert done.returncode == 1, done.stdout + done.stderr
    for port, what, option in [
        (gateway, "the gateway", "--port"),
        (metrics, "ingest metrics", "--ingest-metrics-port"),
        (nats, "NATS", "--nats-port"),
        (kafka, "Kafka", "--kafka-port"),
    ]:
        assert f"port {port} for {what} is already in use" in done.stderr, done.stderr
        assert f"choose another port with {option}" in done.stderr
    assert "starting NATS" not in done.stdout  # it stopped before starting anything
