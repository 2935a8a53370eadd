"""`roomcast bench chaos`: a roomcast cluster on loopback, faults under load, every event checked.

`ChaosCluster` starts, all real: Kafka (KRaft), a NATS cluster of 3 with JetStream (the stream
at 3 replicas), 2 ingest processes in one consumer group and 2 gateway processes with 2
workers each, every service given the list of NATS URLs. A scenario (`SCENARIOS`) puts it under
steady load: a producer numbering every event per room (`Producer`), viewers spread over both
gateways, some in several rooms, resuming on every reconnect (`chaosviewers`); after a calm
phase it injects one fault, heals it, lets the load run on and the pipeline drain, and then the
checker (`checker`) says, per viewer and room, what was lost, duplicated or out of order. The
cluster is shared by the scenarios and healed between them; each scenario has rooms of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from roomcast.bench import stack
from roomcast.bench.chaosviewers import ViewerProcesses, ViewerSpec
from roomcast.bench.checker import Latencies, percentile, summarize
from roomcast.core.rooms import SUBJECT_PREFIX
from roomcast.devstack import LocalKafkaCluster, LocalNats, LocalNatsCluster
from roomcast.devstack.process import BrokerError, ManagedProcess

TOPIC = "roomcast.events"
STREAM = "ROOMCAST_ROOMS"  # ingest's default
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    """How big and how long. `SHORT` is what the test suite runs; `LONG` the documented run."""

    viewers: int = 2000  # steady viewers of each scenario
    storm_viewers: int = 10_000  # viewers of the reconnect-storm scenario
    rooms: int = 100
    rate: float = 1000.0  # events per second, over all rooms
    calm_s: float = 20.0  # steady load before the fault
    after_s: float = 20.0  # steady load after it is healed
    down_s: float = 10.0  # how long a killed process stays down
    pause_s: float = 15.0  # SIGSTOP
    slow_s: float = 10.0  # the viewer that stops reading
    viewers_per_process: int = 2000
    kafka_brokers: int = 3  # 3 KRaft nodes fit: ~370 MiB each, 0.16 cores idle for the three
    partitions: int = 8
    settle_s: float = 60.0  # bound on the drain after the producer stops
    client: str = ""  # the viewers: "sdk" (the default where it is installed) or "plain"


SHORT = Options(
    viewers=40,
    storm_viewers=300,
    rooms=8,
    rate=80.0,
    calm_s=4.0,
    after_s=3.0,
    down_s=2.0,
    pause_s=4.0,
    slow_s=4.0,
    viewers_per_process=200,
    settle_s=25.0,
)
LONG = Options()


# ---- the cluster ------------------------------------------------------------------------------


class ChaosCluster:
    """Kafka, 3 NATS nodes, 2 ingest processes, 2 gateways of 2 workers: see the module doc."""

    def __init__(
        self,
        state_dir: Path,
        partitions: int = 8,
        gateway_workers: int = 2,
        drain_s: float = 2.0,
        session_timeout_ms: int = 6000,
        progress: Progress = lambda text: None,
        nats_url_list: bool = False,
        kafka_brokers: int = 3,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.logs = self.state_dir / "logs"
        self.progress = progress
        self.kafka = LocalKafkaCluster(
            self.state_dir / "kafka",
            size=kafka_brokers,
            topics={TOPIC: partitions, TOPIC + ".dlq": 1},
        )
        self.nats = LocalNatsCluster(self.state_dir / "nats", size=3)
        urls = self.nats.urls
        if nats_url_list:
            self.nats_for = [self.nats.url] * 4
        else:
            # One seed URL each, on different nodes; the others are learnt from the cluster
            # (the servers advertise every member). Used while `--nats a,b,c` reaches nats-py
            # as one string, which it refuses ("invalid connect url option").
            self.nats_for = [urls[0], urls[1], urls[1], urls[2]]
        self.ingest: list[ManagedProcess] = []
        self.ingest_metrics: list[int] = []
        for i in range(2):
            metrics = stack.server_port()
            self.ingest_metrics.append(metrics)
            args = [
                stack.PYTHON, "-m", "roomcast.cli", "ingest",
                "--kafka", self.kafka.bootstrap,
                "--nats", self.nats_for[i],
                "--topic", TOPIC,
                "--group", "roomcast-chaos",
                "--stream-replicas", "3",
                "--session-timeout-ms", str(session_timeout_ms),
                "--metrics-port", str(metrics),
                "--log-level", "info",
            ]  # fmt: skip
            self.ingest.append(ManagedProcess(f"ingest-{i}", args, self.logs / f"ingest-{i}.log"))
        self.gateways = [
            stack.gateway(
                self.logs,
                self.nats_for[2 + i],
                SUBJECT_PREFIX,
                gateway_workers,
                extra=("--drain-seconds", str(drain_s), "--log-level", "info"),
            )
            for i in range(2)
        ]

    @property
    def gateway_ports(self) -> list[int]:
        return [g.port for g in self.gateways]

    def start(self) -> ChaosCluster:
        try:
            self.progress("[chaos] starting Kafka and NATS")
            self.nats.start()
            self.kafka.start()
            self.progress("[chaos] starting 2 ingest processes and 2 gateways")
            for p in self.ingest:
                p.start()
            for g in self.gateways:
                g.start(timeout=60)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Everything at once (a broker that waits for its peers to shut down cleanly would
        otherwise wait for each in turn); gateways and ingest first, brokers after."""
        self.resume_all()
        _parallel([g.stop for g in self.gateways] + [p.stop for p in self.ingest])
        _parallel([n.stop for n in self.kafka.nodes] + [n.stop for n in self.nats.nodes])

    def __enter__(self) -> ChaosCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe_stream(self) -> dict[str, Any]:
        """The history stream as JetStream sees it: replicas, leader, peers, epoch (created)."""
        import nats

        async def stream() -> dict[str, Any]:
            nc = await nats.connect(self.nats.urls, connect_timeout=5)
            try:
                info = await nc.jetstream().stream_info(STREAM)
                leader = info.cluster.leader if info.cluster else None
                peers = [leader] if leader else []
                if info.cluster and info.cluster.replicas:
                    peers += [r.name for r in info.cluster.replicas if r.name]
                return {
                    "stream_replicas": info.config.num_replicas,
                    "stream_leader": leader,
                    "stream_peers": peers,
                    "stream_created": str(info.created),
                    "stream_last_seq": info.state.last_seq,
                }
            finally:
                await nc.close()

        return asyncio.run(stream())

    def describe(self) -> dict[str, Any]:
        """What runs, as the brokers see it: brokers, NATS nodes, the stream's replicas."""
        return {
            "kafka_brokers": len(self.kafka.nodes),
            "nats_nodes": len(self.nats.nodes),
            **self.describe_stream(),
            "ingest_processes": len(self.ingest),
            "gateways": len(self.gateways),
            "gateway_workers": len(self.gateway_workers(0)),
        }

    def log_excerpt(self, since: float, per_file: int = 12) -> dict[str, list[str]]:
        """The services' warnings and errors logged since `since` (wall clock), per log file:
        what a report of a failed scenario needs (log lines start with HH:MM:SS)."""
        start = time.strftime("%H:%M:%S", time.localtime(since))
        out: dict[str, list[str]] = {}
        for path in sorted(self.logs.glob("*.log")):
            lines = [
                line[:300]
                for line in path.read_text(errors="replace").splitlines()
                if line[:8] >= start and (" warning " in line or " error " in line)
                and "--auth off" not in line and "--max-viewers lowered" not in line
            ]  # fmt: skip
            if lines:
                out[path.name] = lines[-per_file:]
        return out

    # -- faults' tools

    def resume_all(self) -> None:
        """SIGCONT to everything (a stopped process left behind would hang the next run)."""
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def _pids(self) -> list[int]:
        pids = [n.pid for n in self.nats.nodes] + [p.pid for p in self.ingest]
        pids += [n.pid for n in self.kafka.nodes if n.pid]
        for g in self.gateways:
            pids += [p.pid for p in g.processes()]
        return [p for p in pids if p]

    def heal(self) -> None:
        """Whatever a fault left down or stopped runs again; NATS healthy, gateways ready."""
        self.resume_all()
        for node in self.nats.nodes:
            if not node.alive():
                node.stop()
                node.start()
        self.nats.wait_healthy(60)
        for broker in self.kafka.nodes:
            if not broker.alive():
                broker.stop()
                broker.start()
        for p in self.ingest:
            if not p.alive():
                p.stop()
                p.start()
        for g in self.gateways:
            if not all(p.alive() for p in g.procs):
                g.stop()
                g.start(timeout=60)

    def gateway_workers(self, i: int) -> list[psutil.Process]:
        top = self.gateways[i].procs[0].pid
        if top is None:
            return []
        with contextlib.suppress(psutil.NoSuchProcess):
            return [
                c
                for c in psutil.Process(top).children(recursive=True)
                if "multiprocessing.resource_tracker" not in " ".join(c.cmdline())
            ]
        return []

    def nats_node_used_by(self, pids: list[int]) -> LocalNats | None:
        """The NATS node most of these processes' connections go to."""
        by_port = {n.port: n for n in self.nats.nodes}
        seen: Counter[int] = Counter()
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                for c in psutil.Process(pid).net_connections(kind="tcp"):
                    if c.raddr and c.raddr.port in by_port and c.status == psutil.CONN_ESTABLISHED:
                        seen[c.raddr.port] += 1
        return by_port[seen.most_common(1)[0][0]] if seen else None


