"""The `roomcast` command: one entry point, each subcommand loaded only when used.

Every option can also be set from the environment: `roomcast gateway --port` reads
ROOMCAST_GATEWAY_PORT, `roomcast ingest --kafka` reads ROOMCAST_INGEST_KAFKA, and so on
(`--help` shows each variable), which is how the Helm chart and docker-compose configure it.
"""

from __future__ import annotations

import importlib

import click

# name -> (module, attribute, one-line help). Imported lazily: `roomcast watch` must not pay
# for aiokafka, and a gateway image need not carry the ingest service.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "dev": ("roomcast.devstack.cli", "dev", "Run the whole stack locally with a demo."),
    "gateway": ("roomcast.gateway.cli", "gateway", "Run the WebSocket edge gateway."),
    "ingest": ("roomcast.ingest.cli", "ingest", "Run an ingest worker (Kafka -> merge -> NATS)."),
    "produce": ("roomcast.cli.produce", "produce", "Write events to a room through Kafka."),
    "token": ("roomcast.gateway.token", "token", "Mint a signed viewer token (dev, tests)."),
    "watch": ("roomcast.client.watch", "watch", "Join rooms and print each blob as it arrives."),
    "bench": (
        "roomcast.bench.cli",
        "bench",
        "Measure speed: fanout, connect, ingest, e2e.",
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = SUBCOMMANDS.get(cmd_name)
        if spec is None:
            return None
        module, attr, short = spec
        try:
            command: click.Command = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise click.ClickException(
                f"'roomcast {cmd_name}' is not installed here ({exc}); "
                "install its package or run `make dev` for the whole workspace"
            ) from None
        command.short_help = command.short_help or short
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # List without importing every subcommand.
        with formatter.section("Commands"):
            formatter.write_dl([(n, SUBCOMMANDS[n][2]) for n in self.list_commands(ctx)])


@click.group(
    cls=LazyGroup,
    context_settings={"auto_envvar_prefix": "ROOMCAST", "help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="roomcast-cli")
def main() -> None:
    """roomcast: live-room broadcast. Kafka in, merged per room per window, WebSocket out.

    \b
    Try it:   roomcast dev                      # NATS, Kafka, ingest, gateway and a demo
              roomcast watch demo-1             # in another terminal
              roomcast produce --room demo-1 '{"text":"hi"}'
    """
