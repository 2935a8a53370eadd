"""`roomcast-gateway` (and `python -m roomcast.gateway`): `roomcast gateway` on its own,
the entry point of the gateway image, which carries neither the `roomcast` command nor the
other services.

Options read the same environment variables as under `roomcast` (ROOMCAST_GATEWAY_PORT, ...),
which is how the Helm chart configures the container. Each viewer holds a file descriptor, so the
soft open-files limit is first raised to the hard one (containers often start at 1024).
"""

from __future__ import annotations

import os
import resource
import sys

from roomcast.gateway.cli import gateway
from roomcast.gateway.config import GatewayConfig

HEADROOM = 256  # descriptors a worker needs besides its viewers (NATS, listening socket, logs)


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return
    wanted = int(os.environ.get("ROOMCAST_GATEWAY_MAX_VIEWERS") or GatewayConfig().max_viewers)
    if hard != resource.RLIM_INFINITY and hard < wanted + HEADROOM:
        print(
            f"roomcast-gateway: the open-files limit ({hard}) is below --max-viewers ({wanted}) "
            f"+ {HEADROOM}: viewers past ~{hard - HEADROOM} per worker will be refused by the "
            "kernel; lower --max-viewers or raise the container's limit",
            file=sys.stderr,
        )


def main() -> None:
    raise_open_files_limit()
    gateway.main(prog_name="roomcast-gateway", auto_envvar_prefix="ROOMCAST_GATEWAY")


if __name__ == "__main__":  # pragma: no cover
    main()
