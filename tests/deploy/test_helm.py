"""The Helm chart renders to valid Kubernetes objects that configure options the code has."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

CHART = Path(__file__).parents[2] / "helm" / "roomcast"
K8S_VERSION = "1.33"


def helm() -> str:
    path = os.environ.get("ROOMCAST_HELM") or shutil.which("helm")
    assert path and Path(path).exists(), "helm not found: `make setup` installs it in .tools/bin"
    return path


def render(*values: str) -> list[dict[str, Any]]:
    args = [helm(), "template", "rc", str(CHART)]
    for v in values:
        args += ["--set", v]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.mark.parametrize("values", [(), ("gateway.replicas=5", "gateway.workers=4")])
def test_chart_renders_valid_kubernetes_objects(values: tuple[str, ...]) -> None:
    docs = render(*values)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment", "Deployment", "PodDisruptionBudget", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_lint_passes() -> None:
    subprocess.run([helm(), "lint", "--strict", str(CHART)], check=True, capture_output=True)


def test_drain_fits_in_the_grace_period() -> None:
    (gw,) = [
        d
        for d in render("gateway.drainSeconds=40")
        if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("gateway")
    ]
    spec = gw["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > 40
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    assert env["ROOMCAST_GATEWAY_DRAIN_SECONDS"] == "40"


@pytest.mark.parametrize("component", ["gateway", "ingest"])
def test_every_env_var_the_chart_sets_is_an_option_of_the_command(component: str) -> None:
    (dep,) = [
        d
        for d in render()
        if d["kind"] == "Deployment" and d["metadata"]["name"].endswith(component)
    ]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == [component]
    help_text = subprocess.run(
        [sys.executable, "-m", "roomcast.cli", component, "--help"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    known = set(re.findall(r"ROOMCAST_[A-Z0-9_]+", help_text))
    names = {e["name"] for e in container["env"]}
    assert names and names <= known, f"not options of `roomcast {component}`: {names - known}"
