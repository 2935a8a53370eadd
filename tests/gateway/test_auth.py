"""Who may watch: signed grants, origins, per-IP limits, TLS, NATS credentials.

Every rejection is pinned to its exact HTTP status or close code, with a good viewer of the same
room still receiving blobs afterwards.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from roomcast.devstack.nats import nats_server_binary
from roomcast.gateway.token import mint
from tests.gateway.conftest import Gateway, join_message, publish
from tests.support import free_port

SECRET = "test-secret-that-is-long-enough-for-hs256"
JWT_ARGS = ("--auth", "jwt", "--auth-secret", SECRET)


def token(*rooms: str, sub: str = "alice", ttl: float = 60, key: object = SECRET,
          alg: str = "HS256", kid: str = "") -> str:  # fmt: skip
    return mint(key, alg, sub, list(rooms), ttl, kid=kid)


def upgrade(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Send an upgrade request on a raw socket: the status code and body of the answer."""
    lines = [
        f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
        "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]  # fmt: skip
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        if not data.startswith(b"HTTP/1.1 101"):
            s.settimeout(2)
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except TimeoutError:
                pass
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def ws(gw: Gateway, query: str = "", **kw: object) -> ClientConnection:
    return gw.stack.enter_context(
        connect(f"{gw.ws_url}?{query}", **{"compression": None, **kw})  # type: ignore[arg-type]
    )


def recv(c: ClientConnection, timeout: float = 10) -> dict[str, object]:
    """The next message but viewer counts (they come whenever a room's count changes)."""
    deadline = time.monotonic() + timeout
    while True:
        msg: dict[str, object] = json.loads(c.recv(timeout=max(0, deadline - time.monotonic())))
        if msg["type"] != "count":
            return msg


def closed_with(c: ClientConnection, timeout: float = 10) -> tuple[int | None, list[object]]:
    """Read until the gateway closes: its close code, and the messages before it (no counts)."""
    got: list[object] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            got.append(recv(c, timeout=deadline - time.monotonic()))
    except ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd else None), got
    raise AssertionError(f"not closed within {timeout}s; got {got}")


def good_viewer_still_served(gw: Gateway, good: ClientConnection, room: str, offset: int) -> None:
    gw.publish(room, gw.blob(room, offset))
    msg = recv(good)
    assert msg["type"] == "blob" and msg["room"] == room, msg


@pytest.fixture
def jwt_gateway(gateway: Callable[..., Gateway]) -> Callable[..., Gateway]:
    def start(*extra: str) -> Gateway:
        return gateway(*JWT_ARGS, *extra)

    return start


def test_jwt_without_a_key_refuses_to_start() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "roomcast.cli", "gateway", "--auth", "jwt", "--port", "0"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "ROOMCAST_GATEWAY_AUTH_SECRET": ""},
    )  # fmt: skip
    assert out.returncode == 2, out
    for option in ("--auth-secret", "--auth-public-key", "--auth-jwks", "--auth off"):
        assert option in out.stderr, out.stderr


def test_url_token_grants_rooms_and_every_bad_token_is_refused_at_the_upgrade(
    jwt_gateway: Callable[..., Gateway],
) -> None:
    gw = jwt_gateway()
    good = ws(gw, f"room=match:1&token={token('match:*')}")
    assert recv(good) == {"type": "joined", "room": "match:1"}
    forged = mint("another-secret-of-sufficient-length!!", "HS256", "alice", ["*"], 60)
    cases = [
        ("room=match:1", 101),  # no token: upgraded, must send `auth` (tested below)
        (f"room=match:1&token={token('lobby')}", 403),  # not granted
        (f"room=match:1&token={forged}", 401),  # bad signature
        (f"room=match:1&token={token('match:*', ttl=-30)}", 401),  # expired
        ("room=match:1&token=not-a-jwt", 401),
        (f"room=match:1&token={mint(SECRET, 'HS256', 'a', ['*'], 60) + 'x'}", 401),
    ]
    for query, want in cases:
        status, body = upgrade(gw.port, f"/ws?{query}")
        assert status == want, (query, status, body)
    assert b"token_expired" in upgrade(gw.port, f"/ws?token={token('x', ttl=-30)}")[1]
    good_viewer_still_served(gw, good, "match:1", 1)


