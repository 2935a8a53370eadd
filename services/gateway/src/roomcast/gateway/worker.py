"""Running the gateway: one worker process, or a supervisor over N of them on one port."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import resource
import shutil
import signal
import ssl
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess

from roomcast.core.logs import setup_logging
from roomcast.gateway import metrics
from roomcast.gateway.config import GatewayConfig
from roomcast.gateway.connection import Viewer
from roomcast.gateway.engine import Gateway
from roomcast.gateway.probes import GroupEndpoint, socket_path

log = logging.getLogger("roomcast.gateway")


def raise_open_files_limit(cfg: GatewayConfig) -> GatewayConfig:
    """Raise the soft open-files limit to the hard one, and fit the connection caps under it.

    Every connection is a descriptor: viewers, handshakes in progress and `fd_reserve` spare ones
    (so /healthz and /readyz still answer at --max-viewers) must fit, or accept() fails with
    EMFILE and the worker stops answering anyone. If they do not fit, --max-viewers is lowered.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit: %s", exc)
    budget = soft - cfg.fd_reserve - 32  # 32: the process's own files, NATS, the listener
    viewers = min(cfg.max_viewers, budget - cfg.max_handshakes)
    log.info(
        "open-files limit",
        extra={"soft": soft, "hard": hard, "max_viewers": viewers,
               "max_handshakes": cfg.max_handshakes, "fd_reserve": cfg.fd_reserve},
    )  # fmt: skip
    if viewers < 1:
        raise SystemExit(
            f"open-files limit {soft} leaves no room for viewers: lower --max-handshakes"
            f" ({cfg.max_handshakes}) or --fd-reserve ({cfg.fd_reserve}), or raise `ulimit -n`"
        )
    if viewers < cfg.max_viewers:
        log.warning(
            "--max-viewers lowered to fit the open-files limit",
            extra={"asked": cfg.max_viewers, "max_viewers": viewers, "limit": soft},
        )
        cfg = dataclasses.replace(cfg, max_viewers=viewers)
    return cfg


class _MetricsHandover(asyncio.Protocol):
    """Answers the group endpoint: this worker's series, then close. Runs on the event loop,
    so a worker whose loop is stuck does not answer (and the probes say so)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(metrics.worker_text())  # type: ignore[attr-defined]
        transport.close()


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """Anything that escapes a callback is logged, never lost, and never stops the worker."""
    exc = context.get("exception")
    log.error(
        "unhandled error in the event loop: %s",
        context.get("message"),
        exc_info=exc if isinstance(exc, BaseException) else None,
    )


def tls_context(cfg: GatewayConfig) -> ssl.SSLContext | None:
    if not cfg.tls_cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    return ctx


def _reload_tls(ctx: ssl.SSLContext, cfg: GatewayConfig) -> None:
    """SIGHUP: new handshakes use the certificate now on disk; a bad one keeps the old."""
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as exc:
        log.error("TLS certificate not reloaded; keeping the old one: %s", exc)
        return
    log.info("TLS certificate reloaded", extra={"cert": cfg.tls_cert})


async def serve(cfg: GatewayConfig, worker_id: int = 0, stop: asyncio.Event | None = None) -> None:
    """Run one gateway worker until SIGTERM/SIGINT (or `stop`), then drain and return."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_log_loop_exception)
    cfg = raise_open_files_limit(cfg)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gw = Gateway(cfg, worker_id)
    tls = tls_context(cfg)
    if tls is not None:
        loop.add_signal_handler(signal.SIGHUP, _reload_tls, tls, cfg)
    # Listen first: probes answer (readyz 503: NATS not connected) while NATS is unreachable,
    # and SIGTERM stops a worker that is still waiting for it.
    handover = None
    if cfg.control_dir:  # hand our series to the group's endpoint over a private socket
        path = socket_path(cfg.control_dir, worker_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        # Kept referenced: uvloop closes a listening server that is garbage-collected.
        handover = await loop.create_unix_server(_MetricsHandover, path)
    server = await loop.create_server(
        lambda: Viewer(gw),
        cfg.host,
        cfg.port,
        backlog=cfg.backlog,
        reuse_port=cfg.reuse_port or None,
        ssl=tls,
    )
    housekeeping = asyncio.create_task(gw.housekeeping())
    connecting = asyncio.create_task(gw.connect())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if connecting.done():
        connecting.result()  # could not connect at all: exit with the error (restarted)
        log.info(
            "gateway worker listening",
            extra={"url": f"{'wss' if tls else 'ws'}://{cfg.host}:{cfg.port}/ws",
                   "worker": worker_id, "pid": os.getpid(), "fanout": gw.fanout_path},
        )  # fmt: skip
        await stopping
    else:
        connecting.cancel()
    # Drain: the port stays open so /readyz can say 503 and new viewers get 503 (go elsewhere).
    await gw.drain()
    server.close()
    if handover is not None:
        handover.close()
    housekeeping.cancel()
    await gw.close()
    log.info("gateway worker stopped", extra={"worker": worker_id})


def run_worker(cfg: GatewayConfig, worker_id: int, log_level: str, log_format: str) -> None:
    """Entry point of one worker process (under `supervise`, or alone)."""
    import uvloop

    setup_logging(log_level, log_format)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(cfg, worker_id))


