"""The Helm chart, offline: lint, render, validate against Kubernetes' schemas, the values schema,
the `restricted` Pod Security fields, names, config checksums, and that every option of the
commands is a value of the chart (and nothing the chart sets is not an option)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml

from roomcast.gateway.cli import gateway as gateway_command
from roomcast.ingest.cli import ingest as ingest_command
from tests.deploy.tools import CHART, helm, one, render

K8S_VERSION = "1.33"
FULL = Path(__file__).parent / "values-full.yaml"
CRD_KINDS = {"ServiceMonitor", "KafkaTopic"}  # not in Kubernetes' own schemas: checked by hand
COMMANDS = {"gateway": gateway_command, "ingest": ingest_command}

# Options the chart sets from named values (it needs them itself); every other option of a
# command is `<component>.options.<optionInCamelCase>`.
NAMED = {
    "gateway": {
        "nats": "nats.url",
        "subject-prefix": "nats.subjectPrefix",
        "history-prefix": "nats.historyPrefix",
        "stream": "ingest.stream.name",  # the stream ingest sets up
        "port": "gateway.port",
        "workers": "gateway.workers",
        "drain-seconds": "gateway.drainSeconds",
        "metrics-port": "gateway.metricsPort",
        "auth-secret": "gateway.auth.secretSecret",  # only from a Secret
        "nats-user": "nats.user",
        "nats-password": "nats.passwordSecret",  # only from a Secret
        "nats-token": "nats.tokenSecret",  # only from a Secret
        "nats-creds": "nats.credsFile",
        "nats-nkey-seed": "nats.nkeySeedFile",
        "nats-tls-ca": "nats.tlsCaFile",
    },
    "ingest": {
        "kafka": "kafka.bootstrap",
        "topic": "kafka.topic",
        "kafka-security-protocol": "kafka.securityProtocol",
        "kafka-sasl-mechanism": "kafka.sasl.mechanism",
        "kafka-sasl-username": "kafka.sasl.username",
        "kafka-sasl-password": "kafka.sasl.passwordSecret",  # only from a Secret
        "kafka-ca-file": "kafka.tls.caSecret",
        "kafka-cert-file": "kafka.tls.clientSecret",
        "kafka-key-file": "kafka.tls.clientSecret",
        "nats": "nats.url",
        "subject-prefix": "nats.subjectPrefix",
        "history-prefix": "nats.historyPrefix",
        "stream": "ingest.stream.name",
        "stream-replicas": "ingest.stream.replicas",
        "history-msgs": "ingest.stream.historyMsgs",
        "history-age-s": "ingest.stream.historyAgeS",
        "metrics-port": "ingest.metricsPort",
        "nats-user": "nats.user",
        "nats-password": "nats.passwordSecret",
        "nats-token": "nats.tokenSecret",
        "nats-creds": "nats.credsFile",
        "nats-nkey-seed": "nats.nkeySeedFile",
        "nats-tls-ca": "nats.tlsCaFile",
        "instance-id": "ingest.staticMembership",  # the pod's name, from the downward API
    },
}
# Values the chart has ahead of the command (the gateway's --metrics-port is on its way).
AHEAD: dict[str, set[str]] = {"gateway": set(), "ingest": set()}


def validate(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            assert doc["apiVersion"] in {"monitoring.coreos.com/v1", "kafka.strimzi.io/v1beta2"}
            assert doc["spec"], doc
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def pods(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec the chart renders: the Deployments' templates and the test Pod."""
    out = []
    for d in docs:
        if d["kind"] == "Deployment":
            out.append((d["metadata"]["name"], d["spec"]["template"]["spec"]))
        elif d["kind"] == "Pod":
            out.append((d["metadata"]["name"], d["spec"]))
    return out


def camel(option: str) -> str:
    head, *rest = option.split("-")
    return head + "".join(w.capitalize() for w in rest)


def options_of(component: str) -> dict[str, str]:
    """--option -> the environment variable it reads, from the click command itself."""
    command: click.Command = COMMANDS[component]
    prefix = f"ROOMCAST_{component.upper()}_"
    return {
        p.opts[0].removeprefix("--"): prefix + (p.name or "").upper()
        for p in command.params
        if isinstance(p, click.Option)
    }


def config_data(docs: list[dict[str, Any]], component: str) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap", f"-{component}")["data"]
    return data


def env_names(docs: list[dict[str, Any]], component: str) -> list[str]:
    """The variables set on the component's container itself (from Secrets, extraEnv)."""
    pod = one(docs, "Deployment", f"-{component}")["spec"]["template"]["spec"]
    return [e["name"] for e in pod["containers"][0].get("env", [])]


