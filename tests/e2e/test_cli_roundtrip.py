"""`roomcast produce` and `roomcast watch` as a person runs them, in two terminals."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable

from tests.e2e.test_pipeline import create_topic
from tests.support import ROOMCAST, Service, free_port, unique, wait_http_ok


def test_produce_then_watch_shows_the_events(
    kafka_bootstrap: str, nats_url: str, services: Callable[[str, list[str]], Service]
) -> None:
    topic, prefix = unique("cli"), unique("cli").replace("-", "_")
    asyncio.run(create_topic(kafka_bootstrap, topic, 4))
    asyncio.run(create_topic(kafka_bootstrap, topic + ".dlq", 1))
    port = free_port()
    gateway = services(
        "gateway",
        [
            "gateway",
            "--nats",
            nats_url,
            "--port",
            str(port),
            "--workers",
            "1",
            "--subject-prefix",
            prefix,
        ],
    )
    services(
        "ingest",
        [
            "ingest",
            "--kafka",
            kafka_bootstrap,
            "--nats",
            nats_url,
            "--topic",
            topic,
            "--group",
            unique("g"),
            "--window-ms",
            "300",
            "--subject-prefix",
            prefix,
            "--stream",
            unique("S").replace("-", "_"),
            "--metrics-port",
            "0",
        ],
    )
    wait_http_ok(f"http://127.0.0.1:{port}/healthz", gateway)
    room = unique("lobby")
    watch = subprocess.Popen(
        ROOMCAST
        + [
            "watch",
            room,
            "--url",
            f"ws://127.0.0.1:{port}/ws",
            "--events",
            "--count",
            "3",
            "--timeout",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Like a person: produce once watch says it is watching.
        assert watch.stderr is not None
        assert "watching" in watch.stderr.readline()
        # One event as an argument, then two on stdin, like a shell pipeline.
        subprocess.run(
            ROOMCAST
            + [
                "produce",
                "--room",
                room,
                "--kafka",
                kafka_bootstrap,
                "--topic",
                topic,
                '{"text":"hi"}',
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        done = subprocess.run(
            ROOMCAST + ["produce", "--room", room, "--kafka", kafka_bootstrap, "--topic", topic],
            input='{"n":1}\n{"n":2}\n',
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "produced 2 events" in done.stderr
        out, err = watch.communicate(timeout=70)
    finally:
        watch.kill()
    assert watch.returncode == 0, err
    lines = out.splitlines()
    events = [json.loads(line.split(" ", 3)[3]) for line in lines]
    assert events == [{"text": "hi"}, {"n": 1}, {"n": 2}], out
    assert all(f" {room} p" in line for line in lines)


def test_produce_rejects_bad_json_and_bad_rooms_clearly(kafka_bootstrap: str) -> None:
    bad = subprocess.run(
        ROOMCAST + ["produce", "--room", "ok", "--kafka", kafka_bootstrap, "{nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "event 1: event is not valid JSON" in bad.stderr
    room = subprocess.run(
        ROOMCAST + ["produce", "--room", "a.b", "--kafka", kafka_bootstrap, "{}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert room.returncode == 2 and "has the character '.'" in room.stderr
