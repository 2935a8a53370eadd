"""`roomcast bench`: the one way roomcast's speed is measured.

Each scenario starts what it needs (real NATS and, where needed, real Kafka, unless
ROOMCAST_NATS / ROOMCAST_KAFKA point at running ones), measures, stops everything, and prints
a summary table. `--json PATH` writes the figures; `--plot PATH.png` draws them. Every field
is described in docs/benchmarks.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import psutil

from roomcast.bench import scenarios
from roomcast.bench.report import plot, table
from roomcast.core.errors import RoomcastError

CPUS = os.cpu_count() or 1


def _viewer_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        counts = [int(v.replace("_", "")) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, got {value!r}") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter("give at least one viewer count, each at least 1")
    return counts


class _Progress:
    """One status line, rewritten in place on a terminal, or a line every 2 s otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, text: str) -> None:
        now = time.monotonic()
        if self.tty:
            sys.stderr.write("\r\033[K" + text[:150])
            sys.stderr.flush()
        elif now - self.last >= 2.0:
            self.last = now
            sys.stderr.write(text + "\n")

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")


def _common(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--viewers",
            default="1000",
            callback=_viewer_list,
            show_default=True,
            help="Viewer count, or several separated by commas for a sweep "
            "(e.g. 1000,10000,50000).",
        ),
        click.option(
            "--duration",
            "duration_s",
            type=click.FloatRange(1, 600),
            default=10,
            show_default=True,
            help="Seconds of measurement per server or run.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(1, 64),
            default=CPUS,
            show_default=True,
            help="Gateway worker processes (and reference-server processes). Each holds "
            "at most ~19,000 viewers (open-files limit).",
        ),
        click.option(
            "--json",
            "json_path",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Write the figures here as one JSON object.",
        ),
        click.option(
            "--plot",
            "plot_path",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Draw a PNG: latency CDF (e2e), or figures against viewers (sweeps).",
        ),
        click.option(
            "--state-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="Broker data and process logs (default: a temporary directory).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@contextmanager
def _run(
    name: str,
    viewers: list[int],
    duration_s: float,
    workers: int,
    state_dir: Path | None,
    json_path: Path | None,
    plot_path: Path | None,
    kafka: bool,
) -> Iterator[Callable[[int, Callable[[scenarios.Common, Any], dict[str, Any]]], None]]:
    """Shared plumbing: brokers, progress, one run per viewer count, table, JSON and plot."""
    from roomcast.bench import stack

    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    progress = _Progress()
    runs: list[dict[str, Any]] = []
    tmp = None
    if state_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="roomcast-bench-")
        state_dir = Path(tmp.name)
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        with stack.brokers(state_dir, kafka=kafka) as brokers:

            def one(v: int, body: Callable[[scenarios.Common, Any], dict[str, Any]]) -> None:
                common = scenarios.Common(v, duration_s, workers, state_dir, progress)
                result = {"viewers": v, **body(common, brokers)}
                runs.append(result)
                progress.done()
                click.echo(table(name, result), err=False)

            yield one
    except KeyboardInterrupt:
        progress.done()
        raise click.Abort() from None
    except (TimeoutError, OSError, RuntimeError, RoomcastError) as exc:
        progress.done()
        raise click.ClickException(f"{name}: {exc} (logs under {state_dir / 'logs'})") from None
    finally:
        if tmp is not None:
            tmp.cleanup()
    machine = {
        "cpus": CPUS,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for r in runs:
        r.update(scenario=name, duration_s=duration_s, started_at=started)
    if plot_path is not None:
        plot(name, runs, plot_path)
        click.echo(f"plot written to {plot_path}", err=True)
    for r in runs:  # the raw latency sample feeds the plot; the JSON has its percentiles
        r.pop("latency_samples", None)
    if len(runs) == 1:
        doc: dict[str, Any] = {**runs[0], "machine": machine}
    else:
        doc = {
            "scenario": name,
            "viewers": viewers,
            "duration_s": duration_s,
            "started_at": started,
            "machine": machine,
            "runs": runs,
        }
    if json_path is not None:
        json_path.write_text(json.dumps(doc, indent=2) + "\n")
        click.echo(f"figures written to {json_path}", err=True)


@click.group()
def bench() -> None:
    """Measure roomcast's speed: fanout, connect, ingest, e2e; and fuzz a live gateway.

    Each scenario is bounded in time, uses loopback only, starts the brokers and servers it
    needs and stops them. Set ROOMCAST_NATS / ROOMCAST_KAFKA to use running brokers instead.
    The machine is shared and noisy: compare the ratios measured within one run.

    \b
    Examples:
      roomcast bench fanout --viewers 10000 --duration 10 --json fanout.json
      roomcast bench connect --viewers 10000,50000 --workers 4
      roomcast bench ingest --events 200000
      roomcast bench e2e --viewers 2000 --rate 2000 --plot latency.png
      roomcast bench fuzz --cases 100000 --json fuzz.json
    """


@bench.command()
@_common
@click.option(
    "--rooms",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="Rooms; viewer i watches room i mod ROOMS.",
)
@click.option(
    "--rate",
    type=click.FloatRange(0.1, 1000),
    default=5,
    show_default=True,
    help="Blobs published per room per second (= frames per viewer per second).",
)
@click.option(
    "--blob-bytes",
    type=click.IntRange(100, 65536),
    default=200,
    show_default=True,
    help="Approximate size of each blob.",
)
@click.option(
    "--compare/--no-compare",
    default=True,
    show_default=True,
    help="Also measure the raw-socket floor and stock websockets broadcast().",
)
@click.option(
    "--stock-loop",
    type=click.Choice(["asyncio", "uvloop"]),
    default="asyncio",
    show_default=True,
    help="Event loop of the stock server: asyncio as websockets' docs show it, or "
    "uvloop as the gateway runs.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1, 9),
    default=1,
    show_default=True,
    help="Measure each server this many times, interleaved (each round starts with a different "
    "one); report the median run and the median of the ratios taken within each round.",
)
@click.option(
    "--compress",
    type=click.Choice(["off", "on"]),
    default="off",
    show_default=True,
    help="on: viewers offer permessage-deflate as browsers do; the gateway compresses each blob "
    "once, stock compresses per connection (its default), the floor ignores the offer.",
)
@click.option(
    "--blob-kind",
    type=click.Choice(["synthetic", "chat"]),
    default="synthetic",
    show_default=True,
    help="synthetic: --blob-bytes of short alike events; chat: a merged 1 s window of "
    "--events-per-blob e2e chat events (what compression meets in practice).",
)
@click.option(
    "--fanout",
    "fanout_path",
    type=click.Choice(["auto", "uring", "send", "write"]),
    default="auto",
    show_default=True,
    help="The gateway's --fanout: io_uring batches, a C send() loop, or transport.write.",
)
@click.option(
    "--compress-level",
    type=click.IntRange(1, 9),
    default=1,
    show_default=True,
    help="The gateway's --compress-level (zlib level, paid once per blob).",
)
@click.option(
    "--events-per-blob",
    type=click.IntRange(1, 10_000),
    default=40,
    show_default=True,
    help="Events in each chat blob (--blob-kind chat).",
)
def fanout(
    rooms: int,
    rate: float,
    blob_bytes: int,
    compare: bool,
    stock_loop: str,
    rounds: int,
    compress: str,
    compress_level: int,
    fanout_path: str,
    blob_kind: str,
    events_per_blob: int,
    **common: Any,
) -> None:
    """The gateway alone: blobs injected into NATS, V viewers in R rooms.

    Measures the gateway's CPU per delivered frame and, over the same connections in the same
    run, two raw-socket floors (pre-built bytes, no WebSocket logic: one os.write() per viewer
    from Python, and one C loop of send() over the room's descriptors) and stock websockets
    broadcast(); delivered frames/s, drops, memory per idle viewer.
    """
    with _run("fanout", kafka=False, **common) as one:
        for v in common["viewers"]:
            one(
                v,
                lambda c, b: scenarios.fanout(
                    c,
                    b.nats,
                    rooms,
                    rate,
                    blob_bytes,
                    compare,
                    stock_loop,
                    rounds,
                    compress == "on",
                    blob_kind,
                    events_per_blob,
                    compress_level,
                    fanout_path,
                ),
            )


@bench.command()
@_common
@click.option("--rooms", type=click.IntRange(1), default=100, show_default=True)
@click.option("--auth", type=click.Choice(["off", "jwt"]), default="off", show_default=True,
              help="jwt: every viewer presents an HS256 token the gateway checks.")  # fmt: skip
def connect(rooms: int, auth: str, **common: Any) -> None:
    """Handshakes/s, memory per idle viewer, and a reconnect storm.

    Opens V viewers as fast as the load clients can (the gateway's connect-rate limit is
    lifted), measures the gateway's memory with all of them idle, then drops every connection
    at once and times until all are back and joined.
    """
    with _run("connect", kafka=False, **common) as one:
        for v in common["viewers"]:
            one(v, lambda c, b: scenarios.connect(c, b.nats, rooms, auth))


@bench.command()
@_common
@click.option(
    "--events",
    type=click.IntRange(1000),
    default=200_000,
    show_default=True,
    help="Events produced before the clock starts.",
)
@click.option(
    "--rooms",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="Rooms, with Zipf popularity.",
)
@click.option("--partitions", type=click.IntRange(1), default=8, show_default=True)
@click.option("--window-ms", type=click.IntRange(0), default=1000, show_default=True)
def ingest(events: int, rooms: int, partitions: int, window_ms: int, **common: Any) -> None:
    """Events/s through consume -> merge -> publish -> commit, against a consume-only ceiling.

    Produces EVENTS to a fresh topic, reads them all with a bare aiokafka consumer (the
    ceiling), then runs `roomcast ingest` on the same topic and times until every offset is
    committed (so every blob is acknowledged by JetStream). --viewers is not used.
    """
    with _run("ingest", kafka=True, **common) as one:
        one(
            0,
            lambda c, b: scenarios.ingest(c, b.kafka, b.nats, events, rooms, partitions, window_ms),
        )


@bench.command()
@_common
@click.option(
    "--rooms",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="Rooms; events and viewers pick rooms with Zipf popularity.",
)
@click.option(
    "--rate",
    type=click.FloatRange(1, 200_000),
    default=1000,
    show_default=True,
    help="Events produced per second.",
)
@click.option("--window-ms", type=click.IntRange(0), default=1000, show_default=True)
@click.option("--partitions", type=click.IntRange(1), default=8, show_default=True)
@click.option(
    "--compress",
    type=click.Choice(["off", "on"]),
    default="off",
    show_default=True,
    help="on: viewers offer permessage-deflate (and inflate what they check).",
)
@click.option(
    "--churn",
    "churn_s",
    type=click.FloatRange(0),
    default=0,
    metavar="P",
    help="Each viewer drops its connection and resumes (with since) every ~P seconds "
    "(jittered, 0.5-1.5 P); viewers are then the Python SDK. 0: no churn.",
)
def e2e(
    rooms: int,
    rate: float,
    window_ms: int,
    partitions: int,
    compress: str,
    churn_s: float,
    **common: Any,
) -> None:
    """Producers -> Kafka -> ingest -> NATS -> gateway -> viewers, checked and timed.

    Every viewer decodes its blobs, applies the dedup rule, and checks each room's sequence:
    events lost and duplicated must be 0. Latency is producer timestamp to viewer receipt.
    With --churn, viewers keep dropping and resuming, and must still lose and repeat nothing;
    the JSON adds how many rooms were resumed and how many could not be (recovered_false).
    """
    with _run("e2e", kafka=True, **common) as one:
        for v in common["viewers"]:
            one(
                v,
                lambda c, b: scenarios.e2e(
                    c,
                    b.kafka,
                    b.nats,
                    rooms,
                    rate,
                    window_ms,
                    partitions,
                    compress=compress == "on",
                    churn_s=churn_s,
                ),
            )


_CHAOS_COLUMNS = [
    ("name", "scenario", "{}"),
    ("produced", "produced", "{:,}"),
    ("delivered", "delivered", "{:,}"),
    ("lost", "lost", "{:,}"),
    ("duplicated", "duplicated", "{:,}"),
    ("recovered_false", "recovered:false", "{:,}"),
    ("max_gap_s", "max gap s", "{:.2f}"),
    ("p99_ms_calm", "p99 ms calm", "{:,.0f}"),
    ("p99_ms_fault", "p99 ms fault", "{:,.0f}"),
]


def chaos_table(results: list[dict[str, Any]]) -> str:
    """The scenarios as a Markdown table (what docs/reliability.md shows)."""
    head = "| " + " | ".join(title for _, title, _ in _CHAOS_COLUMNS) + " |"
    rule = "|" + "---|" * len(_CHAOS_COLUMNS)
    rows = []
    for r in results:
        cells = []
        for key, _, fmt in _CHAOS_COLUMNS:
            v = r.get(key)
            cells.append("-" if v is None else fmt.format(v))
        rows.append("| " + " | ".join(cells) + " |")
        if r.get("error") or r.get("fault_error"):
            rows.append(f"|   ^ {r.get('error') or r.get('fault_error')} |")
    return "\n".join([head, rule, *rows])


def _scenario_list(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> list[str] | None:
    from roomcast.bench.chaos import scenario_names

    if not value:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in scenario_names()]
    if unknown:
        raise click.BadParameter(
            f"unknown scenario {', '.join(unknown)}; known: {', '.join(scenario_names())}"
        )
    return names


@bench.command()
@click.option("--short", is_flag=True, help="Every scenario briefly, at small scale (the tests).")
@click.option("--only", callback=_scenario_list, metavar="NAME,...",
              help="Play only these scenarios (names as in the table).")  # fmt: skip
@click.option("--viewers", type=click.IntRange(1), help="Steady viewers per scenario.")
@click.option("--storm-viewers", type=click.IntRange(1),
              help="Viewers dropped at once in the reconnect storm.")  # fmt: skip
@click.option("--rooms", type=click.IntRange(1), help="Rooms per scenario.")
@click.option("--rate", type=click.FloatRange(1), help="Events per second over all rooms.")
@click.option("--calm-s", type=click.FloatRange(1), help="Steady load before each fault.")
@click.option("--after-s", type=click.FloatRange(1), help="Steady load after it is healed.")
@click.option("--pause-s", type=click.FloatRange(1), help="How long SIGSTOP lasts.")
@click.option("--client", type=click.Choice(["sdk", "plain"]),
              help="Viewers: the Python SDK (default), or plain resuming clients.")  # fmt: skip
@click.option("--kafka-brokers", type=click.IntRange(1, 3),
              help="KRaft nodes (default 3: they fit in memory here, ~370 MiB each).")  # fmt: skip
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write {\"scenarios\": [...]} here.")  # fmt: skip
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Broker data and process logs (default: a temporary directory).")  # fmt: skip
def chaos(
    short: bool,
    only: list[str] | None,
    json_path: Path | None,
    state_dir: Path | None,
    **sizes: Any,
) -> None:
    """A whole cluster on loopback under faults, every event checked.

    Starts Kafka (3 brokers), 3 NATS nodes (JetStream, 3 replicas), 2 ingest processes in one
    group and 2 gateways of 2 workers, then plays each scenario under steady load: a calm
    phase, one fault (kill -9 an ingest process, a NATS node, a gateway worker; restart
    Kafka; restart NATS node by node; drain a gateway; a viewer that stops reading; every
    viewer dropped at once; SIGSTOP the NATS node ingest or a gateway uses, or a gateway),
    load after it, and a drain. Producers number every event per room; every viewer resumes on
    reconnect and the checker counts, per viewer and room, events lost (a gap nobody announced with
    recovered:false), duplicated and out of order, the longest silence and p99 latency in the
    calm phase and during the fault. Exits 1 if any scenario lost or duplicated an event.
    Never runs against ROOMCAST_NATS / ROOMCAST_KAFKA: it kills brokers.

    \b
    Examples:
      roomcast bench chaos --short
      roomcast bench chaos --json docs/bench/chaos.json
      roomcast bench chaos --only nats-kill,gateway-drain --viewers 500
    """
    from roomcast.bench import chaos as ch

    opts = ch.options(short, **sizes)
    progress = _Progress()
    tmp = None
    if state_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="roomcast-chaos-")
        state_dir = Path(tmp.name)
    state_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")

    def one(r: dict[str, Any]) -> None:
        progress.done()
        click.echo(
            f"{r['name']}: lost {r.get('lost', '-')}, duplicated {r.get('duplicated', '-')}"
            + (
                f" ({r.get('error') or r.get('fault_error')})"
                if r.get("error") or r.get("fault_error")
                else ""
            ),
            err=True,
        )

    try:
        results, cluster = ch.run(opts, state_dir, progress, only=only, on_result=one)
    except KeyboardInterrupt:
        progress.done()
        raise click.Abort() from None
    except (TimeoutError, OSError, RuntimeError, RoomcastError) as exc:
        progress.done()
        raise click.ClickException(f"chaos: {exc} (logs under {state_dir / 'logs'})") from None
    progress.done()
    click.echo(chaos_table(results))
    doc = {
        "scenario": "chaos",
        "short": short,
        "started_at": started,
        "options": dataclasses.asdict(opts),
        "machine": {
            "cpus": CPUS,
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "cluster": cluster,
        "scenarios": results,
    }
    if json_path is not None:
        json_path.write_text(json.dumps(doc, indent=2) + "\n")
        click.echo(f"figures written to {json_path}", err=True)
    if tmp is not None:
        tmp.cleanup()
    if any(r.get("error") or r.get("lost") or r.get("duplicated") for r in results):
        raise SystemExit(1)


@bench.command("nats")
@click.option("--messages", type=click.IntRange(1000), default=50_000, show_default=True)
@click.option("--bytes", "size", type=click.IntRange(1, 65536), default=300, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def nats_rates(messages: int, size: int, rounds: int, json_path: Path | None) -> None:
    """NATS message rates on a fresh 3-node cluster on loopback (the chaos cluster's NATS).

    JetStream publishes acknowledged per second into a stream of 3 replicas from one nats-py
    publisher, and core messages per second from one node to a subscriber on another.
    """
    from roomcast.bench.chaos import nats_rates as measure

    runs = []
    with tempfile.TemporaryDirectory(prefix="roomcast-nats-") as tmp:
        for i in range(rounds):
            runs.append(measure(Path(tmp) / str(i), messages, size))
            click.echo(
                f"round {i + 1}: JetStream R3 {runs[-1]['jetstream_r3_acked_per_s']:,} acked/s, "
                f"core through a route {runs[-1]['core_routed_per_s']:,} msgs/s"
            )
    if json_path is not None:
        json_path.write_text(json.dumps({"scenario": "nats", "runs": runs}, indent=2) + "\n")


def _categories(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    from roomcast.bench.fuzz import parse_categories

    try:
        return parse_categories(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _indexes(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("expected case numbers separated by commas") from None


@bench.command()
@click.option(
    "--cases",
    type=click.IntRange(1),
    default=100_000,
    show_default=True,
    help="Cases to play (case i depends only on --seed and i).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the run.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 2000),
    default=100,
    show_default=True,
    help="Cases playing at once.",
)
@click.option(
    "--batch",
    type=click.IntRange(1),
    default=200,
    show_default=True,
    help="Cases between two checks.",
)
@click.option(
    "--good-viewers",
    type=click.IntRange(1, 1000),
    default=8,
    show_default=True,
    help="Well-behaved viewers connected the whole run, spread over the rooms.",
)
@click.option(
    "--rooms",
    type=click.IntRange(1, 32),
    default=4,
    show_default=True,
    help="Rooms the cases join and the good viewers watch.",
)
@click.option(
    "--only",
    "categories",
    default="all",
    show_default=True,
    callback=_categories,
    help="Case categories: 'all', 'valid' (the protocol-valid ones), names separated "
    "by commas, or 'all,-NAME' to leave one out. Names: valid, burst, slow, "
    "fragmented, handshake, frames, control, fragments, utf8, messages, poison, "
    "abrupt, mutated.",
)
@click.option(
    "--replay",
    callback=_indexes,
    metavar="I,J,...",
    help="Play only these case numbers (same --seed and --only), each checked alone.",
)
@click.option(
    "--max-failures",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Stop after this many failed checks (each is narrowed down to one case).",
)
@click.option(
    "--max-seconds",
    type=click.FloatRange(5, 7200),
    default=900,
    show_default=True,
    help="Stop after this long, whatever is left.",
)
@click.option(
    "--triage/--no-triage",
    default=True,
    show_default=True,
    help="After a failure, replay the batch's suspects one by one on a fresh gateway.",
)
@click.option(
    "--handshake-timeout-s",
    type=click.FloatRange(0),
    default=5,
    show_default=True,
    help="Handshakes left unfinished must be closed within this (+2 s); passed to the "
    "gateway as --handshake-timeout-s when it has that option. 0: not checked.",
)
@click.option(
    "--rss-slack-mib",
    type=click.FloatRange(1),
    default=48,
    show_default=True,
    help="RSS growth over the warmed-up baseline counted as a leak.",
)
@click.option(
    "--gateway-arg",
    "gateway_args",
    multiple=True,
    metavar="ARG",
    help="Extra argument for `roomcast gateway` (repeat for several).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the figures and every failure (with its case's bytes) here.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Broker data and process logs (default: a temporary directory).",
)
def fuzz(
    cases: int,
    seed: int,
    concurrency: int,
    batch: int,
    good_viewers: int,
    rooms: int,
    categories: list[str],
    replay: list[int] | None,
    max_failures: int,
    max_seconds: float,
    triage: bool,
    handshake_timeout_s: float,
    rss_slack_mib: float,
    gateway_args: tuple[str, ...],
    json_path: Path | None,
    state_dir: Path | None,
) -> None:
    """Socket-level fuzzing of a live gateway while good viewers stay connected.

    Plays CASES short byte scripts over raw sockets against one `roomcast gateway --workers 1`:
    valid, mutated and random handshakes, bad frames and fragment sequences, control frames,
    huge lengths, violations followed by a join in the same write, many messages in one write,
    half-closes, resets and slow senders. After every batch: each good viewer got every blob
    in order, the worker is alive and answers /healthz, its descriptors and RSS are flat, and
    unfinished handshakes get closed. Exits 1 if any check failed; each failure names the
    seed and the case that breaks the gateway, with its bytes, and how to replay it.

    \b
    Examples:
      roomcast bench fuzz --cases 100000 --json fuzz.json
      roomcast bench fuzz --cases 5000 --only valid
      roomcast bench fuzz --seed 7 --only all --replay 1234
    """
    from roomcast.bench import fuzz as fz

    opts = fz.Options(
        cases=cases,
        seed=seed,
        concurrency=concurrency,
        batch=batch,
        good_viewers=good_viewers,
        rooms=rooms,
        categories=categories,
        replay=replay,
        max_failures=max_failures,
        max_seconds=max_seconds,
        triage=triage,
        handshake_timeout_s=handshake_timeout_s,
        rss_slack_mib=rss_slack_mib,
        gateway_args=gateway_args,
    )
    results: list[dict[str, Any]] = []

    def body(c: scenarios.Common, b: Any) -> dict[str, Any]:
        result = fz.run(opts, b.nats, c.state_dir, c.progress)
        results.append(result)
        return result

    with _run(
        "fuzz",
        viewers=[good_viewers],
        duration_s=max_seconds,
        workers=1,
        state_dir=state_dir,
        json_path=json_path,
        plot_path=None,
        kafka=False,
    ) as one:
        one(good_viewers, body)
    result = results[0]
    click.echo(
        "cases by category: " + ", ".join(f"{k} {v:,}" for k, v in result["by_category"].items())
    )
    for f in result["failure_list"]:
        click.echo(f"\nFAILED after batch {f['batch']}: {f['check']}\n  {f['detail'][:1500]}")
        if f["culprit"]:
            click.echo(f"  culprit ({f['culprit_note']}):\n  {f['culprit']['script'][:1500]}")
        elif f["culprit_note"]:
            click.echo(f"  {f['culprit_note']}")
        for also in f["also"]:
            click.echo(f"  also ({also['note'][:300]}):\n  {also['case']['script'][:600]}")
        if f["replay"]:
            click.echo(f"  replay: {f['replay']}")
        if f["gateway_log_tail"]:
            tail = "\n    ".join(f["gateway_log_tail"].splitlines()[-12:])
            click.echo(f"  gateway log:\n    {tail}")
    if result["failures"]:
        raise SystemExit(1)