def lookup(tree: dict[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = tree
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def schema_has(path: str) -> bool:
    node = json.loads((CHART / "values.schema.json").read_text())
    for key in path.split("."):
        props = node.get("properties", {})
        if key not in props:
            return False
        node = props[key]
    return True


# ---- lint, render, validate --------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], [FULL]], ids=["defaults", "full"])
def test_lint_strict_passes(values: list[Path]) -> None:
    args = [helm(), "lint", "--strict", str(CHART)] + [a for v in values for a in ("-f", str(v))]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_defaults_render_valid_objects() -> None:
    docs = render()
    assert sorted(d["kind"] for d in docs) == [
        "ConfigMap", "ConfigMap", "Deployment", "Deployment", "Pod", "PodDisruptionBudget",
        "Service", "ServiceAccount",
    ]  # fmt: skip
    validate(docs)


def test_full_values_render_valid_objects() -> None:
    docs = render(values=[FULL])
    kinds = sorted(d["kind"] for d in docs)
    for kind in ["HorizontalPodAutoscaler", "Ingress", "KafkaTopic", "ServiceMonitor"]:
        assert kind in kinds, kinds
    validate(docs)
    gw = one(docs, "Deployment", "-gateway")
    assert "replicas" not in gw["spec"]  # the HPA owns it
    container = gw["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/team/rc-gateway:1.2.4"
    assert container["args"] == ["--max-viewers", "11000"]
    env = {e["name"]: e for e in container["env"]}
    assert env["ROOMCAST_GATEWAY_NATS"]["valueFrom"]["secretKeyRef"] == {
        "name": "roomcast-nats",
        "key": "url",
    }
    assert "ROOMCAST_GATEWAY_NATS" not in config_data(docs, "gateway")  # by reference only
    topics = {d["spec"]["topicName"]: d for d in docs if d["kind"] == "KafkaTopic"}
    assert set(topics) == {"live.events", "live.events.dlq"}
    assert topics["live.events"]["metadata"]["labels"]["strimzi.io/cluster"] == "my-kafka"
    ingress = one(docs, "Ingress", "-gateway")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"] == (
        "7200"
    )


@pytest.mark.parametrize(
    "sets",
    [
        ("gateway.metricsPort=0", "ingest.metricsPort=0"),
        ("gateway.metricsPort=9090", "metrics.serviceMonitor.enabled=true"),
        ("ingest.metricsPort=0", "metrics.serviceMonitor.enabled=true"),
        ("gateway.hostNetwork=true", "gateway.podAntiAffinity=none"),
        ("gateway.autoscaling.enabled=true", "gateway.pdb.enabled=false"),
        ("gateway.ingress.enabled=true", "gateway.ingress.websocketTimeoutSeconds=0"),
        ("gateway.service.type=NodePort", "gateway.service.nodePort=30080"),
        ("kafka.strimziTopics.enabled=true", "kafka.strimziTopics.cluster=k"),
        ("gateway.enabled=false",),
        ("ingest.enabled=false", "serviceAccount.create=false", "helmTest.enabled=false"),
        ("gateway.topologySpread.enabled=false", "gateway.drainSeconds=1"),
    ],
    ids=lambda s: ",".join(s),
)
def test_documented_variants_render_valid_objects(sets: tuple[str, ...]) -> None:
    validate(render(*sets))


def test_metrics_port_zero_means_no_metrics_and_probes_on_the_viewer_port() -> None:
    docs = render("gateway.metricsPort=0", "ingest.metricsPort=0")
    ingest = one(docs, "Deployment", "-ingest")["spec"]["template"]["spec"]["containers"][0]
    assert "ports" not in ingest and "livenessProbe" not in ingest
    gw = one(docs, "Deployment", "-gateway")["spec"]["template"]
    assert "prometheus.io/port" not in gw["metadata"]["annotations"]
    container = gw["spec"]["containers"][0]
    assert [p["name"] for p in container["ports"]] == ["ws"]
    assert container["readinessProbe"]["httpGet"]["port"] == "ws"
    assert config_data(docs, "gateway")["ROOMCAST_GATEWAY_METRICS_PORT"] == "0"  # off, not 9465


def test_gateway_probes_and_scrapes_use_the_group_endpoint_by_default() -> None:
    docs = render()
    gw = one(docs, "Deployment", "-gateway")["spec"]["template"]
    container = gw["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 9465, "protocol": "TCP"} in container["ports"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    data = config_data(docs, "gateway")
    assert data["ROOMCAST_GATEWAY_METRICS_PORT"] == "9465"
    assert data["ROOMCAST_GATEWAY_METRICS_HOST"] == "0.0.0.0"


def test_grafana_dashboard_is_an_opt_in_configmap_for_the_sidecar() -> None:
    """Off by default; on, one ConfigMap labelled for Grafana's sidecar holds the chart's one copy
    of the dashboard, byte for byte (tests/e2e/test_dashboard.py checks what it queries)."""
    assert not [d for d in render() if d["metadata"]["name"].endswith("-dashboard")]
    dashboard = (CHART / "dashboards" / "roomcast.json").read_text()
    docs = render("metrics.grafanaDashboard.enabled=true")
    validate(docs)
    cm = one(docs, "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"]["roomcast.json"] == dashboard.rstrip("\n")
    assert json.loads(cm["data"]["roomcast.json"])["uid"] == "roomcast"
    full = one(render(values=[FULL]), "ConfigMap", "-dashboard")["metadata"]
    assert full["labels"]["grafana_dashboard"] == "yes" and full["labels"]["team"] == "live"
    assert full["annotations"] == {"grafana_folder": "live"}


def test_ingest_is_a_static_group_member_named_after_its_pod() -> None:
    def instance_id(*sets: str) -> dict[str, Any] | None:
        pod = one(render(*sets), "Deployment", "-ingest")["spec"]["template"]["spec"]
        env = {e["name"]: e for e in pod["containers"][0].get("env", [])}
        return env.get("ROOMCAST_INGEST_INSTANCE_ID")

    assert instance_id() == {
        "name": "ROOMCAST_INGEST_INSTANCE_ID",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }
    assert instance_id("ingest.staticMembership=false") is None


def test_hostnetwork_uses_cluster_dns() -> None:
    spec = one(render("gateway.hostNetwork=true"), "Deployment", "-gateway")["spec"]["template"]
    assert spec["spec"]["hostNetwork"] is True
    assert spec["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_strimzi_topics_need_a_cluster_name() -> None:
    proc = subprocess.run(
        [helm(), "template", "rc", str(CHART), "--set", "kafka.strimziTopics.enabled=true"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "kafka.strimziTopics.cluster" in proc.stderr


# ---- the values schema ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("gateway.replicass=3", "replicass"),  # a typo
        ("gateway.options.maxViewer=3", "maxViewer"),  # a typo of an option
        ("gateway.workers=two", "workers"),  # a wrong type
        ("gateway.port=70000", "port"),  # out of range
        ("ingest.options.logLevel=loud", "logLevel"),  # not one of the choices
        ("gateway.podAntiAffinity=always", "podAntiAffinity"),
        ("ingest.stream.replicas=7", "replicas"),
    ],
)
def test_schema_rejects_bad_values(bad: str, says: str) -> None:
    proc = subprocess.run(
        [helm(), "template", "rc", str(CHART), "--set", bad], capture_output=True, text=True
    )
    assert proc.returncode != 0, f"{bad} was accepted"
    assert "schema" in proc.stderr and says in proc.stderr, proc.stderr


def test_the_schema_covers_every_value_and_the_readme_lists_it() -> None:
    """values.yaml, values.schema.json and the chart README name the same values."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    listed = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, re.M))

    def leaves(node: dict[str, Any], schema: dict[str, Any], path: str) -> list[str]:
        out = []
        for key, sub in schema.get("properties", {}).items():
            here = f"{path}{key}"
            if sub.get("additionalProperties") is False and "properties" in sub:
                out += leaves(node.get(key) or {}, sub, here + ".")
            else:
                out.append(here)
        return out

    schema = json.loads((CHART / "values.schema.json").read_text())
    every = leaves(values, schema, "")
    assert not set(every) - listed, (
        f"values missing from helm/roomcast/README.md: {set(every) - listed}"
    )
    assert not listed - set(every), f"README lists values the schema lacks: {listed - set(every)}"

    def known(node: dict[str, Any], schema: dict[str, Any], path: str) -> None:
        for key, value in node.items():
            sub = schema.get("properties", {}).get(key)
            assert sub is not None, f"values.yaml has {path}{key}: not in values.schema.json"
            if isinstance(value, dict) and sub.get("additionalProperties") is False:
                known(value, sub, f"{path}{key}.")

    known(values, schema, "")


# ---- Pod Security: restricted -------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], [FULL]], ids=["defaults", "full"])
def test_every_pod_meets_the_restricted_pod_security_profile(values: list[Path]) -> None:
    for name, pod in pods(render(values=values)):
        ctx = pod.get("securityContext", {})
        assert ctx.get("runAsNonRoot") is True, name
        assert ctx.get("runAsUser", 1) != 0, name
        assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host), f"{name}: {host}"
        for volume in pod.get("volumes", []):
            assert "hostPath" not in volume, f"{name}: hostPath volume"
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c.get("securityContext", {})
            where = f"{name}/{c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged") is not True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert set(sc.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert all("hostPort" not in p for p in c.get("ports", [])), where
        assert pod.get("automountServiceAccountToken") is False, name


# ---- names, config checksum, drain --------------------------------------------------------------


@pytest.mark.parametrize(
    ("release", "sets"),
    [
        ("r" * 53, ()),  # helm's longest release name
        ("rc", ("fullnameOverride=" + "f" * 63,)),
        ("live-" + "x" * 39 + "-roomcast", ("kafka.strimziTopics.enabled=true",
                                             "kafka.strimziTopics.cluster=k")),
    ],
    ids=["long-release", "long-override", "release-with-chart-name"],
)  # fmt: skip
def test_names_fit_in_63_characters(release: str, sets: tuple[str, ...]) -> None:
    docs = render(*sets, "metrics.serviceMonitor.enabled=true", release=release)
    validate(docs)
    seen: set[tuple[str, str]] = set()
    for d in docs:
        name = d["metadata"]["name"]
        assert len(name) <= 63, name
        assert (d["kind"], name) not in seen, f"two {d['kind']} named {name}"
        seen.add((d["kind"], name))
        for key, value in d["metadata"].get("labels", {}).items():
            assert len(str(value)) <= 63, (key, value)


def test_a_config_change_rolls_the_pods_and_a_replica_change_does_not() -> None:
    def checksums(*sets: str) -> dict[str, str]:
        return {
            d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"][
                "checksum/config"
            ]
            for d in render(*sets)
            if d["kind"] == "Deployment"
        }

    base = checksums()
    assert checksums("gateway.replicas=9", "ingest.replicas=5") == base
    changed = checksums("gateway.options.maxViewers=999")
    assert changed["rc-roomcast-gateway"] != base["rc-roomcast-gateway"]
    assert changed["rc-roomcast-ingest"] == base["rc-roomcast-ingest"]
    assert checksums("nats.url=nats://other:4222") != base  # both change


def test_the_grace_period_covers_prestop_and_the_drain() -> None:
    docs = render("gateway.drainSeconds=40", "gateway.preStopSeconds=5")
    pod = one(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 5 + 40 + 5
    hook = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert hook == ["sleep", "5"]
    assert config_data(docs, "gateway")["ROOMCAST_GATEWAY_DRAIN_SECONDS"] == "40"


def test_notes_say_how_to_reach_and_check_the_gateway(tmp_path: Path) -> None:
    chart = tmp_path / "roomcast"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "notes-check.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n'
    )
    for sets, expect in [
        ((), ["port-forward", "/readyz", "helm test", "ws://rc-roomcast-gateway"]),
        (("gateway.ingress.enabled=true",), ["ws://roomcast.example.com/ws?room=ROOM"]),
        (("gateway.hostNetwork=true",), ["NODE_ADDRESS:8080"]),
    ]:
        args = [helm(), "template", "rc", str(chart), "--show-only", "templates/notes-check.yaml"]
        for s in sets:
            args += ["--set", s]
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        notes = yaml.safe_load(out)["data"]["notes"]
        for text in expect:
            assert text in notes, f"{sets}: {text!r} not in NOTES:\n{notes}"


# ---- every command option is a chart value -------------------------------------------------------


@pytest.mark.parametrize("component", ["gateway", "ingest"])
def test_every_command_option_is_a_chart_value(component: str) -> None:
    """Drift check: an option added to `roomcast-<component>` fails here until the chart has it."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    full_docs = render(values=[FULL])
    full = set(config_data(full_docs, component)) | set(env_names(full_docs, component))
    readme = (CHART / "README.md").read_text()
    problems = []
    for option, var in sorted(options_of(component).items()):
        path = NAMED[component].get(option, f"{component}.options.{camel(option)}")
        where = f"--{option} of roomcast-{component} ({var}) needs the value `{path}`"
        if not lookup(values, path)[0]:
            problems.append(f"{where} in helm/roomcast/values.yaml")
        if not schema_has(path):
            problems.append(f"{where} in helm/roomcast/values.schema.json")
        if f"| `{path}` |" not in readme and f"| `{path}." not in readme:
            problems.append(f"{where} in helm/roomcast/README.md")
        if var not in full:
            problems.append(f"{where}: tests/deploy/values-full.yaml does not render {var}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("component", ["gateway", "ingest"])
def test_every_variable_the_chart_sets_is_an_option(component: str) -> None:
    known = set(options_of(component).values())
    ahead = {
        f"ROOMCAST_{component.upper()}_{o.upper().replace('-', '_')}" for o in AHEAD[component]
    }
    for values in ([], [FULL]):
        docs = render(values=values)
        names = set(config_data(docs, component))
        names |= {n for n in env_names(docs, component) if n.startswith("ROOMCAST_")}
        names -= {"ROOMCAST_JWT_KEY"}  # values-full.yaml's extraEnv example, not the chart's own
        stray = names - known - ahead
        assert not stray, f"the chart sets variables roomcast-{component} does not read: {stray}"
    for option in AHEAD[component]:
        assert option not in options_of(component), (
            f"--{option} now exists: remove it from AHEAD in {__file__}"
        )


def test_the_worked_values_in_docs_deploy_render(tmp_path: Path) -> None:
    """docs/deploy.md's `# roomcast values` examples (Strimzi, the NATS chart) stay valid."""
    doc = (CHART.parents[1] / "docs" / "deploy.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if "# roomcast values" in b]
    assert len(blocks) == 2, "the Strimzi and NATS examples"
    files = []
    for n, block in enumerate(blocks):
        path = tmp_path / f"example-{n}.yaml"
        path.write_text(block)
        files.append(path)
        validate(render(values=[path]))
    docs = render("nats.urlSecret.name=roomcast-nats", values=files)
    validate(docs)
    assert config_data(docs, "ingest")["ROOMCAST_INGEST_KAFKA"] == (
        "events-kafka-bootstrap.kafka.svc:9093"
    )
    assert config_data(docs, "ingest")["ROOMCAST_INGEST_STREAM_REPLICAS"] == "3"


def test_kafka_credentials_come_only_from_secrets_and_are_checked() -> None:
    docs = render(values=[FULL])
    data = config_data(docs, "ingest")
    assert data["ROOMCAST_INGEST_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert data["ROOMCAST_INGEST_KAFKA_SASL_USERNAME"] == "roomcast"
    assert data["ROOMCAST_INGEST_KAFKA_CA_FILE"] == "/etc/roomcast/kafka-ca/ca.pem"
    assert data["ROOMCAST_INGEST_KAFKA_KEY_FILE"] == "/etc/roomcast/kafka-client/tls.key"
    assert "ROOMCAST_INGEST_KAFKA_SASL_PASSWORD" not in data
    pod = one(docs, "Deployment", "-ingest")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["ROOMCAST_INGEST_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "roomcast",
        "key": "pw",
    }
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets["kafka-ca"] == "my-kafka-cluster-ca-cert"
    assert secrets["kafka-client"] == "roomcast-tls"
    for bad, says in [
        (("kafka.securityProtocol=SASL_SSL",), "kafka.sasl.username"),
        (("kafka.tls.caSecret.name=ca",), "SSL or SASL_SSL"),
    ]:
        args = [helm(), "template", "rc", str(CHART)] + [a for b in bad for a in ("--set", b)]
        proc = subprocess.run(args, capture_output=True, text=True)
        assert proc.returncode != 0 and says in proc.stderr, proc.stderr


def test_viewer_and_nats_secrets_come_only_from_secrets() -> None:
    docs = render(values=[FULL])
    for component in ("gateway", "ingest"):
        data = config_data(docs, component)
        prefix = f"ROOMCAST_{component.upper()}_"
        assert data[prefix + "NATS_USER"] == "roomcast"
        pod = one(docs, "Deployment", f"-{component}")["spec"]["template"]["spec"]
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        for var, key in [("NATS_PASSWORD", "password"), ("NATS_TOKEN", "token")]:
            assert prefix + var not in data
            assert env[prefix + var]["valueFrom"]["secretKeyRef"] == {
                "name": "roomcast-nats", "key": key,
            }  # fmt: skip
    gw = config_data(docs, "gateway")
    assert gw["ROOMCAST_GATEWAY_AUTH"] == "jwt" and "ROOMCAST_GATEWAY_AUTH_SECRET" not in gw
    pod = one(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["ROOMCAST_GATEWAY_AUTH_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "roomcast-jwt", "key": "hs256",
    }  # fmt: skip
    test_pod = one(docs, "Pod", "-test")["spec"]["containers"][0]
    assert {e["name"] for e in test_pod["env"]} >= {"TOKEN"}
