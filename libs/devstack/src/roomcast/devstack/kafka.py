"""A real Apache Kafka 4.3.1 broker (KRaft, single node) started from jars Maven resolves.

The jars come from Maven Central through `kafka/pom.xml`; the resolved classpath is cached in
~/.cache/roomcast (keyed by the pom's hash) and Maven keeps the jars in ~/.m2, so only the first
start on a machine downloads anything.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import time
import uuid
from importlib import resources
from pathlib import Path
from types import TracebackType

from roomcast.devstack.process import (
    BrokerError,
    ManagedProcess,
    check_port_free,
    free_ports,
    wait_for_port,
)

KAFKA_VERSION = "4.3.1"
DEFAULT_TOPIC = "roomcast.events"
DEFAULT_PARTITIONS = 8
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "roomcast"


def _resource(name: str) -> Path:
    return Path(str(resources.files("roomcast.devstack") / "kafka" / name))


def java_binary() -> str:
    """Java 17 or newer, from JAVA_HOME or the PATH."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise BrokerError(
            "Java not found: Kafka needs Java 17 or newer"
            " (`apt-get install openjdk-17-jre-headless`, or set JAVA_HOME)"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(m.group(1)) if m else 0
    if major == 1 and m and m.group(2):  # "1.8.0" style
        major = int(m.group(2))
    if major < 17:
        raise BrokerError(f"Kafka {KAFKA_VERSION} needs Java 17 or newer; {java} is: {out.strip()}")
    return java


def kafka_classpath() -> str:
    """The broker's classpath, resolved by Maven once and cached."""
    pom = _resource("pom.xml")
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
    cached = CACHE_DIR / f"kafka-classpath-{digest}.txt"
    if cached.exists():
        cp = cached.read_text().strip()
        if cp and all(Path(j).exists() for j in cp.split(os.pathsep)):
            return cp
    mvn = shutil.which("mvn")
    if not mvn:
        raise BrokerError(
            "Maven (mvn) not found: it resolves Kafka's jars from Maven Central"
            " (`apt-get install maven`)"
        )
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    out_file = cached.with_suffix(".tmp")
    proc = subprocess.run(
        [mvn, "-B", "-q", "-f", str(pom), "dependency:build-classpath",
         f"-Dmdep.outputFile={out_file}"],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0 or not out_file.exists():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise BrokerError(
            f"Maven could not resolve Kafka {KAFKA_VERSION}'s jars (is Maven Central reachable?):"
            f"\n{tail}"
        )
    out_file.replace(cached)
    return cached.read_text().strip()


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


class LocalKafka:
    """One KRaft node (broker + controller) on loopback, with the topics it is asked for."""

    def __init__(
        self,
        state_dir: Path | str,
        port: int | None = None,
        topics: dict[str, int] | None = None,
        timeout: float = 90,
        heap: str = "768m",
        scram_users: dict[str, str] | None = None,
        controller_port: int | None = None,
        node_id: int = 1,
        voters: str | None = None,
        cluster_id: str | None = None,
        replication: int = 1,
    ) -> None:
        self.state_dir = Path(state_dir)
        picked = free_ports(2)
        self.port = port or picked[0]
        self.controller_port = controller_port or (
            picked[1] if picked[1] != self.port else picked[0]
        )
        # A member of a cluster (`LocalKafkaCluster`): its id, every controller (`ID@HOST:PORT`,
        # comma-separated), the cluster's id, and the replication its internal topics get.
        self.node_id = node_id
        self.voters = voters or f"{node_id}@127.0.0.1:{self.controller_port}"
        self.cluster_id = cluster_id or _cluster_id()
        self.replication = replication
        self.topics = {DEFAULT_TOPIC: DEFAULT_PARTITIONS} if topics is None else topics
        self.timeout = timeout
        self.heap = heap
        self._proc: ManagedProcess | None = None
        # With users: a second listener, SASL_PLAINTEXT with SCRAM-SHA-256/512, whose
        # credentials are written into the metadata when the storage is formatted.
        self.scram_users = scram_users or {}
        self.sasl_port = free_ports(3)[2] if self.scram_users else 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        """The SASL_PLAINTEXT (SCRAM) listener, when the broker was given `scram_users`."""
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def process(self) -> ManagedProcess | None:
        """The broker's JVM once started (its exit status, its log since it started)."""
        return self._proc

    @property
    def log_path(self) -> Path:
        return self.state_dir / "kafka.log"

    def _write_config(self) -> Path:
        data = self.state_dir / "data"
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": str(DEFAULT_PARTITIONS),
            # One node: no replication, and no waiting for members that will never come.
            # In a cluster, internal topics on every member, and a write needs two of three.
            "offsets.topic.replication.factor": str(self.replication),
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": str(self.replication),
            "transaction.state.log.min.isr": str(min(2, self.replication)),
            "share.coordinator.state.topic.replication.factor": str(self.replication),
            "share.coordinator.state.topic.min.isr": str(min(2, self.replication)),
            "default.replication.factor": str(self.replication),
            "min.insync.replicas": str(min(2, self.replication)),
            "group.initial.rebalance.delay.ms": "0",
            # After a kill -9 the restarted node must wait for its old registration's session
            # to expire before it serves (9 s by default): keep that short on one machine.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
            # Topics are created on purpose (with their partition counts), never by a typo.
            "auto.create.topics.enable": "false",
            "log.retention.hours": "24",
        }
        if self.scram_users:
            sasl = f"SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}"
            props["listeners"] += "," + sasl
            props["advertised.listeners"] += "," + sasl
            props["listener.security.protocol.map"] += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
            props["sasl.enabled.mechanisms"] = "SCRAM-SHA-256,SCRAM-SHA-512"
            login = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            for mech in ("scram-sha-256", "scram-sha-512"):
                props[f"listener.name.sasl_plaintext.{mech}.sasl.jaas.config"] = login
        path = self.state_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def start(self) -> LocalKafka:
        self.launch()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        """Until the broker listens and has the topics it was asked for."""
        assert self._proc is not None
        wait_for_port(self.port, self._proc, self.timeout)
        if self.topics:
            deadline = time.monotonic() + self.timeout
            asyncio.run(self._create_topics(self.topics, deadline))

    def launch(self) -> None:
        """Format the storage (first time only) and start the JVM; `wait_ready` waits for it."""
        check_port_free(self.port, "Kafka", "--kafka-port")
        java = java_binary()
        classpath = kafka_classpath()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        jvm = [
            java,
            f"-Xmx{self.heap}",
            "-Xms256m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={_resource('log4j2.properties')}",
            "-cp",
            classpath,
        ]
        if not (self.state_dir / "data" / "meta.properties").exists():
            scram = [
                a
                for user, password in self.scram_users.items()
                for mech in ("SCRAM-SHA-256", "SCRAM-SHA-512")
                for a in ("--add-scram", f"{mech}=[name={user},password={password}]")
            ]
            fmt = subprocess.run(
                jvm + ["kafka.tools.StorageTool", "format", f"--cluster-id={self.cluster_id}",
                       "--config", str(config), *scram],
                capture_output=True, text=True,
            )  # fmt: skip
            if fmt.returncode != 0:
                raise BrokerError(
                    f"formatting Kafka storage in {self.state_dir} failed:\n"
                    + "\n".join((fmt.stdout + fmt.stderr).splitlines()[-25:])
                )
        name = "kafka" if self.node_id == 1 and "," not in self.voters else f"kafka-{self.node_id}"
        self._proc = ManagedProcess(name, jvm + ["kafka.Kafka", str(config)], self.log_path)
        self._proc.start()

    async def _create_topics(self, topics: dict[str, int], deadline: float) -> None:
        await _create_topics(
            self.bootstrap, topics, deadline, self._proc, self.log_path, self.replication
        )

    def create_topic(self, name: str, partitions: int = DEFAULT_PARTITIONS) -> str:
        asyncio.run(self._create_topics({name: partitions}, time.monotonic() + self.timeout))
        return name

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(timeout=20)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


