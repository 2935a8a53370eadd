"""How ingest authenticates to Kafka: the aiokafka client options for --kafka-security-protocol.

PLAINTEXT (the default) needs nothing. SSL verifies the brokers against --kafka-ca-file (else the
system's CAs) and presents --kafka-cert-file / --kafka-key-file when given (mutual TLS, e.g. a
Strimzi KafkaUser with `tls` authentication). SASL_PLAINTEXT and SASL_SSL log in with
--kafka-sasl-mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) as --kafka-sasl-username, with the
password from ROOMCAST_INGEST_KAFKA_SASL_PASSWORD (the Helm chart sets it from a Secret).
"""

from __future__ import annotations

from typing import Any

from roomcast.ingest.config import IngestConfig

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def client_options(cfg: IngestConfig) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaConsumer/Producer; ValueError says what is missing."""
    protocol = cfg.kafka_security_protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"--kafka-security-protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL_"):
        if cfg.kafka_sasl_mechanism not in MECHANISMS:
            raise ValueError(f"--kafka-sasl-mechanism: one of {', '.join(MECHANISMS)}")
        if not cfg.kafka_sasl_username or not cfg.kafka_sasl_password:
            raise ValueError(
                f"{protocol} needs --kafka-sasl-username and a password "
                "(ROOMCAST_INGEST_KAFKA_SASL_PASSWORD)"
            )
        options.update(
            sasl_mechanism=cfg.kafka_sasl_mechanism,
            sasl_plain_username=cfg.kafka_sasl_username,
            sasl_plain_password=cfg.kafka_sasl_password,
        )
    if bool(cfg.kafka_cert_file) != bool(cfg.kafka_key_file):
        raise ValueError("--kafka-cert-file and --kafka-key-file go together")
    if protocol.endswith("SSL"):
        from aiokafka.helpers import create_ssl_context

        options["ssl_context"] = create_ssl_context(
            cafile=cfg.kafka_ca_file or None,
            certfile=cfg.kafka_cert_file or None,
            keyfile=cfg.kafka_key_file or None,
        )
    elif cfg.kafka_ca_file or cfg.kafka_cert_file:
        raise ValueError(
            f"--kafka-ca-file / --kafka-cert-file need SSL or SASL_SSL, not {protocol}"
        )
    return options
