"""The demo room page and the stats page, in a real headless Chromium (Playwright driving Debian's
`chromium` package), against a real pipeline: Kafka, an ingest worker, NATS and a gateway with two
worker processes on one port.

What a person would check: the page joins a room and shows its events in order, merged into blobs;
a gateway worker killed under the page (kill -9) shows "recovering", then every event exactly once;
two tabs in two rooms stay apart and show how many watch; a line typed into the chat box comes
back through Kafka, ingest and the gateway; the stats page shows the gateway's figures. Each page's
screenshot is written to .state/screenshots/ (the README shows copies from docs/).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

from roomcast.devstack.demo import demo_event
from tests.support import Service, create_topic, free_port, unique, wait_http_ok

pytestmark = pytest.mark.brokers

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".state" / "screenshots"
PHONE = {"width": 390, "height": 844}
WAIT_MS = 30_000
T = TypeVar("T")


def run(coro: Coroutine[object, object, T]) -> T:
    """asyncio.run on a thread of its own: Playwright's sync API keeps a loop in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _install_chromium() -> str | None:
    """Install Debian's chromium if it is missing; None when it is there, else why not."""
    if CHROMIUM.exists():
        return None
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine to install the chromium package"
    if os.geteuid() != 0:
        return "installing the chromium package needs root (run: apt-get install -y chromium)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    return (
        None if CHROMIUM.exists() else "apt-get installed chromium but /usr/bin/chromium is absent"
    )


@pytest.fixture(scope="session")
def chromium() -> Path:
    why = _install_chromium()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests, but: {why}")
        pytest.skip(f"!!! BROWSER TESTS NOT RUN: {why}")
    return CHROMIUM


# Module-scoped: Playwright's sync API keeps an event loop running in this thread while it is
# open, and later tests of the session call asyncio.run.
@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(chromium), headless=True)
        yield launched
        launched.close()


@dataclass
class Stack:
    kafka: str
    topic: str
    port: int
    gateway: Service
    ingest: Service
    chat_url: str

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def produce(self, events: list[tuple[str, dict[str, object]]]) -> None:
        """Write (room, event) records to Kafka, in this order, acknowledged by all."""
        from aiokafka import AIOKafkaProducer

        async def go() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=self.kafka, acks="all", linger_ms=5)
            await producer.start()
            try:
                for room, event in events:
                    await producer.send(self.topic, json.dumps(event).encode(), key=room.encode())
                await producer.flush()
            finally:
                await producer.stop()

        run(go())