async def _create_topics(
    bootstrap: str,
    topics: dict[str, int],
    deadline: float,
    proc: ManagedProcess | None = None,
    log_path: Path | None = None,
    replication: int = 1,
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError

    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            break
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = [NewTopic(t, n, replication) for t, n in topics.items() if t not in existing]
            if wanted:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(wanted)
            return
        except (KafkaError, OSError) as exc:
            last = exc
        finally:
            await admin.close()
        await asyncio.sleep(0.3)
    tail = f"; last lines of {log_path}:\n{proc.log_tail()}" if proc and log_path else ""
    raise BrokerError(f"Kafka at {bootstrap} did not answer in time ({last}){tail}")


class LocalKafkaCluster:
    """`size` KRaft nodes, each broker and controller, on loopback: one cluster.

    Every node is a voter of the controller quorum, with its own ports and data directory;
    internal topics and `topics` get `size` replicas (at most 3) and need two in sync to take a
    write. Any one node can be stopped and started again (same ports, same data).
    """

    def __init__(
        self,
        state_dir: Path | str,
        size: int = 3,
        topics: dict[str, int] | None = None,
        timeout: float = 120,
        heap: str = "512m",
    ) -> None:
        ports = free_ports(2 * size)
        voters = ",".join(f"{i + 1}@127.0.0.1:{ports[size + i]}" for i in range(size))
        cluster_id = _cluster_id()
        self.topics = {DEFAULT_TOPIC: DEFAULT_PARTITIONS} if topics is None else topics
        self.replication = min(3, size)
        self.nodes = [
            LocalKafka(
                Path(state_dir) / f"k{i + 1}",
                port=ports[i],
                controller_port=ports[size + i],
                topics={},
                timeout=timeout,
                heap=heap,
                node_id=i + 1,
                voters=voters,
                cluster_id=cluster_id,
                replication=self.replication,
            )
            for i in range(size)
        ]
        self.timeout = timeout

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    def start(self) -> LocalKafkaCluster:
        try:
            for node in self.nodes:  # all at once: a node waits for a quorum of the others
                node.launch()
            for node in self.nodes:
                node.wait_ready()
            proc = self.nodes[0].process
            asyncio.run(
                _create_topics(
                    self.bootstrap,
                    self.topics,
                    time.monotonic() + self.timeout,
                    proc,
                    self.nodes[0].log_path,
                    self.replication,
                )
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def alive(self) -> bool:
        return all(n.alive() for n in self.nodes)

    def __enter__(self) -> LocalKafkaCluster:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def ensure_topics(bootstrap: str, topics: dict[str, int], timeout: float = 30) -> None:
    """Create those of `topics` (name -> partitions) that a running Kafka does not have yet."""
    asyncio.run(_create_topics(bootstrap, topics, time.monotonic() + timeout))
