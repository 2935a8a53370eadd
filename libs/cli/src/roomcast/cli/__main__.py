"""`python -m roomcast.cli` is `roomcast` (how the dev stack starts its services)."""

from roomcast.cli.main import main

main()
