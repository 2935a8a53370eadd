"""--kafka-security-protocol and friends become the right aiokafka options, or say what is wrong."""

from __future__ import annotations

import ssl
import subprocess
import sys
from dataclasses import replace

import certifi
import pytest

from roomcast.ingest.config import IngestConfig
from roomcast.ingest.kafka_auth import client_options

BASE = IngestConfig()


def test_plaintext_by_default() -> None:
    assert client_options(BASE) == {"security_protocol": "PLAINTEXT"}


def test_sasl_scram_over_tls_with_a_ca() -> None:
    cfg = replace(
        BASE,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="roomcast",
        kafka_sasl_password="s3cret",
        kafka_ca_file=certifi.where(),
    )
    opts = client_options(cfg)
    assert opts["security_protocol"] == "SASL_SSL"
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"]) == ("roomcast", "s3cret")
    assert isinstance(opts["ssl_context"], ssl.SSLContext)
    assert opts["ssl_context"].verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"kafka_security_protocol": "SASL_PLAINTEXT"}, "--kafka-sasl-username"),
        ({"kafka_security_protocol": "SSL", "kafka_cert_file": "/c.pem"}, "go together"),
        ({"kafka_ca_file": "/ca.pem"}, "need SSL"),
        ({"kafka_security_protocol": "TLS"}, "one of"),
    ],
)
def test_bad_combinations_say_what_is_wrong(changes: dict[str, str], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        client_options(replace(BASE, **changes))  # type: ignore[arg-type]


def test_the_command_refuses_them_before_connecting() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "roomcast.ingest", "--kafka-security-protocol", "SASL_SSL"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "--kafka-sasl-username" in proc.stderr, proc.stderr