def test_token_in_the_subprotocol_header(jwt_gateway: Callable[..., Gateway]) -> None:
    gw = jwt_gateway()
    c = ws(gw, "room=lobby", subprotocols=["roomcast", f"roomcast.token.{token('lobby')}"])
    assert c.subprotocol == "roomcast"
    assert recv(c) == {"type": "joined", "room": "lobby"}
    bad = f"roomcast, roomcast.token.{token('lobby', ttl=-30)}"
    assert upgrade(gw.port, "/ws?room=lobby", {"Sec-WebSocket-Protocol": bad})[0] == 401
    good_viewer_still_served(gw, c, "lobby", 1)


def test_auth_message_joins_the_url_rooms_it_grants(jwt_gateway: Callable[..., Gateway]) -> None:
    gw = jwt_gateway()
    c = ws(gw, "room=lobby&room=secret")
    c.send(json.dumps({"type": "auth", "token": token("lobby")}))
    first = recv(c)
    assert first["type"] == "authorized" and isinstance(first["exp"], int)
    got = [recv(c), recv(c)]
    assert {"type": "joined", "room": "lobby"} in got
    assert any(m["type"] == "error" and m["code"] == "forbidden" for m in got), got
    good_viewer_still_served(gw, c, "lobby", 1)


def test_every_failed_first_message_closes_with_4001(jwt_gateway: Callable[..., Gateway]) -> None:
    gw = jwt_gateway("--auth-timeout-s", "0.5")
    good = ws(gw, f"room=lobby&token={token('lobby')}")
    assert recv(good)["type"] == "joined"
    silent = ws(gw, "room=lobby")  # never sends auth
    join_first = ws(gw)
    join_first.send(join_message("lobby"))
    bad = ws(gw)
    bad.send(json.dumps({"type": "auth", "token": "garbage"}))
    expired = ws(gw)
    expired.send(json.dumps({"type": "auth", "token": token("lobby", ttl=-30)}))
    for c, code in [(silent, "unauthorized"), (join_first, "unauthorized"),
                    (bad, "unauthorized"), (expired, "token_expired")]:  # fmt: skip
        close, got = closed_with(c)
        assert close == 4001, (close, got)
        assert got and got[-1]["code"] == code, got  # type: ignore[index]
    good_viewer_still_served(gw, good, "lobby", 1)


def test_a_join_outside_the_grant_is_refused_and_personal_rooms_are_private(
    jwt_gateway: Callable[..., Gateway],
) -> None:
    gw = jwt_gateway()
    alice = ws(gw, f"token={token('*', sub='alice')}")
    alice.send(join_message("user:bob"))  # '*' does not reach into someone's personal room
    assert recv(alice)["code"] == "forbidden"
    alice.send(join_message("user:alice"))
    assert recv(alice) == {"type": "joined", "room": "user:alice"}
    limited = ws(gw, f"token={token('match:*', sub='carol')}")
    limited.send(join_message("lobby"))
    assert recv(limited)["code"] == "forbidden"
    limited.send(join_message("match:7"))
    assert recv(limited) == {"type": "joined", "room": "match:7"}
    # A push to bob does not reach alice or carol; a push to alice reaches her.
    gw.publish("user:bob", gw.blob("user:bob", 1))
    gw.publish("user:alice", gw.blob("user:alice", 2))
    msg = recv(alice)
    assert msg["room"] == "user:alice", msg
    assert upgrade(gw.port, f"/ws?room=user:bob&token={token('*')}")[0] == 403
    good_viewer_still_served(gw, limited, "match:7", 3)


def test_refresh_before_exp_keeps_the_viewer_and_exp_closes_with_4002(
    jwt_gateway: Callable[..., Gateway],
) -> None:
    gw = jwt_gateway()
    short = token("lobby", ttl=1)
    kept = ws(gw, f"room=lobby&token={short}")
    dropped = ws(gw, f"room=lobby&token={short}")
    assert recv(kept)["type"] == recv(dropped)["type"] == "joined"
    kept.send(json.dumps({"type": "refresh", "token": "garbage"}))
    assert recv(kept)["code"] == "unauthorized"  # refused; the old grant stands
    kept.send(json.dumps({"type": "refresh", "token": token("lobby", ttl=60)}))
    assert recv(kept)["type"] == "authorized"
    close, got = closed_with(dropped, timeout=5)
    assert close == 4002, (close, got)
    assert got[-1]["code"] == "token_expired"  # type: ignore[index]
    good_viewer_still_served(gw, kept, "lobby", 1)  # past the first token's exp


