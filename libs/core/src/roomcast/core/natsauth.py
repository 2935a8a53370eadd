"""NATS credentials and TLS, the same for every roomcast process that connects to NATS."""

from __future__ import annotations

import os
import ssl
from typing import Any, Protocol


class NatsAuth(Protocol):
    @property
    def nats_user(self) -> str: ...
    @property
    def nats_password(self) -> str: ...
    @property
    def nats_token(self) -> str: ...
    @property
    def nats_creds(self) -> str: ...
    @property
    def nats_nkey_seed(self) -> str: ...
    @property
    def nats_tls_ca(self) -> str: ...


def nats_servers(urls: str) -> list[str]:
    """`--nats` as nats-py wants it: the comma-separated URLs of a cluster, one per item
    (a single string with commas is refused: "invalid connect url option")."""
    servers = [u.strip() for u in urls.split(",") if u.strip()]
    if not servers:
        raise ValueError("no NATS URL given")
    return servers


def nats_connect_options(cfg: NatsAuth) -> dict[str, Any]:
    """`nats.connect()` keyword arguments: user/password, token, a .creds file, an NKey seed
    file, a TLS CA."""
    opts: dict[str, Any] = {}
    if cfg.nats_user:
        opts["user"], opts["password"] = cfg.nats_user, cfg.nats_password
    if cfg.nats_token:
        opts["token"] = cfg.nats_token
    if cfg.nats_creds:
        opts["user_credentials"] = cfg.nats_creds
    if cfg.nats_nkey_seed:
        opts["nkeys_seed"] = cfg.nats_nkey_seed
    if cfg.nats_tls_ca:
        opts["tls"] = ssl.create_default_context(cafile=cfg.nats_tls_ca)
    return opts


def check_nats_auth(cfg: NatsAuth) -> str | None:
    """What is wrong with the settings, or None."""
    if cfg.nats_user and not cfg.nats_password:
        return "--nats-user needs --nats-password"
    if cfg.nats_password and not cfg.nats_user:
        return "--nats-password needs --nats-user"
    for option, path in (
        ("--nats-creds", cfg.nats_creds),
        ("--nats-nkey-seed", cfg.nats_nkey_seed),
    ):
        if path and not os.path.isfile(path):
            return f"{option} {path}: no such file"
    if cfg.nats_tls_ca:
        try:
            ssl.create_default_context(cafile=cfg.nats_tls_ca)
        except (OSError, ssl.SSLError) as exc:
            return f"--nats-tls-ca {cfg.nats_tls_ca}: {exc}"
    return None
