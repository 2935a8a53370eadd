"""`roomcast gateway`: the WebSocket edge."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from roomcast.gateway.config import GatewayConfig

_D = GatewayConfig()


F = TypeVar("F", bound=Callable[..., Any])


def _opt(*names: str, help: str, **kw: Any) -> Callable[[F], F]:
    kw.setdefault("show_default", True)
    return click.option(*names, show_envvar=True, help=help, **kw)


@click.command()
@_opt("--nats", default=_D.nats, help="NATS server URL(s), comma-separated.")
@_opt("--host", default=_D.host, help="Address to listen on (0.0.0.0 in containers).")
@_opt("--port", default=_D.port, type=click.IntRange(0, 65535), help="WebSocket and HTTP port.")
@_opt("--workers", default=_D.workers, type=click.IntRange(min=1),
      help="Worker processes sharing the port (SO_REUSEPORT); default: CPU count.")  # fmt: skip
@_opt("--metrics-port", default=_D.metrics_port, type=click.IntRange(0, 65535),
      help="/metrics, /healthz, /readyz for the whole group (all workers); 0: off.")  # fmt: skip
@_opt("--metrics-host", default=_D.metrics_host,
      help="Address of the metrics endpoint (0.0.0.0 for Prometheus in a cluster).")  # fmt: skip
@_opt("--subject-prefix", default=_D.subject_prefix,
      help="Room R's blobs arrive on PREFIX.R (as ingest publishes them).")  # fmt: skip
@_opt("--stream", default=_D.stream,
      help="JetStream stream of the rooms' history (resumes, slow viewers read it).")  # fmt: skip
@_opt("--history-prefix", default=_D.history_prefix,
      help="Room R's history is on PREFIX.R in --stream (as ingest stores it).")  # fmt: skip
@_opt("--ring-blobs", default=_D.ring_blobs, type=click.IntRange(min=1),
      help="Recent blobs kept per active room: most resumes are served from them.")  # fmt: skip
@_opt("--max-replay-blobs", default=_D.max_replay_blobs, type=click.IntRange(min=0),
      help="A resume missing more blobs than this is answered recovered:false.")  # fmt: skip
@_opt("--max-viewers", default=_D.max_viewers, type=click.IntRange(min=1),
      help="Viewers per worker; past it, new connections get 503 before the upgrade.")  # fmt: skip
@_opt("--max-connects-per-s", default=_D.max_connects_per_s, type=click.FloatRange(min=1),
      help="New connections per second per worker; past it, 503 + Retry-After.")  # fmt: skip
@_opt("--max-rooms-per-conn", default=_D.max_rooms_per_conn, type=click.IntRange(min=1),
      help="Rooms one connection may be in; a join past it closes with 4003.")  # fmt: skip
@_opt("--max-message-bytes", default=_D.max_message_bytes, type=click.IntRange(min=64),
      help="Largest client message; a bigger one closes the connection with 1009.")  # fmt: skip
@_opt("--write-buffer-high", default=_D.write_buffer_high, type=click.IntRange(min=1024),
      help="Per-viewer write buffer high-water mark (bytes); over it, the viewer is caught "
      "up from its rooms' logs once it drains.")  # fmt: skip
@_opt("--slow-grace-s", default=_D.slow_grace_s, type=click.FloatRange(min=0),
      help="Over the high-water mark this long: closed with 4008 (resumable).")  # fmt: skip
@_opt("--ping-interval-s", default=_D.ping_interval_s, type=click.FloatRange(min=0.1),
      help="WebSocket ping to every viewer this often.")  # fmt: skip
@_opt("--ping-timeout-s", default=_D.ping_timeout_s, type=click.FloatRange(min=0.1),
      help="Close a viewer whose pong has not come back after this long.")  # fmt: skip
@_opt("--fanout", default=_D.fanout, type=click.Choice(["auto", "uring", "send", "write"]),
      help="How a frame reaches a room's viewers: io_uring batches, a C send() loop, or "
      "transport.write each; auto picks the first that works here (logged).")  # fmt: skip
@_opt("--compress/--no-compress", default=_D.compress,
      help="Offer permessage-deflate; a blob is compressed once for all who accept.")  # fmt: skip
@_opt("--compress-level", default=_D.compress_level, type=click.IntRange(1, 9),
      help="zlib level for blobs (paid once per blob per worker, not per viewer).")  # fmt: skip
@_opt("--compress-min-bytes", default=_D.compress_min_bytes, type=click.IntRange(min=0),
      help="Blobs shorter than this go uncompressed to everyone.")  # fmt: skip
@_opt("--handshake-timeout-s", default=_D.handshake_timeout_s, type=click.FloatRange(min=0.1),
      help="Time to complete the upgrade request; past it the connection is dropped.")  # fmt: skip
@_opt("--handshake-idle-s", default=_D.handshake_idle_s, type=click.FloatRange(min=0.1),
      help="Silence allowed before the first complete request, then dropped.")  # fmt: skip
@_opt("--max-handshakes", default=_D.max_handshakes, type=click.IntRange(min=1),
      help="Handshakes in progress per worker; past it the oldest one is dropped.")  # fmt: skip
@_opt("--fd-reserve", default=_D.fd_reserve, type=click.IntRange(min=8),
      help="Descriptors kept free so probes answer at --max-viewers (lowered to fit).")  # fmt: skip
@_opt("--drain-seconds", default=_D.drain_seconds, type=click.FloatRange(min=0),
      help="On SIGTERM, close viewers with 1012 paced over this period, then exit.")  # fmt: skip
@_opt("--count-interval-s", default=_D.count_interval_s, type=click.FloatRange(min=0.25),
      help="Viewer counts: each worker publishes its rooms' counts and viewers get `count` "
      "messages at most this often; a worker silent for 3 intervals is forgotten.")  # fmt: skip
@_opt("--auth", default=_D.auth, type=click.Choice(["jwt", "off"]),
      help="jwt: viewers need a signed grant (docs/security.md); off: anyone joins.")  # fmt: skip
@_opt("--auth-secret", default=_D.auth_secret, show_default=False,
      help="HS256 shared secret for viewer tokens (prefer the environment variable).")  # fmt: skip
@_opt("--auth-public-key", default=_D.auth_public_key,
      help="PEM public key file for RS256 (RSA) or ES256 (P-256) viewer tokens.")  # fmt: skip
@_opt("--auth-jwks", default=_D.auth_jwks,
      help="JWKS file of viewer-token keys (by kid); re-read when it changes.")  # fmt: skip
@_opt("--auth-audience", default=_D.auth_audience, help="Required `aud` claim, if set.")
@_opt("--auth-issuer", default=_D.auth_issuer, help="Required `iss` claim, if set.")
@_opt("--auth-timeout-s", default=_D.auth_timeout_s, type=click.FloatRange(min=0.1),
      help="No token in the URL: an `auth` message must come within this, else 4001.")  # fmt: skip
@_opt("--allowed-origins", default=_D.allowed_origins,
      help="Comma-separated Origins browsers may connect from (else 403); empty: any.")  # fmt: skip
@_opt("--max-connects-per-ip-per-s", default=_D.max_connects_per_ip_per_s,
      type=click.FloatRange(min=0),
      help="New connections per second per client IP per worker (else 429); 0: off.")  # fmt: skip
@_opt("--trusted-proxies", default=_D.trusted_proxies,
      help="Comma-separated CIDRs whose X-Forwarded-For names the client IP.")  # fmt: skip
@_opt("--tls-cert", default=_D.tls_cert,
      help="PEM certificate chain: serve wss:// (with --tls-key); re-read on SIGHUP.")  # fmt: skip
@_opt("--tls-key", default=_D.tls_key, help="PEM private key of --tls-cert.")
@_opt("--nats-user", default=_D.nats_user, help="NATS user (with --nats-password).")
@_opt("--nats-password", default=_D.nats_password, show_default=False, help="NATS password.")
@_opt("--nats-token", default=_D.nats_token, show_default=False, help="NATS auth token.")
@_opt("--nats-creds", default=_D.nats_creds, help="NATS credentials file (JWT + NKey seed).")
@_opt("--nats-nkey-seed", default=_D.nats_nkey_seed, help="File holding a NATS user NKey seed.")
@_opt("--nats-tls-ca", default=_D.nats_tls_ca,
      help="CA bundle to verify the NATS server's TLS certificate (tls:// URLs).")  # fmt: skip
@_opt("--log-format", default="text", type=click.Choice(["text", "json"]),
      help="Log lines for people (text) or machines (json).")  # fmt: skip
@_opt("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]),
      help="Least severe log level shown.")  # fmt: skip
def gateway(log_format: str, log_level: str, **options: object) -> None:
    """Run the WebSocket edge gateway: viewers at ws://HOST:PORT/ws?room=R.

    \b
    Each worker process holds its own viewers and rooms and subscribes a room's NATS subject
    while the room has a local viewer. Every blob is framed once and the same bytes are written
    to every viewer of the room. Viewers send {"type":"join"|"leave","room":R} or
    {"type":"ping"}. The viewer port also answers GET /healthz and /readyz (this worker: 503
    while draining or NATS is down) and GET /rooms/R (R's viewers across the cluster). On
    --metrics-port: /metrics (Prometheus, every worker's series with a `worker` label), /healthz
    and /readyz for the whole group. SIGTERM drains: no new viewers, /readyz 503, viewers closed
    with 1012 over --drain-seconds, exit 0. See docs/protocol.md for close codes and
    docs/operations.md for metrics.

    \b
    Each worker raises its soft open-files limit to the hard one and fits --max-viewers,
    --max-handshakes and --fd-reserve under it (logged at start). Unfinished handshakes are
    dropped after --handshake-timeout-s (or --handshake-idle-s of silence).
    """
    from roomcast.core.logs import setup_logging
    from roomcast.gateway.worker import run_single, supervise

    setup_logging(log_level, log_format)
    cfg = GatewayConfig(**options)  # type: ignore[arg-type]
    check_config(cfg)
    if cfg.workers == 1:
        run_single(cfg, log_level, log_format)
        return
    if cfg.port == 0:
        raise click.BadParameter(
            "several workers need a fixed --port to share", param_hint="--port"
        )
    sys.exit(supervise(cfg, log_level, log_format))


def check_config(cfg: GatewayConfig) -> None:
    """Refuse to start on settings that cannot work, naming the options to fix."""
    from roomcast.gateway.auth import ClientAddress, Verifier

    if cfg.auth == "jwt":
        try:
            Verifier(cfg.auth_secret, cfg.auth_public_key, cfg.auth_jwks)
        except (ValueError, OSError) as exc:
            raise click.UsageError(str(exc)) from None
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    from roomcast.core.natsauth import check_nats_auth

    if (why := check_nats_auth(cfg)) is not None:
        raise click.UsageError(why)
    try:
        ClientAddress.parse(cfg.trusted_proxies)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--trusted-proxies") from None


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    gateway()
