"""The tools the deploy tests drive: helm, the compose checker, podman. Outside CI a missing tool
skips the tests that need it, saying why; in CI (CI=true) it fails them loudly."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
CHART = ROOT / "helm" / "roomcast"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(what: str, how: str) -> None:
    message = f"{what} is not available: {how}"
    if IN_CI:
        pytest.fail(message + " (CI must run every deploy test)", pytrace=False)
    pytest.skip(message)


def tool(env: str, name: str, how: str) -> str:
    path = os.environ.get(env) or shutil.which(name)
    if not path or not Path(path).exists():
        missing(name, how)
    assert path
    return path


def helm() -> str:
    return tool("ROOMCAST_HELM", "helm", "`make test-deploy` builds it (needs Go)")


def render(
    *sets: str, values: list[Path] | None = None, release: str = "rc", show_only: str | None = None
) -> list[dict[str, Any]]:
    """`helm template` the chart; the rendered objects, hooks included."""
    args = [helm(), "template", release, str(CHART)]
    for f in values or []:
        args += ["-f", str(f)]
    for s in sets:
        args += ["--set", s]
    if show_only:
        args += ["--show-only", show_only]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{len(found)} {kind} named *{suffix}: {[d['metadata'] for d in docs]}"
    return found[0]