def test_a_refresh_with_fewer_rooms_leaves_the_others(jwt_gateway: Callable[..., Gateway]) -> None:
    gw = jwt_gateway()
    c = ws(gw, f"room=a&room=b&token={token('a', 'b')}")
    assert {recv(c)["room"], recv(c)["room"]} == {"a", "b"}
    c.send(json.dumps({"type": "refresh", "token": token("a")}))
    assert recv(c)["type"] == "authorized"
    assert recv(c) == {"type": "left", "room": "b"}


def _pem_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
def test_public_key_tokens(gateway: Callable[..., Gateway], tmp_path: Path, kind: str) -> None:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kind == "RS256":
        key = rsa.generate_private_key(65537, 2048)
        other: object = rsa.generate_private_key(65537, 2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "pub.pem").write_bytes(_pem_public(key))
    gw = gateway("--auth", "jwt", "--auth-public-key", str(tmp_path / "pub.pem"))
    c = ws(gw, f"room=lobby&token={token('lobby', key=key, alg=kind)}")
    assert recv(c)["type"] == "joined"
    assert upgrade(gw.port, f"/ws?token={token('lobby', key=other, alg=kind)}")[0] == 401
    assert upgrade(gw.port, f"/ws?token={token('lobby')}")[0] == 401  # HS256: not with a PEM key
    good_viewer_still_served(gw, c, "lobby", 1)


def test_jwks_file_is_reloaded_when_it_changes(
    gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    a, b = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, object]:
        d: dict[str, object] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        return {**d, "kid": kid, "alg": "ES256", "use": "sig"}

    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(a, "a")]}))
    gw = gateway("--auth", "jwt", "--auth-jwks", str(path))
    tok_a = token("lobby", key=a, alg="ES256", kid="a")
    tok_b = token("lobby", key=b, alg="ES256", kid="b")
    c = ws(gw, f"room=lobby&token={tok_a}")
    assert recv(c)["type"] == "joined"
    assert upgrade(gw.port, f"/ws?token={tok_b}")[0] == 401
    tmp = tmp_path / "jwks.new"  # rotate: add b, drop a, atomically
    tmp.write_text(json.dumps({"keys": [jwk(b, "b")], "rotated": True}))
    os.replace(tmp, path)
    deadline = time.monotonic() + 10
    while upgrade(gw.port, f"/ws?token={tok_b}")[0] != 101:
        assert time.monotonic() < deadline, "the new JWKS was not picked up"
        time.sleep(0.2)
    assert upgrade(gw.port, f"/ws?token={tok_a}")[0] == 401
    good_viewer_still_served(gw, c, "lobby", 1)  # an open viewer keeps its grant until exp


def test_origin_allow_list(gateway: Callable[..., Gateway]) -> None:
    gw = gateway("--allowed-origins", "https://good.example, https://also.example:8443")
    good = ws(gw, "room=lobby", origin="https://good.example")
    assert recv(good)["type"] == "joined"
    assert upgrade(gw.port, "/ws", {"Origin": "https://evil.example"})[0] == 403
    assert upgrade(gw.port, "/ws", {"Origin": "https://good.example.evil"})[0] == 403
    assert upgrade(gw.port, "/ws", {"Origin": "https://also.example:8443"})[0] == 101
    assert upgrade(gw.port, "/ws")[0] == 101  # no Origin: not a browser
    good_viewer_still_served(gw, good, "lobby", 1)


