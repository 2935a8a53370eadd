"""`roomcast dev` as a person runs it: everything starts, the demo shows up, Ctrl-C stops it all.

This one starts its own NATS and Kafka (as `make dev` does), on free ports, whatever the
session's brokers are: the local-broker path is what a fresh machine runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil

from tests.support import ROOMCAST, free_port


def _ports_free(*ports: int) -> bool:
    busy = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == "LISTEN"}
    return not busy.intersection(ports)


def test_dev_runs_the_demo_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    nats_port, kafka_port, port, chat_port = free_port(), free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("ROOMCAST_KAFKA", "ROOMCAST_NATS")}
    log = (tmp_path / "dev.out").open("wb")
    dev = subprocess.Popen(
        [
            *ROOMCAST,
            "dev",
            "--state-dir",
            str(tmp_path / "state"),
            "--nats-port",
            str(nats_port),
            "--kafka-port",
            str(kafka_port),
            "--port",
            str(port),
            "--ingest-metrics-port",
            str(free_port()),  # not 9464: another stack on this machine may hold it
            "--gateway-metrics-port",
            str(free_port()),
            "--chat-port",
            str(chat_port),
            "--rate",
            "40",
            "--window-ms",
            "300",
            "--duration",
            "240",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 180
        while b"Ctrl-C stops everything" not in (tmp_path / "dev.out").read_bytes():
            assert dev.poll() is None, (tmp_path / "dev.out").read_text()
            assert time.monotonic() < deadline, (tmp_path / "dev.out").read_text()
            time.sleep(0.2)
        out = (tmp_path / "dev.out").read_text()
        assert f"ws://127.0.0.1:{port}/ws" in out and "roomcast watch demo-1" in out
        # The first thing it says is where the page is; the page it serves has the chat box.
        assert out.splitlines()[0].startswith(f"demo page: http://127.0.0.1:{port}/?room=demo-1")
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert f'content="http://127.0.0.1:{chat_port}/chat"' in page

        watch = subprocess.run(
            [
                *ROOMCAST,
                "watch",
                "demo-1",
                "--url",
                f"ws://127.0.0.1:{port}/ws",
                "--events",
                "--count",
                "5",
                "--timeout",
                "60",
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert watch.returncode == 0, watch.stderr
        lines = watch.stdout.splitlines()
        assert len(lines) == 5
        for line in lines:  # "<time> demo-1 p<partition>@<offset> <event JSON>"
            assert " demo-1 " in line
            json.loads(line[line.index("{") :])

        # The chat box's endpoint writes to Kafka: the line comes back to a viewer of the room.
        chat_room = "chat-check"
        watcher = subprocess.Popen(
            [*ROOMCAST, "watch", chat_room, "--url", f"ws://127.0.0.1:{port}/ws", "--events"]
            + ["--count", "1", "--timeout", "60"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            body = json.dumps({"room": chat_room, "user": "me", "text": "typed in the page"})
            request = urllib.request.Request(
                f"http://127.0.0.1:{chat_port}/chat",
                body.encode(),
                {"Content-Type": "application/json"},
            )
            deadline = time.monotonic() + 60
            while watcher.poll() is None:  # until the watcher (joined at some point) has it
                assert time.monotonic() < deadline
                with urllib.request.urlopen(request, timeout=10) as resp:
                    assert resp.status == 200
                with contextlib.suppress(subprocess.TimeoutExpired):
                    watcher.wait(1)
            out_line = watcher.stdout.read() if watcher.stdout else ""
            assert watcher.returncode == 0 and '"text":"typed in the page"' in out_line
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()

        dev.send_signal(signal.SIGINT)  # what Ctrl-C does
        assert dev.wait(90) == 0, (tmp_path / "dev.out").read_text()
    finally:
        if dev.poll() is None:
            dev.kill()
        log.close()
    # Brokers, ingest and gateway are all gone: nothing listens on their ports any more.
    deadline = time.monotonic() + 10
    while not _ports_free(nats_port, kafka_port, port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ports_free(nats_port, kafka_port, port)
    assert "stopping" in (tmp_path / "dev.out").read_text()
