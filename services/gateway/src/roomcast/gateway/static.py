"""Files the gateway serves as they are: `/client.js`, the browser client (an ES module).

The file in the package is the published module; each worker reads it once, when it starts."""

from __future__ import annotations

from importlib.resources import files

from roomcast.gateway.auth import origin_listed

CLIENT_JS_TYPE = "text/javascript; charset=utf-8"
CLIENT_JS = files("roomcast.gateway").joinpath("static", "client.js").read_bytes()


def client_js(path: str, query: str) -> tuple[int, bytes, str]:
    """`GET /client.js`: the browser client."""
    return 200, CLIENT_JS, CLIENT_JS_TYPE


def cors_headers(origin: str | None, allowed: frozenset[str]) -> list[tuple[str, str]]:
    """A page on another origin imports the module with a CORS request (a plain GET: no
    credentials, no preflight). Any origin may have it while the gateway takes viewers from any
    (`--allowed-origins` empty); else only those it takes viewers from."""
    if not allowed:
        return [("Access-Control-Allow-Origin", "*")]
    if origin is not None and origin_listed(origin, allowed):
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
    return [("Vary", "Origin")]
