"""Files the gateway serves as they are: `/client.js`, the browser client (an ES module).

The file in the package is the published module; each worker reads it once, when it starts."""

from __future__ import annotations

from importlib.resources import files

CLIENT_JS_TYPE = "text/javascript; charset=utf-8"
CLIENT_JS = files("roomcast.gateway").joinpath("static", "client.js").read_bytes()


def client_js(path: str, query: str) -> tuple[int, bytes, str]:
    """`GET /client.js`: the browser client."""
    return 200, CLIENT_JS, CLIENT_JS_TYPE
