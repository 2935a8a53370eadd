"""`roomcast-ingest` (and `python -m roomcast.ingest`): `roomcast ingest` on its own,
the entry point of the ingest image, which carries neither the `roomcast` command nor the
other services.

Options read the same environment variables as under `roomcast` (ROOMCAST_INGEST_KAFKA, ...),
which is how the Helm chart configures the container.
"""

from __future__ import annotations

from roomcast.ingest.cli import ingest


def main() -> None:
    ingest.main(prog_name="roomcast-ingest", auto_envvar_prefix="ROOMCAST_INGEST")


if __name__ == "__main__":  # pragma: no cover
    main()
