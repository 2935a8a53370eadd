"""`roomcast produce` and `roomcast watch` as a person runs them, in two terminals."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

from tests.support import ROOMCAST, Service, start_pipeline, unique


def test_produce_then_watch_shows_the_events(
    kafka_bootstrap: str, nats_url: str, services: Callable[[str, list[str]], Service]
) -> None:
    topic, port = start_pipeline(
        services, kafka_bootstrap, nats_url, name="cli", partitions=4, window_ms=300
    )
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
        said = [watch.stderr.readline() for _ in range(2)]  # "connecting to ...", "watching ..."
        assert said[0].startswith("connecting to ") and "watching" in said[1], said
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
