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
import pytest

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
        [*ROOMCAST, "dev", "--state-dir", str(tmp_path / "state"), "--duration", "5"]
        + ([] if "--chat-port" in args else ["--chat-port", "0"])  # 8090 may be another stack's
        + list(args),
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
    with listening(5) as [gateway, metrics, nats, kafka, gw_metrics]:
        done = _dev(
            tmp_path,
            *("--port", str(gateway), "--ingest-metrics-port", str(metrics)),
            *("--nats-port", str(nats), "--kafka-port", str(kafka)),
            *("--gateway-metrics-port", str(gw_metrics)),
        )
    assert done.returncode == 1, done.stdout + done.stderr
    for port, what, option in [
        (gateway, "the gateway", "--port"),
        (metrics, "ingest metrics", "--ingest-metrics-port"),
        (nats, "NATS", "--nats-port"),
        (kafka, "Kafka", "--kafka-port"),
        (gw_metrics, "gateway metrics", "--gateway-metrics-port"),
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
    gateway_args += ["--auth", "off", "--metrics-port", "0"]
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


def _produce(
    kafka: str, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*ROOMCAST, "produce", "--kafka", kafka, *args],
        input=stdin,
        capture_output=True,
        timeout=60,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode(errors="replace")
    )


def test_produce_invalid_utf8_is_a_clear_error(
    kafka_bootstrap: str, kafka_topic: Callable[..., str]
) -> None:
    topic = kafka_topic(partitions=1, dlq=False)
    piped = _produce(
        kafka_bootstrap,
        "--room",
        "r",
        "--topic",
        topic,
        stdin=b'{"ok":1}\n{"text":"\xff"}\n{"n":3}\n',
    )
    assert piped.returncode == 1, piped.stderr
    assert "event 2 is not valid UTF-8 (byte 0xff at position 9)" in piped.stderr, piped.stderr
    assert "produced 1 event" in piped.stderr  # the one before it went; none after it
    assert "Traceback" not in piped.stderr
    arg = subprocess.run(
        [*ROOMCAST, "produce", "--kafka", kafka_bootstrap, "--room", "r", "--topic", topic,
         os.fsdecode(b'{"text":"\xc3"}')],
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert arg.returncode == 1 and b"event 1 is not valid UTF-8" in arg.stderr, arg.stderr


def test_produce_size_limit_is_its_own_option(
    kafka_bootstrap: str, kafka_topic: Callable[..., str]
) -> None:
    topic = kafka_topic(partitions=1, dlq=False)
    big = _produce(
        kafka_bootstrap,
        "--room",
        "r",
        "--topic",
        topic,
        "--max-event-bytes",
        "10",
        '{"text":"hello"}',
    )
    assert big.returncode == 1, big.stderr
    assert "event 1 is 16 bytes, over --max-event-bytes (10)" in big.stderr, big.stderr
    ok = _produce(
        kafka_bootstrap,
        "--room",
        "r",
        "--topic",
        topic,
        "--max-event-bytes",
        "16",
        '{"text":"hello"}',
    )
    assert ok.returncode == 0, ok.stderr


def test_produce_kafka_problems_exit_3(kafka_bootstrap: str) -> None:
    started = time.monotonic()
    no_topic = _produce(kafka_bootstrap, "--room", "r", "--topic", unique("missing"), "{}")
    assert no_topic.returncode == 3, no_topic.stderr
    assert "has no topic" in no_topic.stderr and "Traceback" not in no_topic.stderr
    assert time.monotonic() - started < 10  # said at once, not after the request timeout
    with listening(1) as [port]:  # something that is not Kafka: nothing answers it
        pass
    down = _produce(f"127.0.0.1:{port}", "--room", "r", "{}")
    assert down.returncode == 3, down.stderr
    assert f"cannot reach Kafka at 127.0.0.1:{port}" in down.stderr
    assert "Unable connect" not in down.stderr  # aiokafka's own log lines stay quiet


@pytest.mark.parametrize("command", ["dev", "watch", "produce"])
def test_help_documents_the_exit_codes(command: str) -> None:
    done = subprocess.run(
        [*ROOMCAST, command, "--help"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0
    assert "Exit status:" in done.stdout
    assert "  0  " in done.stdout and "  1  " in done.stdout and "  2  " in done.stdout


def test_watch_refused_for_good_is_exit_1_without_traceback(
    nats_url: str, services: Callable[[str, list[str]], Service]
) -> None:
    """A gateway that answers 400 (here: a room the gateway refuses) ends watch with status 1."""
    port = free_port()
    gateway = services(
        "gateway",
        ["gateway", "--nats", nats_url, "--port", str(port), "--workers", "1"]
        + ["--auth", "off", "--metrics-port", "0"],
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