def run_single(cfg: GatewayConfig, log_level: str, log_format: str) -> None:
    """One worker in this process, with the group endpoint on a thread of its own."""
    with _control_dir(cfg) as cfg:
        endpoint = _endpoint(cfg, 1)
        try:
            run_worker(cfg, 0, log_level, log_format)
        finally:
            if endpoint is not None:
                endpoint.stop()


@contextlib.contextmanager
def _control_dir(cfg: GatewayConfig) -> Iterator[GatewayConfig]:
    """A private directory for the workers' metrics sockets (none without --metrics-port)."""
    if not cfg.metrics_port:
        yield cfg
        return
    path = tempfile.mkdtemp(prefix="roomcast-gateway-")
    try:
        yield dataclasses.replace(cfg, control_dir=path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _endpoint(cfg: GatewayConfig, workers: int) -> GroupEndpoint | None:
    if not cfg.metrics_port:
        return None
    return GroupEndpoint(cfg.metrics_host, cfg.metrics_port, cfg.control_dir, workers).start()


def supervise(cfg: GatewayConfig, log_level: str, log_format: str) -> int:
    """Run cfg.workers processes on one port (SO_REUSEPORT); restart any that dies.

    SIGTERM/SIGINT are passed to every worker, which drain; returns when all have exited.
    """
    with _control_dir(dataclasses.replace(cfg, reuse_port=True)) as cfg:
        endpoint = _endpoint(cfg, cfg.workers)
        try:
            return _supervise(cfg, log_level, log_format)
        finally:
            if endpoint is not None:
                endpoint.stop()


def _supervise(cfg: GatewayConfig, log_level: str, log_format: str) -> int:
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def start(i: int) -> BaseProcess:
        p = ctx.Process(
            target=run_worker, args=(cfg, i, log_level, log_format), name=f"gateway-{i}"
        )
        p.start()
        return p

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in workers.values():
            if p.pid and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    def on_hup(signum: int, frame: object) -> None:
        for p in workers.values():
            if p.pid and p.is_alive():
                os.kill(p.pid, signal.SIGHUP)

    workers = {i: start(i) for i in range(cfg.workers)}
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if cfg.tls_cert:  # the workers re-read the certificate
        signal.signal(signal.SIGHUP, on_hup)
    log.info(
        "gateway listening",
        extra={"url": f"ws://{cfg.host}:{cfg.port}/ws", "workers": cfg.workers},
    )
    backoff = dict.fromkeys(workers, 0.5)
    while True:
        for i, p in list(workers.items()):
            if p.is_alive():
                continue
            p.join()
            if stopping:
                del workers[i]
                continue
            log.error(
                "gateway worker died; restarting",
                extra={"worker": i, "exitcode": p.exitcode, "in_s": backoff[i]},
            )
            time.sleep(backoff[i])
            backoff[i] = min(backoff[i] * 2, 10.0)
            workers[i] = start(i)
        if stopping and not workers:
            return 0
        time.sleep(0.1)
