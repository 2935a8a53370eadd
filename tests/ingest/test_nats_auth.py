"""Ingest against a nats-server that wants a token: the wrong one is a clear error in the log,
the right one gets its stream created and an event through to JetStream. And the NATS permissions
docs/security.md gives ingest and gateways: enough for blobs to flow, and no more."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import nats
from aiokafka import AIOKafkaProducer
from nats.aio.msg import Msg
from websockets.asyncio.client import connect as ws_connect

from roomcast.devstack.nats import nats_server_binary
from tests.support import Service, create_topic, free_port, unique, wait_http_ok

TOKEN = "nats-token-ok"


async def stream_exists(url: str, stream: str) -> bool:
    nc = await nats.connect(url, token=TOKEN)
    try:
        try:
            await nc.jetstream().stream_info(stream)
            return True
        except nats.js.errors.NotFoundError:
            return False
    finally:
        await nc.close()


def test_ingest_nats_token(
    kafka_bootstrap: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    port = free_port()
    log = (tmp_path / "nats.log").open("wb")
    server = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js",
         "-sd", str(tmp_path / "js"), "--auth", TOKEN],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"nats://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        topic = unique("natsauth")
        asyncio.run(create_topic(kafka_bootstrap, topic, 1))
        asyncio.run(create_topic(kafka_bootstrap, topic + ".dlq", 1))
        stream = unique("S").replace("-", "_")

        def ingest(name: str, token: str) -> Service:
            return services(
                name,
                ["ingest", "--kafka", kafka_bootstrap, "--nats", url, "--topic", topic,
                 "--group", unique("g"), "--stream", stream, "--metrics-port", "0",
                 "--subject-prefix", stream.lower(), "--history-prefix", f"{stream.lower()}_h",
                 "--nats-token", token],
            )  # fmt: skip

        wrong = ingest("ingest-wrong", "not-the-token")
        deadline = time.monotonic() + 30
        while "authorization violation" not in wrong.log_path.read_text().lower():
            assert time.monotonic() < deadline, wrong.log_tail()
            time.sleep(0.2)
        assert not asyncio.run(stream_exists(url, stream))
        wrong.stop()

        good = ingest("ingest", TOKEN)
        deadline = time.monotonic() + 30
        while not asyncio.run(stream_exists(url, stream)):
            assert time.monotonic() < deadline, good.log_tail()
            time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(10)
        log.close()


# ---- the permissions docs/security.md gives each service ---------------------------------------

SECURITY_MD = Path(__file__).parents[2] / "docs" / "security.md"
STREAM, ROOM = "ROOMCAST_ROOMS", "perm"
PASSWORDS = {"roomcast-ingest": "ingest-pw", "roomcast-gateway": "gateway-pw"}


def documented_authorization() -> str:
    """The nats-server `authorization` block of docs/security.md, as an operator copies it."""
    blocks = [b for b in re.findall(r"```\n(.*?)```", SECURITY_MD.read_text(), re.S)
              if b.startswith("# nats-server authorization for roomcast")]  # fmt: skip
    assert len(blocks) == 1, "docs/security.md has no nats-server authorization block"
    return blocks[0]


async def until(what: str, ok: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.05)


async def as_the_documented_users(
    url: str, kafka: str, topic: str, gateway_port: int
) -> tuple[int, list[int]]:
    """Blobs through ingest, the stream and a gateway; the gateway user's reads; the refusals.
    Returns the history's epoch and the two blobs' sequences."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    gw = await nats.connect(url, user="roomcast-gateway", password=PASSWORDS["roomcast-gateway"],
                            error_cb=on_error)  # fmt: skip
    ing = await nats.connect(url, user="roomcast-ingest", password=PASSWORDS["roomcast-ingest"],
                             error_cb=on_error)  # fmt: skip
    try:
        blobs: list[Msg] = []
        counts: list[Msg] = []

        async def on_blob(msg: Msg) -> None:
            blobs.append(msg)

        async def on_count(msg: Msg) -> None:
            counts.append(msg)

        await gw.subscribe(f"roomcast.room.{ROOM}", cb=on_blob)
        await gw.subscribe("roomcast.counts", cb=on_count)
        await gw.flush()
        async with ws_connect(f"ws://127.0.0.1:{gateway_port}/ws?room={ROOM}") as viewer:
            assert json.loads(await viewer.recv())["type"] == "joined"
            producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
            await producer.start()
            try:
                for n in (1, 2):
                    await producer.send_and_wait(topic, b'{"n":%d}' % n, key=ROOM.encode())
            finally:
                await producer.stop()
            got: list[dict[str, object]] = []
            while len(got) < 2:  # ingest published, the stream republished, the gateway sent
                try:
                    msg = json.loads(await asyncio.wait_for(viewer.recv(), 60))
                except TimeoutError:
                    raise AssertionError(f"the viewer got {len(got)} of 2 blobs") from None
                if msg["type"] == "blob":
                    got.append(msg)
            assert [m["events"] for m in got] == [[{"n": 1}], [{"n": 2}]]
        await until("both blobs on the gateways' subject", lambda: len(blobs) == 2)
        seqs = [int((m.headers or {})["Nats-Sequence"]) for m in blobs]
        assert [(m.headers or {})["Nats-Last-Sequence"] for m in blobs] == ["0", str(seqs[0])]
        # The gateway read the stream's epoch and gave the viewer each blob's history position.
        assert [(m["seq"], m["prev"]) for m in got] == [(seqs[0], 0), (seqs[1], seqs[0])], got
        assert all(isinstance(m["epoch"], int) and m["epoch"] > 0 for m in got), got

        # A gateway reads the history: the stream's info, direct gets by sequence and by subject.
        js = gw.jetstream()
        assert (await js.stream_info(STREAM)).state.messages == 2
        history = f"roomcast.history.{ROOM}"
        last = await js.get_last_msg(STREAM, history, direct=True)
        after_first = await js.get_msg(STREAM, seq=seqs[0] + 1, subject=history, next=True,
                                       direct=True)  # fmt: skip
        by_seq = await js.get_msg(STREAM, seq=seqs[0], direct=True)
        assert (last.seq, after_first.seq, by_seq.seq) == (seqs[1], seqs[1], seqs[0])
        assert by_seq.data == blobs[0].data and last.data == blobs[1].data
        await gw.publish("roomcast.counts", b"{}")  # viewer counts: published and heard
        await until("the count heard", lambda: len(counts) == 1)

        # Neither may put a blob where gateways listen, nor a gateway into the history.
        assert not errors, errors
        await gw.publish(f"roomcast.room.{ROOM}", b"{}")
        await gw.publish(history, b"{}")
        await ing.publish(f"roomcast.room.{ROOM}", b"{}")
        await gw.flush()
        await ing.flush()
        await until("three refusals", lambda: len(errors) == 3)
        assert all("permissions violation for publish" in e.lower() for e in errors), errors
        await gw.flush()
        assert len(blobs) == 2 and (await js.stream_info(STREAM)).state.messages == 2
        return int(str(got[0]["epoch"])), seqs
    finally:
        await gw.close()
        await ing.close()


