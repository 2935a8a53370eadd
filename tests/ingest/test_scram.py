"""Kafka SASL/SCRAM against a real broker: the devstack's KRaft node with a SCRAM listener.

The right credentials carry an event from `roomcast produce` through ingest to a viewer; a
wrong password is a clear error from both, and nothing gets through with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from roomcast.devstack.kafka import LocalKafka
from tests.support import Service, free_port, unique, wait_http_ok

USER, PASSWORD = "roomcast", "scram-pass-ok"


@pytest.fixture(scope="module")
def scram_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    topics = {"scram.events": 2, "scram.events.dlq": 1}
    with LocalKafka(
        tmp_path_factory.mktemp("scram-kafka"), topics=topics, heap="384m",
        scram_users={USER: PASSWORD},
    ) as kafka:  # fmt: skip
        yield kafka


def sasl(mechanism: str) -> list[str]:
    return ["--kafka-security-protocol", "SASL_PLAINTEXT", "--kafka-sasl-mechanism", mechanism,
            "--kafka-sasl-username", USER]  # fmt: skip


def produce(kafka: LocalKafka, password: str, mechanism: str, event: str, room: str,
            ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "roomcast.cli", "produce", "--kafka", kafka.sasl_bootstrap,
         "--topic", "scram.events", "--room", room, *sasl(mechanism), event],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "ROOMCAST_PRODUCE_KAFKA_SASL_PASSWORD": password},
    )  # fmt: skip


def test_scram_produce_and_ingest(
    scram_kafka: LocalKafka,
    nats_url: str,
    services: Callable[..., Service],
    tmp_path: Path,
) -> None:
    refused = produce(scram_kafka, "wrong", "SCRAM-SHA-256", '{"n":0}', "scram-room")
    assert refused.returncode == 3, refused  # a Kafka problem (--help: exit codes)
    assert "Authentication" in refused.stderr or "authentication" in refused.stderr, refused.stderr

    prefix = unique("scram").replace("-", "_")
    stream = unique("S").replace("-", "_")  # one stream for the prefix's subjects
    history = ["--history-prefix", f"{prefix}_history", "--stream", stream]
    port = free_port()
    gw = services(
        "gateway",
        ["gateway", "--nats", nats_url, "--port", str(port), "--workers", "1", "--auth", "off",
         "--subject-prefix", prefix, *history, "--metrics-port", "0"],
    )  # fmt: skip
    wait_http_ok(f"http://127.0.0.1:{port}/readyz", gw)

    def ingest(name: str, password: str) -> Service:
        return services(
            name,
            ["ingest", "--kafka", scram_kafka.sasl_bootstrap, "--nats", nats_url,
             "--topic", "scram.events", "--group", unique("g"), "--subject-prefix", prefix,
             *history, "--metrics-port", "0",
             "--window-ms", "50", *sasl("SCRAM-SHA-512"),
             "--kafka-sasl-password", password],
        )  # fmt: skip

    wrong = ingest("ingest-wrong", "wrong")
    deadline = time.monotonic() + 30
    while "authentication" not in wrong.log_path.read_text().lower():
        assert time.monotonic() < deadline, wrong.log_tail()
        assert wrong.proc.poll() is None or "authentication" in wrong.log_tail().lower()
        time.sleep(0.2)
    wrong.stop()

    good = ingest("ingest", PASSWORD)
    with connect(f"ws://127.0.0.1:{port}/ws?room=scram-room", compression=None) as viewer:
        assert json.loads(viewer.recv(timeout=10)) == {"type": "joined", "room": "scram-room"}
        ok = produce(scram_kafka, PASSWORD, "SCRAM-SHA-256", '{"n":1}', "scram-room")
        assert ok.returncode == 0 and "produced 1 event" in ok.stderr, ok
        deadline = time.monotonic() + 60
        while True:  # the refused event was never written; the good one arrives
            blob = json.loads(viewer.recv(timeout=max(0.1, deadline - time.monotonic())))
            if blob["type"] == "blob":
                assert blob["events"] == [{"n": 1}], blob
                break
    assert "authentication" not in good.log_path.read_text().lower(), good.log_tail()
