"""Below the write() floor: CPU per delivered frame of ways to write one frame to N sockets.

    python -m roomcast.bench.uringbench --sockets 10000 --rounds 5

N loopback TCP connections; this process holds the server side, a reader process (another
process: the open-files limit is per process) connects them and drains them with epoll. Each
round, every variant writes the same pre-built WebSocket frame to all N sockets `--frames` times,
a block per variant, the order of the blocks rotated every round, so that the shared machine's
changing load hits every variant alike:

- `c-write`: `roomcast.uring.write_all`, a C loop of send(): the floor, ratio 1.00;
- `uring-32`, `uring-256`: `Ring.send_all`, 32 or 256 sends per io_uring_enter;
- `uring-256-nogil`: the same, the GIL released around the syscalls;
- `py-write`: `roomcast.uring.write_all_python`, a Python loop of os.write;
- `uvloop`: a loop of bound `transport.write` over uvloop transports on the same sockets.

The figure is the server process's CPU time (user + system, `time.process_time`) spent in the
fan-out calls, plus the CPU time the kernel's `ksoftirqd` threads spent from the call until the
reader had read the whole frame from every socket, divided by the frames delivered. On loopback
the receive side of each send runs in the sender's softirq; a system call that sends hundreds of
frames runs over the softirq budget, and the kernel hands the rest to `ksoftirqd`, whose time is
not charged to the sender: leaving it out would flatter the batched variants. Each is also
reported alone (`softirqd_us_per_frame`, exact: `/proc/<pid>/schedstat`). Ratios to `c-write`
are taken within each round, then the median over rounds is reported with its spread (min-max).
Before each frame the server waits until the reader holds at most one frame per socket unread
(the wait is not counted), so the socket buffers stay near empty, as in a gateway that keeps up;
after a variant's block it waits until everything is read, so the next block starts with none of
the last one's work left. The server is pinned to one
CPU and the reader to another where there are two (`--no-pin` to leave both free).

Bounded: `--max-seconds` for the whole run (the reader exits on its own after it, too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import mmap
import os
import platform
import resource
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

from roomcast.bench import stack
from roomcast.core.frames import text_frame
from roomcast.uring import Ring, available, write_all, write_all_python

VARIANTS = [
    "c-write",
    "uring-32",
    "uring-256",
    "uring-256-nogil",
    "py-write",
    "uvloop",
]
_COUNTER = struct.Struct("=Q")


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _pin(cpu: int) -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {cpu})


# ---- the reader process ----


def reader(port: int, n: int, counter_path: str, cpu: int, max_seconds: float) -> None:
    """Connect n sockets to the server, then read everything, publishing the byte count."""
    _raise_nofile()
    if cpu >= 0:
        _pin(cpu)
    deadline = time.monotonic() + max_seconds
    with open(counter_path, "r+b") as f:
        counter = mmap.mmap(f.fileno(), _COUNTER.size)
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    ep = select.epoll()
    for s in socks:
        ep.register(s.fileno(), select.EPOLLIN)
    buf = [bytearray(1 << 16)]
    readv = os.readv
    total = 0
    open_fds = n
    while open_fds and time.monotonic() < deadline:
        for fd, _ in ep.poll(1.0):
            try:
                got = readv(fd, buf)
            except BlockingIOError:
                continue
            except OSError:
                got = 0
            if got:
                total += got
            else:
                ep.unregister(fd)
                open_fds -= 1
        _COUNTER.pack_into(counter, 0, total)
    for s in socks:
        s.close()


# ---- the server side: this process ----


class _Sink(asyncio.Protocol):
    """A uvloop transport's protocol: the reader never sends, so nothing arrives."""

    def data_received(self, data: bytes) -> None:
        pass


