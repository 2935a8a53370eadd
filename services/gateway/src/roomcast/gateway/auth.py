"""Who may watch what: signed grants (JWT), origins, client addresses.

A viewer's token is checked once, at the upgrade or in its first `auth` message (and again on
`refresh`); what stays with the viewer is its grant, a small tuple, and the token's `exp`. A join
is checked against the grant; blobs are never checked.

Claims (see docs/security.md):
    sub    the subject; it alone may join its personal room `user:<sub>`
    rooms  list of room names the holder may join; an entry ending in `*` is a prefix
           (`match:*` grants every room starting with `match:`, `*` every room)
    exp    required; nbf, aud and iss are checked when configured (--auth-audience, --auth-issuer)
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from roomcast.core.rooms import room_error

log = logging.getLogger("roomcast.gateway")

PERSONAL_PREFIX = "user:"
"""Room `user:<sub>` is joinable only by a token whose `sub` is <sub>."""

# (personal room or "", exact rooms, prefixes): what a viewer keeps of its token.
Grant = tuple[str, tuple[str, ...], tuple[str, ...]]


class AuthError(Exception):
    """A token that does not grant anything: `code` is `token_expired` or `unauthorized`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def allowed(grant: Grant, room: str) -> bool:
    """May the holder of `grant` join `room`?"""
    personal, exact, prefixes = grant
    if room.startswith(PERSONAL_PREFIX):
        return room == personal
    if room in exact:
        return True
    return any(room.startswith(p) for p in prefixes)


def parse_grant(claims: dict[str, Any]) -> Grant:
    sub = claims.get("sub")
    personal = ""
    if isinstance(sub, str) and sub and room_error(PERSONAL_PREFIX + sub) is None:
        personal = PERSONAL_PREFIX + sub
    rooms = claims.get("rooms", [])
    if isinstance(rooms, str):
        rooms = [rooms]
    if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
        raise AuthError("unauthorized", "claim `rooms` must be a list of strings")
    exact = tuple(sorted({r for r in rooms if not r.endswith("*")}))
    prefixes = tuple(sorted({r[:-1] for r in rooms if r.endswith("*")}))
    # Viewers with the same rooms claim share one pair of tuples (bounded: reset when large).
    shared = _GRANTS.get((exact, prefixes))
    if shared is None:
        if len(_GRANTS) >= 4096:
            _GRANTS.clear()
        shared = _GRANTS[(exact, prefixes)] = (exact, prefixes)
    return personal, shared[0], shared[1]


_GRANTS: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[tuple[str, ...], tuple[str, ...]]] = {}


class Verifier:
    """Checks tokens with one kind of key: a shared secret (HS256), a PEM public key (RS256 or
    ES256, from the key's type) or a JWKS file (reloaded when it changes on disk)."""

    def __init__(
        self,
        secret: str = "",
        public_key: str = "",
        jwks: str = "",
        audience: str = "",
        issuer: str = "",
        leeway_s: float = 0.0,
    ) -> None:
        if sum(bool(x) for x in (secret, public_key, jwks)) != 1:
            raise ValueError(
                "--auth jwt needs exactly one key: --auth-secret (HS256), --auth-public-key "
                "(RS256/ES256 PEM file) or --auth-jwks (JWKS file); or run with --auth off"
            )
        self.audience = audience or None
        self.issuer = issuer or None
        self.leeway = leeway_s
        self.jwks_path = jwks
        self._jwks_stamp: tuple[float, int] | None = None
        self._jwks: dict[str, tuple[Any, str]] = {}  # kid -> (key, algorithm)
        self._key: Any = None
        self._algorithms: list[str] = []
        if secret:
            self._key, self._algorithms = secret, ["HS256"]
        elif public_key:
            with open(public_key, "rb") as f:
                key = load_pem_public_key(f.read())
            if isinstance(key, rsa.RSAPublicKey):
                self._algorithms = ["RS256"]
            elif isinstance(key, ec.EllipticCurvePublicKey):
                self._algorithms = ["ES256"]
            else:
                raise ValueError(f"{public_key}: an RSA or EC (P-256) public key is needed")
            self._key = key
        else:
            if not self.reload_if_changed():
                raise ValueError(f"{jwks}: no usable key in the JWKS file")

    def reload_if_changed(self) -> bool:
        """Re-read the JWKS file if its mtime or size changed; True if keys are loaded."""
        if not self.jwks_path:
            return True
        try:
            st = os.stat(self.jwks_path)
        except OSError as exc:
            log.error("JWKS file unreadable; keeping the keys loaded before: %s", exc)
            return bool(self._jwks)
        stamp = (st.st_mtime, st.st_size)
        if stamp == self._jwks_stamp:
            return bool(self._jwks)
        try:
            with open(self.jwks_path) as f:
                data = json.load(f)
            keys: dict[str, tuple[Any, str]] = {}
            for jwk in data.get("keys", []):
                k = jwt.PyJWK(jwk)
                keys[jwk.get("kid", "")] = (k.key, k.algorithm_name)
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            log.error("JWKS file not loaded; keeping the keys loaded before: %s", exc)
            return bool(self._jwks)
        self._jwks_stamp = stamp
        if keys:
            self._jwks = keys
            log.info("JWKS loaded", extra={"keys": len(keys), "path": self.jwks_path})
        return bool(self._jwks)

    def _key_for(self, token: str) -> tuple[Any, list[str]]:
        if not self.jwks_path:
            return self._key, self._algorithms
        kid = jwt.get_unverified_header(token).get("kid", "")
        found = self._jwks.get(kid)
        if found is None and not kid and len(self._jwks) == 1:
            found = next(iter(self._jwks.values()))
        if found is None:
            raise AuthError("unauthorized", f"no key with kid {kid!r} in the JWKS")
        return found[0], [found[1]]

    def verify(self, token: str) -> tuple[Grant, float]:
        """The grant and the expiry (unix seconds) of a valid token; AuthError otherwise."""
        try:
            key, algorithms = self._key_for(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token_expired", "token has expired") from None
        except jwt.PyJWTError as exc:
            raise AuthError("unauthorized", f"invalid token: {exc}") from None
        return parse_grant(claims), float(claims["exp"])


@dataclass(frozen=True, slots=True)
class ClientAddress:
    """The client's IP: the peer, or (from a trusted proxy) the last untrusted X-Forwarded-For."""

    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, cidrs: str) -> ClientAddress:
        parts = [c.strip() for c in cidrs.split(",") if c.strip()]
        nets = [ipaddress.ip_network(c, strict=False) for c in parts]
        return cls(tuple(nets))

    def _is_trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def client_ip(self, peer: str, forwarded_for: Iterable[str]) -> str:
        if not self.trusted or not self._is_trusted(peer):
            return peer
        hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return peer  # garbage from the proxy's client: count it on the proxy
        return hops[0] if hops else peer


def parse_origins(origins: str) -> frozenset[str]:
    return frozenset(o.strip().rstrip("/").lower() for o in origins.split(",") if o.strip())


def origin_listed(origin: str, origins: frozenset[str]) -> bool:
    """The request's `Origin` is one of `parse_origins`' (compared as they are stored)."""
    return origin.rstrip("/").lower() in origins
