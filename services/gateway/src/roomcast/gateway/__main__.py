"""`roomcast-gateway` (and `python -m roomcast.gateway`): `roomcast gateway` on its own,
the entry point of the gateway image, which carries neither the `roomcast` command nor the
other services.

Options read the same environment variables as under `roomcast` (ROOMCAST_GATEWAY_PORT, ...),
which is how the Helm chart configures the container.
"""

from __future__ import annotations

from roomcast.gateway.cli import gateway


def main() -> None:
    gateway.main(prog_name="roomcast-gateway", auto_envvar_prefix="ROOMCAST_GATEWAY")


if __name__ == "__main__":  # pragma: no cover
    main()