class Bench:
    def __init__(self, n: int, frame: bytes, pin: bool, max_seconds: float) -> None:
        self.n = n
        self.frame = frame
        self.pin = pin
        self.deadline = time.monotonic() + max_seconds
        self.max_seconds = max_seconds
        self.sent_bytes = 0
        self.socks: list[socket.socket] = []
        self.writers: list[Callable[[bytes], None]] = []
        self.transports: list[Any] = []  # uvloop TCPTransports

    def read_bytes(self) -> int:
        value: int = _COUNTER.unpack_from(self.counter, 0)[0]
        return value

    def start(self) -> None:
        """The shared byte counter, the reader process, and the n accepted sockets."""
        with tempfile.NamedTemporaryFile(prefix="uringbench-", delete=False) as tmp:
            tmp.write(b"\0" * _COUNTER.size)
        self.counter_path = tmp.name
        with open(tmp.name, "r+b") as f:
            self.counter = mmap.mmap(f.fileno(), _COUNTER.size)
        lsock = socket.create_server(("127.0.0.1", 0), backlog=4096)
        port = lsock.getsockname()[1]
        two = (os.cpu_count() or 1) >= 2 and self.pin
        spec = f"{port},{self.n},{self.counter_path},{1 if two else -1},{self.max_seconds + 30}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roomcast.bench.uringbench", "--_reader", spec]
        )
        if two:
            _pin(0)
        lsock.settimeout(10)
        try:
            while len(self.socks) < self.n:
                if time.monotonic() > self.deadline:
                    raise TimeoutError("connections")
                s, _ = lsock.accept()
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.socks.append(s)
        finally:
            lsock.close()

    async def attach(self) -> None:
        """uvloop transports on the same sockets (for the uvloop variant)."""
        loop = asyncio.get_running_loop()
        for s in self.socks:
            transport, _ = await loop.connect_accepted_socket(_Sink, s)
            self.transports.append(transport)
            self.writers.append(transport.write)
        self.fds = [s.fileno() for s in self.socks]
        sock_of = [t.get_extra_info("socket").fileno() for t in self.transports]
        if sock_of != self.fds:
            raise RuntimeError("uvloop transports are not on the sockets' own descriptors")

    async def wait_read(self, upto: int, what: str) -> None:
        """Until the reader has read at least `upto` bytes (bounded)."""
        limit = time.monotonic() + 30
        while self.read_bytes() < upto:
            if time.monotonic() > min(limit, self.deadline):
                raise TimeoutError(f"reader stuck at {self.read_bytes()} < {upto} bytes ({what})")
            await asyncio.sleep(0.0002)

    def variants(self) -> dict[str, Callable[[], list[tuple[int, int]]]]:
        frame, fds = self.frame, self.fds
        r32, r256 = Ring(32), Ring(256)
        self.rings = [r32, r256]
        writers = self.writers

        def uv() -> list[tuple[int, int]]:
            for w in writers:
                w(frame)
            return []

        return {
            "c-write": lambda: write_all(fds, frame),
            "uring-32": lambda: r32.send_all(fds, frame),
            "uring-256": lambda: r256.send_all(fds, frame),
            "uring-256-nogil": lambda: r256.send_all(fds, frame, release_gil=True),
            "py-write": lambda: write_all_python(fds, frame),
            "uvloop": uv,
        }

    async def measure(
        self, fns: dict[str, Callable[[], list[tuple[int, int]]]], frames: int, shift: int
    ) -> dict[str, dict[str, Any]]:
        """`frames` frames of every variant, a variant's frames in one block, the order of the
        blocks rotated each round, so that a change in the machine's load hits every variant
        alike. `ksoftirqd`'s time is counted from a block's first send until the reader has read
        all of it: no deferred work of one variant is left for the next."""
        size, n = len(self.frame), self.n
        names = list(fns)
        cpu = dict.fromkeys(names, 0.0)
        softirq = dict.fromkeys(names, 0)
        failed = dict.fromkeys(names, 0)
        softirqd = stack.softirq_threads()
        await self.wait_read(self.sent_bytes, "before the round")
        k = shift % len(names)
        for name in names[k:] + names[:k]:
            k0 = stack.softirq_ns(softirqd)
            for _ in range(frames):
                if time.monotonic() > self.deadline:
                    raise TimeoutError("--max-seconds reached")
                # at most one frame per socket unread before the next (the wait is not counted)
                await self.wait_read(self.sent_bytes - n * size, name)
                t0 = time.process_time()
                bad = fns[name]()
                cpu[name] += time.process_time() - t0
                self.sent_bytes += n * size
                for _, res in bad:
                    failed[name] += 1
                    self.sent_bytes -= size - max(res, 0)
                if name == "uvloop" and any(t.get_write_buffer_size() for t in self.transports):
                    failed[name] += 1  # a transport had to buffer: a socket was full
            await self.wait_read(self.sent_bytes, name)
            softirq[name] += stack.softirq_ns(softirqd) - k0
        out = {}
        for name in names:
            delivered = frames * n - failed[name]
            own, deferred = cpu[name] / delivered * 1e6, softirq[name] / delivered / 1e3
            out[name] = {
                "us_per_frame": own + deferred,
                "own_us_per_frame": own,
                "softirqd_us_per_frame": deferred,
                "failed": failed[name],
            }
        return out

    async def aclose(self) -> None:
        for r in getattr(self, "rings", []):
            r.close()
        for t in self.transports:
            t.abort()  # uvloop owns these sockets now and closes them on its next turn
        await asyncio.sleep(0.05)
        for s in self.socks[len(self.transports) :]:
            s.close()
        if hasattr(self, "proc"):
            await asyncio.to_thread(self._reap)
        if hasattr(self, "counter_path"):
            with contextlib.suppress(OSError):
                os.unlink(self.counter_path)

    def _reap(self) -> None:
        """The reader leaves once every connection is closed; bounded."""
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    _raise_nofile()
    frame = text_frame(
        b"x" * (args.frame_bytes - 4 if args.frame_bytes > 129 else args.frame_bytes - 2)
    )
    bench = Bench(args.sockets, frame, pin=not args.no_pin, max_seconds=args.max_seconds)
    names = [v for v in VARIANTS if v in args.variants]
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        bench.start()
        await bench.attach()
        fns = bench.variants()
        fns = {name: fns[name] for name in names}
        await bench.measure(fns, 2, 0)  # warm-up, not counted
        for r in range(args.rounds):
            this = await bench.measure(fns, args.frames, r)
            rounds.append(this)
            line = "  ".join(
                f"{k} {this[k]['us_per_frame']:.2f} ({this[k]['softirqd_us_per_frame']:.2f})"
                for k in names
            )
            print(
                f"round {r + 1}/{args.rounds} (us per frame, of which ksoftirqd): {line}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        await bench.aclose()
    summary = {}
    for name in names:
        us = [rd[name]["us_per_frame"] for rd in rounds]
        ratios = (
            [rd[name]["us_per_frame"] / rd["c-write"]["us_per_frame"] for rd in rounds]
            if "c-write" in names
            else []
        )
        summary[name] = {
            "us_per_frame_median": statistics.median(us),
            "softirqd_us_per_frame_median": statistics.median(
                rd[name]["softirqd_us_per_frame"] for rd in rounds
            ),
            "us_per_frame_min": min(us),
            "us_per_frame_max": max(us),
            "ratio_median": statistics.median(ratios) if ratios else None,
            "ratio_min": min(ratios) if ratios else None,
            "ratio_max": max(ratios) if ratios else None,
            "failed": sum(rd[name]["failed"] for rd in rounds),
        }
    return {
        "scenario": "uring",
        "sockets": args.sockets,
        "frame_bytes": len(frame),
        "frames_per_variant_per_round": args.frames,
        "rounds": args.rounds,
        "pinned": not args.no_pin,
        "softirqd_threads": len(stack.softirq_threads()),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "summary": summary,
        "rounds_detail": rounds,
    }


def table(result: dict[str, Any]) -> str:
    r = result
    rows = [
        f"{r['sockets']:,} loopback TCP sockets, {r['frame_bytes']}-byte frame, "
        f"{r['frames_per_variant_per_round']} frames per variant per round, {r['rounds']} rounds",
        "",
        "| variant | us per frame: median (min-max) | of which ksoftirqd | / c-write: median "
        "| spread (min-max) | failed sends |",
        "|---|---|---|---|---|---|",
    ]
    if not r["softirqd_threads"]:
        rows[1:1] = ["", "No ksoftirqd thread visible (a PID namespace?): its time is left out."]
    for name, s in r["summary"].items():
        ratio = "-" if s["ratio_median"] is None else f"{s['ratio_median']:.2f}x"
        spread = "-" if s["ratio_min"] is None else f"{s['ratio_min']:.2f}-{s['ratio_max']:.2f}"
        lo, hi = s["us_per_frame_min"], s["us_per_frame_max"]
        us = f"{s['us_per_frame_median']:.2f} ({lo:.2f}-{hi:.2f})"
        soft = f"{s['softirqd_us_per_frame_median']:.2f}"
        rows.append(f"| {name} | {us} | {soft} | {ratio} | {spread} | {s['failed']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m roomcast.bench.uringbench", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--sockets", type=int, default=10000, help="loopback TCP connections (<= 19,000)"
    )
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians over them")
    p.add_argument("--frames", type=int, default=20, help="frames per variant per round")
    p.add_argument(
        "--frame-bytes", type=int, default=200, help="WebSocket frame size, header included"
    )
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated subset of " + ",".join(VARIANTS),
    )
    p.add_argument(
        "--no-pin", action="store_true", help="do not pin server and reader to one CPU each"
    )
    p.add_argument("--max-seconds", type=float, default=600, help="bound on the whole run")
    p.add_argument("--json", type=Path, help="write the result here")
    p.add_argument("--_reader", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._reader:
        port, n, path, cpu, secs = args._reader.split(",")
        reader(int(port), int(n), path, int(cpu), float(secs))
        return
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := set(args.variants) - set(VARIANTS):
        p.error(f"unknown variants: {sorted(unknown)}")
    if not 1 <= args.sockets <= 19000:
        p.error("--sockets must be 1..19000 (20,000 open files per process)")
    if reason := available():
        p.error(f"io_uring unavailable here: {reason}")
    result = uvloop.run(run(args))
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