def test_per_ip_connect_rate_without_and_with_trusted_proxies(
    gateway: Callable[..., Gateway],
) -> None:
    plain = gateway("--max-connects-per-ip-per-s", "3")
    good = ws(plain, "room=lobby")
    assert recv(good)["type"] == "joined"
    # X-Forwarded-For from an untrusted peer is ignored: all of these are 127.0.0.1.
    got = [upgrade(plain.port, "/ws", {"X-Forwarded-For": f"10.0.0.{i}"})[0] for i in range(4)]
    assert got.count(429) >= 2 and 101 in got, got
    good_viewer_still_served(plain, good, "lobby", 1)

    proxied = gateway("--max-connects-per-ip-per-s", "3", "--trusted-proxies", "127.0.0.0/8")
    spread = [upgrade(proxied.port, "/ws", {"X-Forwarded-For": f"10.0.0.{i}"})[0] for i in range(6)]
    assert spread == [101] * 6, spread  # six clients behind the proxy
    one = [
        upgrade(proxied.port, "/ws", {"X-Forwarded-For": "192.0.2.1, 127.0.0.5"})[0]
        for _ in range(5)
    ]  # the proxy chain's trusted hop is skipped: the client is 192.0.2.1
    assert one[0] == 101 and one[-1] == 429, one


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(pem)
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))  # fmt: skip
    return cert_path, key_path, cert.public_bytes(serialization.Encoding.DER)


def _served_cert(port: int) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        der = s.getpeercert(binary_form=True)
        assert der is not None
        return der


