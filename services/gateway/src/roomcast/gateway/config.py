"""Every gateway setting, with its default, in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass

from roomcast.core.rooms import HISTORY_PREFIX, SUBJECT_PREFIX


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    nats: str = "nats://127.0.0.1:4222"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = os.cpu_count() or 1
    metrics_port: int = 9465  # the group's /metrics, /healthz, /readyz; 0: off
    metrics_host: str = "127.0.0.1"
    subject_prefix: str = SUBJECT_PREFIX
    stream: str = "ROOMCAST_ROOMS"  # the JetStream stream holding the rooms' history
    history_prefix: str = HISTORY_PREFIX  # its subjects: HISTORY_PREFIX.ROOM
    ring_blobs: int = 64  # recent blobs kept per active room (resumes, slow viewers)
    max_replay_blobs: int = 1000  # a resume missing more is answered recovered:false
    max_viewers: int = 15_000  # per worker; the open-files limit (20,000 here) is the ceiling
    max_connects_per_s: float = 2_000.0  # per worker; over it: 503 + Retry-After before upgrade
    max_rooms_per_conn: int = 32
    max_message_bytes: int = 4096  # client -> server; over it: close 1009
    write_buffer_high: int = 256 * 1024  # per viewer; over it, frames for that viewer are dropped
    slow_grace_s: float = 5.0  # over the high-water mark this long: closed with 4008
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    drain_seconds: float = 10.0  # SIGTERM: viewers closed with 1012, paced over this period
    close_timeout_s: float = 5.0  # after our close frame, abort a TCP peer that does not close
    handshake_timeout_s: float = 10.0  # connect -> complete upgrade request, or the TCP is dropped
    handshake_idle_s: float = 5.0  # silence allowed before the first complete request
    max_handshakes: int = 1024  # per worker, in progress at once; past it the oldest is dropped
    fd_reserve: int = 64  # descriptors kept free (health probes answer even at --max-viewers)
    fanout: str = "auto"  # auto | uring | send | write: how a frame reaches a room's viewers
    compress: bool = True  # permessage-deflate, each blob compressed once for every viewer
    compress_level: int = 1  # zlib level, paid once per blob per worker
    compress_min_bytes: int = 256  # smaller blobs go plain to everyone
    auth: str = "jwt"  # jwt: every viewer needs a signed grant; off: anyone may join any room
    auth_secret: str = ""  # HS256 shared secret
    auth_public_key: str = ""  # PEM file: RS256 (RSA key) or ES256 (P-256 key)
    auth_jwks: str = ""  # JWKS file, reloaded when it changes
    auth_audience: str = ""  # required `aud` when set
    auth_issuer: str = ""  # required `iss` when set
    auth_timeout_s: float = 5.0  # no token in the URL: the first `auth` message within this
    allowed_origins: str = ""  # comma-separated; empty: any Origin (or none)
    max_connects_per_ip_per_s: float = 0.0  # per client IP per worker; 0: no per-IP limit
    trusted_proxies: str = ""  # CIDRs whose X-Forwarded-For names the client
    tls_cert: str = ""  # PEM certificate chain: serve wss:// (reloaded on SIGHUP)
    tls_key: str = ""
    nats_user: str = ""
    nats_password: str = ""
    nats_token: str = ""
    nats_creds: str = ""  # NATS .creds file (JWT + NKey seed)
    nats_nkey_seed: str = ""  # file holding a user NKey seed (SU...), for NKey users
    nats_tls_ca: str = ""  # CA bundle to verify a tls:// NATS server
    count_interval_s: float = 2.0  # viewer counts: published and pushed at most this often
    backlog: int = 4096
    reuse_port: bool = False  # set by the supervisor when several workers share the port
    control_dir: str = ""  # set by the launcher: where workers hand over their metrics
