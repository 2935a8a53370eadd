"""/client.js: served by every gateway worker, shipped in the wheel, and its logic (node --test)."""

from __future__ import annotations

import os
import subprocess
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from tests.gateway.conftest import Gateway
from tests.support import run_node_tests

ROOT = Path(__file__).parent.parent.parent
CLIENT_JS = ROOT / "services/gateway/src/roomcast/gateway/static/client.js"


def test_every_gateway_serves_the_client_module(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    with urllib.request.urlopen(f"{gw.http}/client.js", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"
        body = resp.read()
    assert body == CLIENT_JS.read_bytes()
    assert b"export function subscribe(" in body


def _get_client_js(gw: Gateway, origin: str | None) -> dict[str, str]:
    req = urllib.request.Request(f"{gw.http}/client.js")
    if origin is not None:
        req.add_header("Origin", origin)
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
        return {k.lower(): v for k, v in resp.headers.items()}


def test_a_page_on_another_origin_may_import_the_module(gateway: Callable[..., Gateway]) -> None:
    """Browsers fetch an imported module in CORS mode: without Access-Control-Allow-Origin a page
    served from elsewhere cannot load it."""
    headers = _get_client_js(gateway(), "https://app.example")
    assert headers["access-control-allow-origin"] == "*"


def test_with_allowed_origins_only_those_pages_may_import_it(
    gateway: Callable[..., Gateway],
) -> None:
    gw = gateway("--allowed-origins", "https://app.example,https://other.example/")
    ok = _get_client_js(gw, "https://App.example")
    assert ok["access-control-allow-origin"] == "https://App.example"
    assert ok["vary"] == "Origin"
    refused = _get_client_js(gw, "https://evil.example")
    assert "access-control-allow-origin" not in refused and refused["vary"] == "Origin"
    assert "access-control-allow-origin" not in _get_client_js(gw, None)


def test_the_gateway_wheel_ships_the_client_module(tmp_path: Path) -> None:
    uv = os.environ.get("UV") or str(ROOT / ".tools/bin/uv")
    subprocess.run(
        [uv, "build", "--package", "roomcast-gateway", "--wheel", "-o", str(tmp_path)],
        cwd=ROOT, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("roomcast_gateway-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("roomcast/gateway/static/client.js") == CLIENT_JS.read_bytes()


def test_client_logic_without_a_gateway(node_tests: Path) -> None:
    """Positions, dedup, URLs, backoff and reconnect/resume against a scripted socket."""
    run_node_tests(node_tests, ["client.unit.test.mjs"], {}, timeout=120)