def test_tls_with_a_self_signed_certificate_reloaded_on_sighup(
    nats_url: str, services: Callable[..., object], tmp_path: Path
) -> None:
    from tests.support import Service

    cert, key, der1 = _self_signed(tmp_path, "first")
    port = free_port()
    svc = services(
        "gateway-tls",
        ["gateway", "--nats", nats_url, "--port", str(port), "--workers", "1",
         "--metrics-port", "0", "--auth", "off", "--tls-cert", str(cert), "--tls-key", str(key)],
    )  # fmt: skip
    assert isinstance(svc, Service)
    trust = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(
                f"https://localhost:{port}/readyz", context=trust, timeout=2
            ) as r:
                assert r.status == 200
                break
        except OSError:
            assert time.monotonic() < deadline, svc.log_tail()
            time.sleep(0.2)
    with connect(f"wss://localhost:{port}/ws?room=lobby", ssl=trust) as c:
        assert json.loads(c.recv(timeout=10)) == {"type": "joined", "room": "lobby"}
        cert2, key2, der2 = _self_signed(tmp_path, "second")
        os.replace(cert2, cert)
        os.replace(key2, key)
        assert svc.proc.pid is not None
        os.kill(svc.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while _served_cert(port) != der2:
            assert time.monotonic() < deadline, svc.log_tail()
            time.sleep(0.1)
        assert der1 != der2
        c.send(json.dumps({"type": "ping"}))  # the open connection is unaffected
        assert json.loads(c.recv(timeout=10)) == {"type": "pong"}
        # Blobs reach a TLS viewer intact: the fan-out goes through the connection's
        # encryption (never a direct send to its socket).
        blob = b'{"type":"blob","room":"lobby","partition":0,"offsets":[1],"events":[1]}'
        asyncio.run(publish(nats_url, [("roomcast.room.lobby", blob)]))
        assert c.recv(timeout=10, decode=False) == blob
        assert "fanout=write (TLS" in svc.log_path.read_text()
        # A broken pair on disk: logged, and the certificate loaded before stays.
        cert.write_text("not a certificate")
        os.kill(svc.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "TLS certificate not reloaded" not in svc.log_path.read_text():
            assert time.monotonic() < deadline, svc.log_tail()
            time.sleep(0.1)
        assert _served_cert(port) == der2


def test_nats_credentials(gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "nats.log").open("wb")
    server = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "--user", "rc", "--pass", "pw"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"nats://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        gw = gateway("--nats-user", "rc", "--nats-password", "pw", nats=url)
        c = ws(gw, "room=lobby")
        assert recv(c)["type"] == "joined"
        # The wrong password: never ready, and the log says why.
        wrong_port = free_port()
        from tests.support import Service

        bad = Service(
            "gateway-badcreds",
            ["gateway", "--nats", url, "--port", str(wrong_port), "--workers", "1",
             "--metrics-port", "0", "--auth", "off", "--nats-user", "rc", "--nats-password", "no"],
            tmp_path,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while "authorization violation" not in bad.log_path.read_text().lower():
                assert time.monotonic() < deadline, bad.log_tail()
                time.sleep(0.1)
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{wrong_port}/readyz", timeout=2)
                raise AssertionError("ready without NATS")
            except urllib.error.HTTPError as exc:
                assert exc.code == 503
        finally:
            bad.stop()
    finally:
        server.terminate()
        server.wait(10)
        log.close()


def test_the_python_viewer_carries_a_token(jwt_gateway: Callable[..., Gateway]) -> None:
    import asyncio

    from websockets.exceptions import InvalidStatus

    from roomcast.client.viewer import Viewer
    from tests.gateway.conftest import publish

    gw = jwt_gateway()

    async def go() -> None:
        joined = asyncio.Event()
        async with Viewer(
            gw.ws_url, ["lobby"], token=token("lobby"), on_joined=lambda r: joined.set()
        ) as viewer:
            first = asyncio.ensure_future(anext(aiter(viewer)))
            await asyncio.wait_for(joined.wait(), 10)
            await publish(gw.nats_url, [(f"{gw.prefix}.lobby", gw.blob("lobby", 1))])
            got = await asyncio.wait_for(first, 10)
            assert got.blob.room == "lobby"
        with pytest.raises(InvalidStatus) as refused:  # not retried: the gateway said no
            async with Viewer(gw.ws_url, ["lobby"], token=token("other")):
                pass
        assert refused.value.response.status_code == 403

    asyncio.run(go())


def test_auth_off_is_logged_as_a_warning(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()  # the fixture's gateways run with --auth off
    deadline = time.monotonic() + 10
    while "running with --auth off" not in gw.service.log_path.read_text():
        assert time.monotonic() < deadline, gw.service.log_tail()
        time.sleep(0.1)
    # Anyone may join; an `auth` message is answered, whatever the token.
    c = ws(gw, "room=anything")
    assert recv(c)["type"] == "joined"
    c.send(json.dumps({"type": "auth", "token": "whatever"}))
    assert recv(c) == {"type": "authorized", "exp": 0}


def test_audience_issuer_and_not_before(jwt_gateway: Callable[..., Gateway]) -> None:
    gw = jwt_gateway("--auth-audience", "roomcast", "--auth-issuer", "https://auth.example")
    now = time.time()

    def tok(**claims: object) -> str:
        base = {"sub": "a", "rooms": ["lobby"], "exp": int(now + 60),
                "aud": "roomcast", "iss": "https://auth.example"}  # fmt: skip
        base.update(claims)
        return jwt.encode({k: v for k, v in base.items() if v is not None}, SECRET, "HS256")

    good = ws(gw, f"room=lobby&token={tok()}")
    assert recv(good)["type"] == "joined"
    for bad in [tok(aud=None), tok(aud="other"), tok(iss=None), tok(iss="https://evil"),
                tok(nbf=int(now + 600)), tok(exp=None)]:  # fmt: skip
        assert upgrade(gw.port, f"/ws?room=lobby&token={bad}")[0] == 401
    good_viewer_still_served(gw, good, "lobby", 1)


def test_nats_nkey_seed(gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    import nkeys

    def user_key(name: str) -> tuple[Path, str]:
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        path = tmp_path / f"{name}.nk"
        path.write_bytes(seed)
        return path, nkeys.from_seed(bytearray(seed)).public_key.decode()

    allowed, public = user_key("allowed")
    stranger, _ = user_key("stranger")
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n')
    log = (tmp_path / "nats.log").open("wb")
    server = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-c", str(conf)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        url = f"nats://127.0.0.1:{port}"
        gw = gateway("--nats-nkey-seed", str(allowed), nats=url)  # ready: NATS let it in
        c = ws(gw, "room=lobby")
        assert recv(c)["type"] == "joined"
        from tests.support import Service

        bad_port = free_port()
        bad = Service(
            "gateway-stranger",
            ["gateway", "--nats", url, "--port", str(bad_port), "--workers", "1",
             "--metrics-port", "0", "--auth", "off", "--nats-nkey-seed", str(stranger)],
            tmp_path,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while "authorization violation" not in bad.log_path.read_text().lower():
                assert time.monotonic() < deadline, bad.log_tail()
                time.sleep(0.1)
        finally:
            bad.stop()
    finally:
        server.terminate()
        server.wait(10)
        log.close()