async def resume_from_the_history(gateway_port: int, epoch: int, seqs: list[int]) -> None:
    """A gateway that has nothing of the room in memory reads what the viewer missed from the
    history (direct gets) under the gateway user's permissions."""
    since = f"{ROOM}:{epoch}:{seqs[0]}"
    async with ws_connect(f"ws://127.0.0.1:{gateway_port}/ws?room={ROOM}&since={since}") as viewer:
        joined = json.loads(await asyncio.wait_for(viewer.recv(), 30))
        assert joined == {"type": "joined", "room": ROOM, "recovered": True}, joined
        blob = json.loads(await asyncio.wait_for(viewer.recv(), 30))
        assert (blob["type"], blob["seq"], blob["prev"]) == ("blob", seqs[1], seqs[0]), blob
        assert blob["events"] == [{"n": 2}]


def test_the_documented_nats_permissions_carry_blobs_and_refuse_the_rest(
    kafka_bootstrap: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    """docs/security.md's nats-server block, as is: ingest (publishing only on the history subjects
    and to its stream's API) creates the stream and stores blobs, the stream republishes them to a
    gateway that may only subscribe there, read the history (a resume served from it) and share
    counts; neither may publish a blob where gateways listen."""
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
        + documented_authorization()
    )
    env = {**os.environ, "ROOMCAST_INGEST_NATS_PASSWORD": PASSWORDS["roomcast-ingest"],
           "ROOMCAST_GATEWAY_NATS_PASSWORD": PASSWORDS["roomcast-gateway"]}  # fmt: skip
    log = (tmp_path / "nats.log").open("wb")
    server = subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=log,
                              stderr=subprocess.STDOUT, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "nats.log").read_text()
                assert time.monotonic() < deadline
                time.sleep(0.05)
        url = f"nats://127.0.0.1:{port}"
        topic = unique("natsperm")
        asyncio.run(create_topic(kafka_bootstrap, topic, 1))
        asyncio.run(create_topic(kafka_bootstrap, topic + ".dlq", 1))
        user = ["--nats-user", "roomcast-ingest", "--nats-password", PASSWORDS["roomcast-ingest"]]
        ingest = services(
            "ingest",
            ["ingest", "--kafka", kafka_bootstrap, "--nats", url, "--topic", topic,
             "--group", unique("g"), "--metrics-port", "0", "--window-ms", "0", *user],
        )  # fmt: skip
        gateway_port = free_port()
        user = ["--nats-user", "roomcast-gateway", "--nats-password", PASSWORDS["roomcast-gateway"]]
        gateway = services(
            "gateway",
            ["gateway", "--nats", url, "--port", str(gateway_port), "--workers", "1",
             "--auth", "off", "--metrics-port", "0", *user],
        )  # fmt: skip
        wait_http_ok(f"http://127.0.0.1:{gateway_port}/readyz", gateway)
        flow = as_the_documented_users(url, kafka_bootstrap, topic, gateway_port)
        epoch, seqs = asyncio.run(flow)
        late_port = free_port()
        late = services(
            "gateway-late",
            ["gateway", "--nats", url, "--port", str(late_port), "--workers", "1",
             "--auth", "off", "--metrics-port", "0", *user],
        )  # fmt: skip
        wait_http_ok(f"http://127.0.0.1:{late_port}/readyz", late)
        asyncio.run(resume_from_the_history(late_port, epoch, seqs))
        for svc in (ingest, gateway, late):
            assert "violation" not in svc.log_path.read_text().lower(), svc.log_tail()
    finally:
        server.terminate()
        server.wait(10)
        log.close()
