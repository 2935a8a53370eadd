"""`roomcast token`: mint a viewer token (for development and tests; production tokens come
from your own auth service, signed with the same key)."""

from __future__ import annotations

import re
import time
from typing import Any

import click
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if m is None:
        raise click.BadParameter(f"{text!r}: a number with an optional unit s, m, h or d")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def mint(
    key: Any,
    algorithm: str,
    sub: str,
    rooms: list[str],
    ttl_s: float,
    audience: str = "",
    issuer: str = "",
    kid: str = "",
    now: float | None = None,
) -> str:
    """A signed token granting `rooms` (names, or prefixes ending in `*`) to `sub`."""
    now = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": sub, "rooms": rooms, "iat": int(now), "exp": int(now + ttl_s)}
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid} if kid else None)


@click.command()
@click.option("--sub", required=True, help="Subject: may join its personal room user:<sub>.")
@click.option("--room", "rooms", multiple=True,
              help="Room it may join; 'match:*': a prefix, '*': all. Repeatable.")  # fmt: skip
@click.option("--ttl", default="1h", show_default=True, help="Lifetime: 90s, 30m, 1h, 7d.")
@click.option("--secret", envvar="ROOMCAST_GATEWAY_AUTH_SECRET", show_envvar=True,
              help="HS256 shared secret (the gateway's --auth-secret).")  # fmt: skip
@click.option("--private-key", type=click.Path(exists=True, dir_okay=False),
              help="PEM private key: RS256 (RSA) or ES256 (P-256).")  # fmt: skip
@click.option("--kid", default="", help="Key id header (to pick a key of a JWKS).")
@click.option("--aud", default="", help="Audience claim (the gateway's --auth-audience).")
@click.option("--iss", default="", help="Issuer claim (the gateway's --auth-issuer).")
def token(
    sub: str,
    rooms: tuple[str, ...],
    ttl: str,
    secret: str | None,
    private_key: str | None,
    kid: str,
    aud: str,
    iss: str,
) -> None:
    """Print a signed viewer token for the gateway's --auth jwt.

    \b
    roomcast token --sub alice --room 'match:*' --ttl 1h --secret "$SECRET"
    ws://HOST:8080/ws?room=match:1&token=<the token>
    """
    if bool(secret) == bool(private_key):
        raise click.UsageError("give exactly one of --secret and --private-key")
    if secret:
        key: Any = secret
        algorithm = "HS256"
    else:
        assert private_key is not None
        with open(private_key, "rb") as f:
            key = load_pem_private_key(f.read(), password=None)
        if isinstance(key, rsa.RSAPrivateKey):
            algorithm = "RS256"
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            algorithm = "ES256"
        else:
            raise click.UsageError("--private-key must be an RSA or EC (P-256) key")
    click.echo(mint(key, algorithm, sub, list(rooms), parse_ttl(ttl), aud, iss, kid))
