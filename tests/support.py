"""Helpers for tests that run roomcast's services as real subprocesses, as an operator does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

ROOMCAST = [sys.executable, "-m", "roomcast.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Service:
    """A roomcast subprocess whose output goes to a log file shown when a test fails."""

    def __init__(
        self, name: str, args: list[str], log_dir: Path, open_files: int | None = None
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")

        def limit() -> None:  # in the child, before exec: its hard open-files limit
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

        self.proc = subprocess.Popen(
            ROOMCAST + args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=limit if open_files is not None else None,
        )

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def wait_http_ok(url: str, service: Service, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise AssertionError(f"{service.name} exited early:\n{service.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(
        f"{service.name} not ready at {url} after {timeout}s:\n{service.log_tail()}"
    )


async def create_topic(kafka: str, name: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


def start_pipeline(
    services: Callable[[str, list[str]], Service],
    kafka: str,
    nats: str,
    *,
    name: str,
    partitions: int,
    window_ms: int,
    gateway_metrics_port: int = 0,
    ingest_metrics_port: int = 0,
) -> tuple[str, int]:
    """A fresh topic (and its .dlq), one ingest and one gateway worker on their own subjects
    (history and rooms) and stream, as an operator starts them. Returns the topic and the
    gateway's port, once healthy. The metrics ports are off unless given."""
    topic, prefix = unique(name), unique(name).replace("-", "_")
    history = ["--history-prefix", f"{prefix}_history", "--stream", unique("S").replace("-", "_")]
    asyncio.run(create_topic(kafka, topic, partitions))
    asyncio.run(create_topic(kafka, topic + ".dlq", 1))
    port = free_port()
    gateway = services(
        "gateway",
        ["gateway", "--nats", nats, "--port", str(port), "--workers", "1", "--auth", "off"]
        + ["--subject-prefix", prefix, *history, "--metrics-port", str(gateway_metrics_port)],
    )
    services(
        "ingest",
        ["ingest", "--kafka", kafka, "--nats", nats, "--topic", topic, "--group", unique("g")]
        + ["--window-ms", str(window_ms), "--subject-prefix", prefix, *history]
        + ["--metrics-port", str(ingest_metrics_port)],
    )
    wait_http_ok(f"http://127.0.0.1:{port}/readyz", gateway)
    return topic, port


def scrape(metrics_url: str, name: str) -> float:
    """A series from a /metrics endpoint, summed over its other labels: `name` or
    `name{label="v",...}`."""
    import re

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"{metrics_url}/metrics", timeout=5).read().decode()
    base, _, selector = name.partition("{")
    wanted = dict(re.findall(r'(\w+)="([^"]*)"', selector))
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == base and wanted.items() <= s.labels.items()
    )


def run_node_tests(folder: Path, files: list[str], env: dict[str, str], timeout: float) -> None:
    """`node --test FILES` in `folder`; fails with node's whole report unless every test passed.

    Node runs each file in a child process of its own: on timeout the whole group is killed."""
    proc = subprocess.Popen(
        ["node", "--test", "--test-reporter=spec", *files],
        cwd=folder,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"node --test still running after {timeout} s:\n{out}") from None
    assert proc.returncode == 0, f"node --test failed ({proc.returncode}):\n{out}"
