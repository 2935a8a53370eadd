"""Session-wide real brokers for the whole suite.

Order, per broker: ROOMCAST_KAFKA / ROOMCAST_NATS if set (an existing broker); else testcontainers
where a Docker daemon answers; else real processes started here (roomcast.devstack). Each broker
starts once per session, and only when a test asks for it: the pure core tests need none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from roomcast.devstack import LocalKafka, LocalNats
from tests.support import Service, unique


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def broker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("brokers")


@pytest.fixture(scope="session")
def nats_url(broker_dir: Path) -> Iterator[str]:
    if url := os.environ.get("ROOMCAST_NATS"):
        yield url
        return
    if _docker_answers():
        from testcontainers.nats import NatsContainer

        with NatsContainer("nats:2.15").with_command("-js") as container:
            yield container.nats_uri()
        return
    with LocalNats(broker_dir / "nats") as nats:
        yield nats.url


@pytest.fixture(scope="session")
def kafka_bootstrap(broker_dir: Path) -> Iterator[str]:
    if bootstrap := os.environ.get("ROOMCAST_KAFKA"):
        yield bootstrap
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.3.1").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    with LocalKafka(broker_dir / "kafka", topics={}) as kafka:
        yield kafka.bootstrap


@pytest.fixture
def kafka_topic(kafka_bootstrap: str) -> Callable[..., str]:
    """Create a fresh topic: `kafka_topic(partitions=8, dlq=True)` -> its name."""

    def create(partitions: int = 8, dlq: bool = True, prefix: str = "t") -> str:
        import asyncio

        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        name = unique(prefix)

        async def go() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
            await admin.start()
            try:
                topics = [NewTopic(name, partitions, 1)]
                if dlq:
                    topics.append(NewTopic(name + ".dlq", 1, 1))
                await admin.create_topics(topics)
            finally:
                await admin.close()

        # A thread of its own: callers may be async tests with a running loop.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, go()).result()
        return name

    return create


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[LocalNats]:
    """A nats-server of this test's own, which the test may stop and start (same port, data)."""
    nats = LocalNats(tmp_path / "nats").start()
    yield nats
    with contextlib.suppress(Exception):
        nats.stop()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start roomcast subcommands as subprocesses; all are stopped (SIGTERM) after the test."""
    started: list[Service] = []

    def start(name: str, args: list[str], open_files: int | None = None) -> Service:
        svc = Service(name, args, tmp_path, open_files)
        started.append(svc)
        return svc

    yield start
    for svc in reversed(started):
        svc.stop()


NODE_TESTS = Path(__file__).parent / "node"


@pytest.fixture(scope="session")
def node_tests() -> Path:
    """tests/node with its locked dependencies (`ws`) installed: Node's peer of browsers."""
    assert shutil.which("node") and shutil.which("npm"), "Node.js and npm run the Node tests"
    if not (NODE_TESTS / "node_modules" / "ws").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_TESTS, check=True,
                       capture_output=True, timeout=300)  # fmt: skip
    return NODE_TESTS