def _parallel(calls: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=call) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def kill9(proc: ManagedProcess) -> int:
    """SIGKILL the process (not its group: a gateway's workers are another fault)."""
    pid = proc.pid
    if pid is None:
        raise BrokerError(f"{proc.name} is not running")
    os.kill(pid, signal.SIGKILL)
    assert proc.proc is not None
    proc.proc.wait(10)
    return pid


# ---- the producer -----------------------------------------------------------------------------


class Producer:
    """Writes `rate` events/s over `rooms`, each numbered per room (`{"n":N,"t":T}`), in a thread.

    `t` is when the event was due (the schedule), not when a send finally went through, so a
    stalled Kafka shows up in the latency. Sends are idempotent (acks=all); a send that fails is
    sent again before anything newer, so each room's numbers reach Kafka in order. `counts()`
    is how many events of each room Kafka has acknowledged.
    """

    def __init__(self, bootstrap: str, rooms: list[str], rate: float) -> None:
        self.bootstrap = bootstrap
        self.rooms = rooms
        self.rate = rate
        self._acked = dict.fromkeys(rooms, 0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.retries = 0
        self.error: BaseException | None = None
        self.last_due = 0.0
        self._thread = threading.Thread(target=self._main, daemon=True)

    def start(self) -> Producer:
        self._thread.start()
        return self

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._acked)

    def stop(self, timeout: float = 60) -> dict[str, int]:
        self._stop.set()
        self._thread.join(timeout)
        return self.counts()

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by the scenario
            self.error = exc

    async def _run(self) -> None:
        import logging

        from aiokafka import AIOKafkaProducer

        # While the broker is down aiokafka logs every retry; the retries are counted instead.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            request_timeout_ms=30_000,
            retry_backoff_ms=200,
        )
        while True:
            try:
                await producer.start()
                break
            except Exception:
                await asyncio.sleep(0.5)
                if self._stop.is_set():
                    return
        next_n = dict.fromkeys(self.rooms, 0)
        t0_wall, t0 = time.time(), time.monotonic()
        sent = 0
        try:
            while not self._stop.is_set():
                due = int((time.monotonic() - t0) * self.rate) - sent
                batch = []
                for _ in range(max(0, due)):
                    room = self.rooms[sent % len(self.rooms)]
                    batch.append((room, next_n[room], t0_wall + sent / self.rate))
                    next_n[room] += 1
                    sent += 1
                while batch:
                    batch = await self._send(producer, batch)
                    if batch:
                        self.retries += len(batch)
                        await asyncio.sleep(0.3)
                if sent:
                    self.last_due = t0_wall + (sent - 1) / self.rate
                await asyncio.sleep(0.01)
        finally:
            await producer.stop()

    async def _send(
        self, producer: Any, batch: list[tuple[str, int, float]]
    ) -> list[tuple[str, int, float]]:
        """Send the batch in order; what failed, from the first failure of each room on."""
        futures: list[Any] = []
        for room, n, t in batch:
            try:
                futures.append(
                    await producer.send(TOPIC, b'{"n":%d,"t":%.6f}' % (n, t), key=room.encode())
                )
            except Exception as exc:
                futures.append(exc)
        results = await asyncio.gather(*(_settle(f) for f in futures))
        failed_rooms: set[str] = set()
        retry = []
        with self._lock:
            for (room, n, t), r in zip(batch, results, strict=True):
                if room in failed_rooms or isinstance(r, BaseException):
                    failed_rooms.add(room)
                    retry.append((room, n, t))
                else:
                    self._acked[room] = max(self._acked[room], n + 1)
        return retry