class ChatThread:
    """roomcast dev's chat endpoint with its Kafka producer, on an event loop of its own."""

    def __init__(self, kafka: str, topic: str, origins: list[str]) -> None:
        from aiokafka import AIOKafkaProducer

        from roomcast.devstack.chat import ChatEndpoint, kafka_sender

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def make() -> AIOKafkaProducer:
            producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
            await producer.start()
            return producer

        self.producer = asyncio.run_coroutine_threadsafe(make(), self.loop).result(30)
        self.endpoint = ChatEndpoint(
            0, kafka_sender(self.producer, topic), self.loop, origins
        ).start()

    def stop(self) -> None:
        self.endpoint.stop()
        asyncio.run_coroutine_threadsafe(self.producer.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One pipeline for this file's tests (each uses rooms of its own): a fresh topic, one ingest
    worker, a gateway with two workers on one port and the demo page's chat box."""
    logs = tmp_path_factory.mktemp("pages")
    topic, prefix = unique("pages"), unique("pages").replace("-", "_")
    # A history of its own (stream and subjects): the page resumes from it.
    stream, history = unique("PAGES").replace("-", "_"), unique("hist").replace("-", "_")
    run(create_topic(kafka_bootstrap, topic, 4))
    run(create_topic(kafka_bootstrap, topic + ".dlq", 1))
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    chat = ChatThread(kafka_bootstrap, topic, [origin])
    gateway = Service(
        "gateway",
        ["gateway", "--nats", nats_url, "--port", str(port), "--workers", "2", "--auth", "off",
         "--subject-prefix", prefix, "--stream", stream, "--history-prefix", history,
         "--metrics-port", "0", "--demo-chat-url", chat.endpoint.url],
        logs,
    )  # fmt: skip
    ingest = Service(
        "ingest",
        ["ingest", "--kafka", kafka_bootstrap, "--nats", nats_url, "--topic", topic,
         "--group", unique("g"), "--window-ms", "300", "--subject-prefix", prefix,
         "--stream", stream, "--history-prefix", history, "--metrics-port", "0"],
        logs,
    )  # fmt: skip
    try:
        wait_http_ok(f"{origin}/readyz", gateway)
        yield Stack(kafka_bootstrap, topic, port, gateway, ingest, chat.endpoint.url)
    finally:
        ingest.stop()
        gateway.stop()
        chat.stop()


@pytest.fixture
def context(browser: object) -> Iterator[object]:
    ctx = browser.new_context(viewport=PHONE)  # type: ignore[attr-defined]
    yield ctx
    ctx.close()


def chats(room: str, n: int, start: int = 0) -> list[tuple[str, dict[str, object]]]:
    return [
        (room, {"kind": "chat", "user": "tester", "text": f"line {i}"}) for i in range(start, n)
    ]


def feed(page: object) -> list[str]:
    return page.locator("#feed li").all_inner_texts()  # type: ignore[attr-defined, no-any-return]


def wait_feed(page: object, n: int, timeout_s: float = 30) -> list[str]:
    """The feed once it has at least `n` lines (and a moment more: extra lines would show)."""
    deadline = time.monotonic() + timeout_s
    while len(lines := feed(page)) < n:
        assert time.monotonic() < deadline, f"{len(lines)} of {n} lines after {timeout_s}s: {lines}"
        time.sleep(0.1)
    page.wait_for_timeout(700)  # type: ignore[attr-defined]  # a late duplicate would land now
    return feed(page)


def open_room(context: object, stack: Stack, room: str) -> object:
    from playwright.sync_api import expect

    page = context.new_page()  # type: ignore[attr-defined]
    page.goto(f"{stack.http}/?room={room}")
    expect(page.locator("#state")).to_have_text("live", timeout=WAIT_MS)
    expect(page.locator("#states")).to_contain_text("joined", timeout=WAIT_MS)
    return page


def screenshot(page: object, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    return path


def fits_the_screen(page: object) -> bool:
    return bool(
        page.evaluate(  # type: ignore[attr-defined]
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
    )


def test_the_page_shows_a_rooms_events_in_order_merged(stack: Stack, context: object) -> None:
    from playwright.sync_api import expect

    room = unique("order")
    page = open_room(context, stack, room)
    stack.produce(chats(room, 40) + [(room, {"kind": "like"})] * 5 + [
        (room, {"kind": "gift", "user": "ana", "gift": "rocket"})
    ])  # fmt: skip
    lines = wait_feed(page, 41)
    assert lines == [f"tester: line {i}" for i in range(40)] + ["ana sent a rocket"]
    expect(page.locator("#likes")).to_have_text("5")
    expect(page.locator("#gifts")).to_have_text("1")
    events, blobs = (int(x) for x in page.locator("#merged").inner_text().split(" / "))
    assert events == 46 and 1 <= blobs < events, (events, blobs)  # merged: fewer blobs than events
    assert re.fullmatch(r"\d+:\d+", page.locator("#position").inner_text())
    assert page.locator("#chat").is_visible()  # this gateway has a chat endpoint
    assert fits_the_screen(page)


def test_a_killed_gateway_worker_recovers_with_every_event_once(
    stack: Stack, context: object
) -> None:
    from playwright.sync_api import expect

    room = unique("kill")
    page = open_room(context, stack, room)
    stack.produce(chats(room, 20))
    wait_feed(page, 20)
    # The worker holding the page's WebSocket: the one child of the gateway with a connection.
    serving = [
        child.pid
        for child in psutil.Process(stack.gateway.proc.pid).children()
        for c in child.net_connections("tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == stack.port
    ]
    assert len(serving) == 1, serving
    os.kill(serving[0], signal.SIGKILL)
    stack.produce(chats(room, 40, start=20))  # while the page is away
    expect(page.locator("#states")).to_contain_text("recovering", timeout=WAIT_MS)
    expect(page.locator("#state")).to_have_text("live", timeout=WAIT_MS)
    # Back in the room after the position it had: nothing missed (the gateway said so).
    expect(page.locator("#states")).to_contain_text("recovering → live → resumed", timeout=WAIT_MS)
    stack.produce(chats(room, 60, start=40))
    lines = wait_feed(page, 60)
    assert lines == [f"tester: line {i}" for i in range(60)]


def test_two_rooms_in_tabs_stay_apart_and_count_their_viewers(
    stack: Stack, context: object
) -> None:
    from playwright.sync_api import expect

    a, b = unique("a"), unique("b")
    tab_a1, tab_a2 = open_room(context, stack, a), open_room(context, stack, a)
    tab_b = open_room(context, stack, b)
    records = []
    for i in range(15):
        records += [(a, {"kind": "chat", "user": "A", "text": f"a{i}"})]
        records += [(b, {"kind": "chat", "user": "B", "text": f"b{i}"})]
    stack.produce(records)
    for tab in (tab_a1, tab_a2):
        assert wait_feed(tab, 15) == [f"A: a{i}" for i in range(15)]
    assert wait_feed(tab_b, 15) == [f"B: b{i}" for i in range(15)]
    # How many watch each room, as the gateways count them: two tabs in a, one in b.
    expect(tab_a1.locator("#viewers")).to_have_text("2", timeout=WAIT_MS)  # type: ignore[attr-defined]
    expect(tab_a2.locator("#viewers")).to_have_text("2", timeout=WAIT_MS)  # type: ignore[attr-defined]
    expect(tab_b.locator("#viewers")).to_have_text("1", timeout=WAIT_MS)  # type: ignore[attr-defined]


def test_a_page_on_another_origin_imports_the_client_and_gets_its_room(
    stack: Stack, context: object
) -> None:
    """An app's own page, served from another origin (here another port), loads /client.js from
    the gateway: a cross-origin module import, which Chromium refuses without
    Access-Control-Allow-Origin."""
    room = unique("xorigin")
    html = f"""<!doctype html><meta charset="utf-8"><script type="module">
import {{ subscribe }} from "{stack.http}/client.js";
window.got = [];
window.joined = false;
subscribe("ws://127.0.0.1:{stack.port}/ws", ["{room}"], {{
  onJoined: () => {{ window.joined = true; }},
  onBlob: (blob) => {{ for (const e of blob.events) window.got.push(e.text); }},
}});
</script>"""
    body = html.encode()

    class App(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), App)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = context.new_page()  # type: ignore[attr-defined]
        console: list[str] = []
        page.on("console", lambda msg: console.append(msg.text))
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")  # same host, another port
        try:
            page.wait_for_function("window.joined === true", timeout=WAIT_MS)
        except Exception as exc:
            raise AssertionError(f"the page never joined; its console: {console}") from exc
        stack.produce(chats(room, 5))
        page.wait_for_function("window.got.length >= 5", timeout=WAIT_MS)
        assert page.evaluate("window.got") == [f"line {i}" for i in range(5)]
    finally:
        server.shutdown()
        server.server_close()


def test_the_chat_box_goes_through_kafka_and_comes_back(stack: Stack, context: object) -> None:
    from playwright.sync_api import expect

    room = unique("chat")
    page = open_room(context, stack, room)
    rng = random.Random(3)  # what `roomcast dev`'s demo producer writes, for the screenshot
    stack.produce([(room, json.loads(demo_event(room, i, rng))) for i in range(1, 40)])
    before = len(wait_feed(page, 1))
    page.fill("#chat-user", "me")  # type: ignore[attr-defined]
    page.fill("#chat-text", "hello through Kafka <b>!</b>")  # type: ignore[attr-defined]
    page.click("#chat button")  # type: ignore[attr-defined]
    lines = wait_feed(page, before + 1)
    assert lines[before:] == ["me: hello through Kafka <b>!</b>"]  # shown as text, not HTML
    expect(page.locator("#chat-status")).to_contain_text("sent to Kafka")  # type: ignore[attr-defined]
    expect(page.locator("#chat-text")).to_have_value("")  # type: ignore[attr-defined]
    screenshot(page, "demo-room.png")


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_chat_endpoint_refuses_what_it_should_not_produce(stack: Stack) -> None:
    ok = {"Content-Type": "application/json"}
    good = json.dumps({"room": unique("c"), "text": "hi"}).encode()
    assert post(stack.chat_url, good, ok) == 200
    assert post(stack.chat_url, good, {**ok, "Origin": "http://elsewhere.example"}) == 403
    assert post(stack.chat_url, good, {"Content-Type": "text/plain"}) == 415
    too_long = json.dumps({"room": "r", "text": "x" * 501}).encode()
    for bad in (b"{", b"[]", b'{"room":"a.b","text":"x"}', b'{"room":"_all","text":"x"}',
                b'{"room":"r","text":""}', too_long):  # fmt: skip
        assert post(stack.chat_url, bad, ok) == 400, bad
    assert post(stack.chat_url, b'{"room":"r","text":"' + b"x" * 3000 + b'"}', ok) == 413


def test_the_stats_page_shows_the_gateways_figures(stack: Stack, context: object) -> None:
    from playwright.sync_api import expect

    room = unique("stats")
    viewer = open_room(context, stack, room)
    stats = context.new_page()  # type: ignore[attr-defined]
    stats.goto(f"{stack.http}/stats")
    stop = threading.Event()

    def produce() -> None:  # a steady trickle, so frames/s is not zero
        i = 0
        while not stop.is_set():
            stack.produce(chats(room, i + 5, start=i))
            i += 5
            stop.wait(0.3)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        expect(stats.locator("#coverage")).to_have_text(
            "2 of 2 worker(s) heard from", timeout=WAIT_MS
        )
        expect(stats.locator("#fps")).not_to_have_text(re.compile(r"^(\u2013|0)$"), timeout=WAIT_MS)
        expect(stats.locator("#viewers")).not_to_have_text(re.compile(r"^(\u2013|0)$"))
        expect(stats.locator("#workers tr")).to_have_count(2)
        points = stats.locator("#sparkpath").get_attribute("points") or ""
        assert len(points.split()) == 60
        assert fits_the_screen(stats)
        screenshot(stats, "stats.png")
    finally:
        stop.set()
        producer.join(10)
    figures = json.load(urllib.request.urlopen(f"{stack.http}/stats.json", timeout=5))
    assert figures["workers"] == 2 and figures["worker"] in (0, 1)
    assert {"viewers", "rooms", "frames_per_s", "bytes_per_s", "drops", "resumes"} <= set(figures)
    assert viewer.locator("#state").inner_text() == "live"  # type: ignore[attr-defined]


def test_a_gateway_without_a_chat_endpoint_serves_a_read_only_page(
    nats_url: str, context: object, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    port = free_port()
    gateway = Service(
        "gateway-ro",
        ["gateway", "--nats", nats_url, "--port", str(port), "--workers", "1", "--auth", "off",
         "--metrics-port", "0", "--subject-prefix", unique("ro").replace("-", "_")],
        tmp_path,
    )  # fmt: skip
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/readyz", gateway)
        page = context.new_page()  # type: ignore[attr-defined]
        page.goto(f"http://127.0.0.1:{port}/")
        expect(page.locator("#state")).to_have_text("live", timeout=WAIT_MS)
        expect(page.locator("#readonly")).to_be_visible()
        expect(page.locator("#chat")).to_be_hidden()
    finally:
        with contextlib.suppress(Exception):
            gateway.stop()
