"""What `roomcast dev`, `watch` and `produce` say when something is wrong, and their exit codes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from tests.support import ROOMCAST, Service, free_port, unique, wait_http_ok


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


class _Stderr:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.lines: list[str] = []
        stderr = proc.stderr
        threading.Thread(target=lambda: self.lines.extend(stderr), daemon=True).start()

    def wait_for(self, needle: str, timeout: float, start: int = 0) -> int:
        """Index of the first line from `start` on that holds `needle`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, line in enumerate(list(self.lines)[start:], start):
                if needle in line:
                    return i
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} on stderr within {timeout} s:\n{''.join(self.lines)}")


def test_watch_says_it_is_connecting_retrying_lost_and_reconnected(
    nats_url: str, services: Callable[[str, list[str]], Service]
) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    watch = subprocess.Popen(
        [*ROOMCAST, "watch", "lobby", "--url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    err = _Stderr(watch)
    gateway_args = ["gateway", "--nats", nats_url, "--port", str(port), "--workers", "1"]
    try:
        # Nothing listens yet: it says where it connects, and that it retries.
        err.wait_for(f"connecting to {url}", 20)
        i = err.wait_for("connection refused, retrying in", 10)
        gateway = services("gateway-1", gateway_args)
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", gateway)
        i = err.wait_for(f"watching lobby on {url}", 20, i)
        gateway.stop(signal.SIGKILL)  # the gateway goes away without a word
        i = err.wait_for("connection lost (no close frame); reconnecting", 10, i)
        i = err.wait_for("connection refused, retrying in", 10, i)
        gateway = services("gateway-2", gateway_args)
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", gateway)
        i = err.wait_for(f"reconnected to {url}", 30, i)
        err.wait_for(f"watching lobby on {url}", 10, i)
    finally:
        watch.kill()
        watch.wait(10)


def test_watch_refused_for_good_is_exit_1_without_traceback(
    nats_url: str, services: Callable[[str, list[str]], Service]
) -> None:
    """A gateway that answers 400 (here: a room the gateway refuses) ends watch with status 1."""
    port = free_port()
    gateway = services(
        "gateway", ["gateway", "--nats", nats_url, "--port", str(port), "--workers", "1"]
    )
    wait_http_ok(f"http://127.0.0.1:{port}/healthz", gateway)
    done = subprocess.run(
        [*ROOMCAST, "watch", "lobby", "--url", f"ws://127.0.0.1:{port}/ws?room=a.b"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1, done.stderr
    assert "refused the viewer: gateway answered HTTP 400" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert psutil.pid_exists(gateway.proc.pid)