async def _settle(f: Any) -> Any:
    if isinstance(f, BaseException):
        return f
    try:
        return await f
    except Exception as exc:
        return exc


# ---- scenarios --------------------------------------------------------------------------------


@dataclass
class Run:
    """What a fault function gets: the cluster, the viewers, the options, a place for notes."""

    cluster: ChaosCluster
    viewers: ViewerProcesses
    opts: Options
    progress: Progress
    notes: dict[str, Any] = field(default_factory=dict)
    healed_at: float = 0.0  # set by faults that know when they are over (else: when they return)


def _sleep(run: Run, seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        run.progress(f"[chaos] {what}: {left:4.1f}s")
        time.sleep(min(left, 0.5))


def fault_ingest_kill(run: Run) -> None:
    """kill -9 one ingest process; the other takes its partitions; start it again."""
    proc = run.cluster.ingest[0]
    run.notes["killed_pid"] = kill9(proc)
    _sleep(run, run.opts.down_s, "ingest-0 killed")
    proc.stop()
    proc.start()


def fault_nats_kill(run: Run) -> None:
    """kill -9 the NATS node that leads the history stream (its replicas elect another; its
    clients move to the other nodes); restart it (same port and store) once it is due."""
    leader = run.cluster.describe_stream().get("stream_leader")
    node = next((n for n in run.cluster.nats.nodes if n.name == f"nats-{leader}"), None)
    node = node or run.cluster.nats.nodes[0]
    run.notes["node"] = node.name
    kill9(node.process)
    _sleep(run, run.opts.down_s, f"{node.name} killed")
    node.stop()
    node.start()
    run.cluster.nats.wait_healthy(60)


def fault_nats_rolling(run: Run) -> None:
    """Every NATS node in turn: stopped (SIGTERM), started, healthy again before the next."""
    for node in run.cluster.nats.nodes:
        run.progress(f"[chaos] rolling restart: {node.name}")
        node.stop()
        node.start()
        run.cluster.nats.wait_healthy(60)


def fault_kafka_restart(run: Run) -> None:
    """Stop one Kafka broker (SIGTERM, a clean shutdown; with one broker, Kafka) and start it."""
    broker = run.cluster.kafka.nodes[0]
    run.notes["broker"] = broker.node_id
    broker.stop()
    _sleep(run, min(run.opts.down_s, 2.0), f"Kafka broker {broker.node_id} down")
    broker.start()


def fault_gateway_worker_kill(run: Run) -> None:
    """kill -9 one worker of gateway 0; its supervisor starts another; its viewers resume."""
    workers = run.cluster.gateway_workers(0)
    if not workers:
        raise BrokerError("gateway 0 has no worker to kill")
    victim = workers[0]
    run.notes["killed_pid"] = victim.pid
    victim.kill()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = run.cluster.gateway_workers(0)
        if len(now) >= len(workers) and victim.pid not in [p.pid for p in now]:
            break
        time.sleep(0.2)


def fault_gateway_drain(run: Run) -> None:
    """SIGTERM gateway 0: it drains (1012, paced), its viewers move to gateway 1; restart it."""
    g = run.cluster.gateways[0]
    proc = g.procs[0]
    assert proc.proc is not None
    os.kill(proc.proc.pid, signal.SIGTERM)
    try:
        proc.proc.wait(30)
    except Exception:
        run.notes["drain"] = "gateway 0 still running 30 s after SIGTERM"
    run.notes["exit_code"] = proc.returncode
    g.stop()
    g.start(timeout=60)


def fault_slow_viewer(run: Run) -> None:
    """Viewer v0 stops reading for slow_s; the others must not notice."""
    run.viewers.pause(["v0"], run.opts.slow_s)
    _sleep(run, run.opts.slow_s, "v0 not reading")


def fault_reconnect_storm(run: Run) -> None:
    """Every viewer's connection reset at once; all come back and resume."""
    dropped_at = run.viewers.drop()
    deadline = time.monotonic() + 120
    want = run.viewers.stats()["viewers"]
    while time.monotonic() < deadline:
        s = run.viewers.stats()
        run.progress(f"[chaos] storm: {s['joined']:,}/{want:,} back")
        if s["joined"] >= want and s["last_joined_at"] > dropped_at:
            run.notes["recovery_s"] = round(s["last_joined_at"] - dropped_at, 3)
            return
        time.sleep(0.2)
    run.notes["recovery_s"] = None


def _pause(run: Run, node: LocalNats) -> None:
    pid = node.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        _sleep(run, run.opts.pause_s, f"{node.name} stopped (SIGSTOP)")
    finally:
        os.kill(pid, signal.SIGCONT)
    run.cluster.nats.wait_healthy(60)


def fault_nats_pause_ingest(run: Run) -> None:
    """The NATS node ingest-0 uses stops answering (SIGSTOP) for pause_s, then goes on."""
    node = run.cluster.nats_node_used_by([p for p in [run.cluster.ingest[0].pid] if p])
    node = node or run.cluster.nats.nodes[0]
    run.notes["node"] = node.name
    _pause(run, node)


def fault_nats_pause_gateway(run: Run) -> None:
    """The NATS node gateway 0's workers use stops answering (SIGSTOP) for pause_s."""
    pids = [p.pid for p in run.cluster.gateway_workers(0)]
    node = run.cluster.nats_node_used_by(pids) or run.cluster.nats.nodes[0]
    run.notes["node"] = node.name
    _pause(run, node)


def fault_gateway_pause(run: Run) -> None:
    """Gateway 0 itself stops (SIGSTOP, supervisor and workers) for pause_s: its viewers hear
    nothing, NATS keeps its messages or drops them as a slow consumer, then it goes on."""
    procs = run.cluster.gateways[0].processes()
    for p in procs:
        p.suspend()
    try:
        _sleep(run, run.opts.pause_s, "gateway 0 stopped (SIGSTOP)")
    finally:
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.resume()


def fault_history_reset(run: Run) -> None:
    """The history stream is deleted (an operator's mistake); ingest creates it again, a new
    epoch. Whatever it held is gone: viewers must be told (`reset` / `recovered:false`), so this
    scenario's recovered_false is not 0 on purpose, and lost must still be 0."""
    import nats

    before = run.cluster.describe_stream()

    async def delete() -> None:
        nc = await nats.connect(run.cluster.nats.urls, connect_timeout=5)
        try:
            await nc.jetstream().delete_stream(STREAM)
        finally:
            await nc.close()

    asyncio.run(delete())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            after = run.cluster.describe_stream()
            if after["stream_created"] != before["stream_created"]:
                run.notes["epochs"] = [before["stream_created"], after["stream_created"]]
                return
        time.sleep(0.3)
    raise BrokerError("the history stream was not created again within 60 s")


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: Callable[[Run], None]
    storm: bool = False  # sized by storm_viewers
    slow: bool = False  # v0 is the slow viewer: the others' p99 is checked


SCENARIOS = [
    Scenario("ingest-kill", fault_ingest_kill),
    Scenario("nats-kill", fault_nats_kill),
    Scenario("nats-rolling-restart", fault_nats_rolling),
    Scenario("kafka-restart", fault_kafka_restart),
    Scenario("gateway-worker-kill", fault_gateway_worker_kill),
    Scenario("gateway-drain", fault_gateway_drain),
    Scenario("slow-viewer", fault_slow_viewer, slow=True),
    Scenario("reconnect-storm", fault_reconnect_storm, storm=True),
    Scenario("nats-pause-ingest", fault_nats_pause_ingest),
    Scenario("nats-pause-gateway", fault_nats_pause_gateway),
    Scenario("gateway-pause", fault_gateway_pause),
    Scenario("history-reset", fault_history_reset),
]


def default_client() -> str:
    """The SDK's `subscribe()` where this roomcast has it, else the plain viewer."""
    try:
        from roomcast.client import subscribe  # noqa: F401
    except ImportError:
        return "plain"
    return "sdk"


def viewer_specs(prefix: str, viewers: int, rooms: list[str], slow: bool) -> list[ViewerSpec]:
    """Viewer i watches room i mod R, every third one a second room too; homes alternate."""
    specs = []
    for i in range(viewers):
        mine = [rooms[i % len(rooms)]]
        if i % 3 == 0 and len(rooms) > 1:
            other = rooms[(i * 7 + 3) % len(rooms)]
            if other not in mine:
                mine.append(other)
        group = "slow" if slow and i == 0 else "main"
        specs.append(ViewerSpec(f"v{i}", tuple(mine), home=i % 2, group=group))
    return specs


def _wait(what: str, check: Callable[[], bool], timeout: float, progress: Progress) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(0.2)


def run_scenario(
    cluster: ChaosCluster, sc: Scenario, opts: Options, progress: Progress
) -> dict[str, Any]:
    """One scenario under steady load: calm, fault, after, drain; then the checker's account."""
    rooms = [f"{sc.name}-r{i}" for i in range(opts.rooms)]
    count = opts.storm_viewers if sc.storm else opts.viewers
    specs = viewer_specs(sc.name, count, rooms, sc.slow)
    processes = max(1, -(-count // opts.viewers_per_process))
    result: dict[str, Any] = {"name": sc.name, "viewers": count}
    client = opts.client or default_client()
    result["client"] = client
    with ViewerProcesses(specs, cluster.gateway_ports, processes, client) as viewers:
        run = Run(cluster, viewers, opts, progress)

        def joined() -> bool:
            s = viewers.stats()
            progress(f"[chaos] {sc.name}: {s['joined']:,}/{count:,} viewers joined")
            return bool(s["joined"] >= count)

        _wait(f"{sc.name}: viewers joining", joined, 60 + count / 200, progress)
        producer = Producer(cluster.kafka.bootstrap, rooms, opts.rate).start()
        try:

            def served() -> bool:
                s = viewers.stats()
                progress(f"[chaos] {sc.name}: {s['rooms_with_data']}/{s['viewer_rooms']} fed")
                return bool(s["rooms_with_data"] >= s["viewer_rooms"])

            _wait(f"{sc.name}: every viewer's rooms getting events", served, 60, progress)
            base = producer.counts()
            calm_from = time.time()
            _sleep(run, opts.calm_s, f"{sc.name}: calm")
            fault_at = time.time()
            try:
                sc.fault(run)
            except Exception as exc:
                result["fault_error"] = f"{type(exc).__name__}: {exc}"
            healed_at = run.healed_at or time.time()
            _sleep(run, opts.after_s, f"{sc.name}: after the fault")
        finally:
            produced = producer.stop()
        flowing_until = producer.last_due
        settle_end = time.monotonic() + opts.settle_s
        last, still = -1, time.monotonic()
        while time.monotonic() < settle_end:
            s = viewers.stats(produced)
            progress(f"[chaos] {sc.name}: draining, {s['complete']}/{s['viewer_rooms']} complete")
            if s["complete"] >= s["viewer_rooms"]:
                break
            if s["delivered"] != last:
                last, still = s["delivered"], time.monotonic()
            elif time.monotonic() - still > 8:
                break
            time.sleep(0.3)
        stats = viewers.stats(produced)
        logs, lat = viewers.collect()
    summary = summarize(logs, produced, base, flowing_until)
    main: Latencies = lat["main"]
    # Calm: whole seconds after every room was fed and before the last window ahead of the
    # fault (whose events the fault may hold up); fault: from it until healed, plus a window.
    calm = main.select(lambda s: int(calm_from) < s < int(fault_at) - 1)
    fault = main.select(lambda s: int(fault_at) <= s <= int(healed_at) + 1)
    result.update(
        produced=sum(produced.values()) - sum(base.values()),
        expected=summary.expected,
        delivered=summary.delivered,
        lost=summary.lost,
        duplicated=summary.duplicated,
        out_of_order=summary.out_of_order,
        recovered_false=summary.recovered_false + summary.resets,
        announced=summary.announced,
        max_gap_s=round(summary.max_gap_s, 3),
        p99_ms_calm=percentile(calm, 0.99),
        p99_ms_fault=percentile(fault, 0.99),
        fault_s=round(healed_at - fault_at, 3),
        silent_viewer_rooms=summary.silent,
        reconnects=stats["connects"] - count,
        producer_retries=producer.retries,
        **run.notes,
    )
    if sc.slow:
        calm_p99, fault_p99 = result["p99_ms_calm"], result["p99_ms_fault"]
        result["others_p99_within_10pct"] = bool(
            calm_p99 is not None and fault_p99 is not None and fault_p99 <= 1.1 * calm_p99
        )
        slow = lat["slow"].select(lambda s: True)
        result["slow_viewer_p99_ms"] = percentile(slow, 0.99)
    if producer.error is not None:
        result["producer_error"] = repr(producer.error)
    if stats["errors"]:
        result["viewer_errors"] = stats["errors"][:5]
    if summary.lost or summary.duplicated or summary.out_of_order:
        result["log_excerpt"] = cluster.log_excerpt(since=calm_from)
    if summary.worst:
        result["worst"] = [
            {"viewer": v, "room": room, "lost": r.lost, "duplicated": r.duplicated,
             "out_of_order": r.out_of_order, "expected": r.expected}
            for v, room, r in summary.worst
        ]  # fmt: skip
    return result


def scenario_names() -> list[str]:
    return [s.name for s in SCENARIOS]


def run(
    opts: Options,
    state_dir: Path,
    progress: Progress,
    only: list[str] | None = None,
    on_result: Callable[[dict[str, Any]], None] = lambda r: None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Start the cluster, play every scenario (or `only` those), heal between them, stop.
    Returns the scenarios' results and what the cluster was (`ChaosCluster.describe`)."""
    chosen = [s for s in SCENARIOS if only is None or s.name in only]
    results = []
    described: dict[str, Any] = {}
    with ChaosCluster(
        state_dir, partitions=opts.partitions, progress=progress, kafka_brokers=opts.kafka_brokers
    ) as cluster:
        for sc in chosen:
            try:
                r = run_scenario(cluster, sc, opts, progress)
            except (TimeoutError, BrokerError, OSError) as exc:
                r = {"name": sc.name, "error": f"{type(exc).__name__}: {exc}"}
            results.append(r)
            on_result(r)
            cluster.heal()
        try:
            described = cluster.describe()
        except Exception as exc:
            described = {"error": f"{type(exc).__name__}: {exc}"}
    return results, described


def options(short: bool, **overrides: Any) -> Options:
    base = SHORT if short else LONG
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


# ---- NATS message rates on the cluster --------------------------------------------------------


def nats_rates(state_dir: Path, messages: int = 50_000, size: int = 300) -> dict[str, Any]:
    """On a fresh 3-node cluster: JetStream publishes acknowledged per second into a stream of 3
    replicas from one nats-py publisher (`publish_async`, acks awaited at the end, as ingest
    publishes), and core messages per second from a publisher on one node to a subscriber on
    another (through a route), each over 1,000 subjects of `size`-byte messages."""
    import nats
    from nats.js.api import StreamConfig

    payload = b"x" * size

    async def measure(urls: list[str]) -> dict[str, Any]:
        nc = await nats.connect(urls)
        js = nc.jetstream(publish_async_max_pending=100_000)
        await js.add_stream(StreamConfig(name="RATES", subjects=["rates.>"], num_replicas=3))
        t0 = time.monotonic()
        for i in range(messages):
            await js.publish_async(f"rates.{i % 1000}", payload)
        await js.publish_async_completed()
        js_rate = messages / (time.monotonic() - t0)
        pub, sub = await nats.connect(urls[0]), await nats.connect(urls[1])
        got = 0
        done = asyncio.Event()

        async def on_msg(msg: Any) -> None:
            nonlocal got
            got += 1
            if got == messages:
                done.set()

        await sub.subscribe("core.>", cb=on_msg)
        await sub.flush()
        await asyncio.sleep(0.5)  # the subscription's interest reaches the other node
        t0 = time.monotonic()
        for i in range(messages):
            await pub.publish(f"core.{i % 1000}", payload)
        await pub.flush()
        await asyncio.wait_for(done.wait(), 120)
        core_rate = messages / (time.monotonic() - t0)
        for c in (nc, pub, sub):
            await c.close()
        return {
            "messages": messages,
            "bytes": size,
            "jetstream_r3_acked_per_s": round(js_rate),
            "core_routed_per_s": round(core_rate),
        }

    with LocalNatsCluster(state_dir / "nats-rates", size=3) as cluster:
        return asyncio.run(measure(cluster.urls))
