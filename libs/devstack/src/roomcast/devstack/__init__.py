"""roomcast.devstack: real NATS and Kafka on this machine, for `roomcast dev`, tests and bench.

    with LocalNats(nats_dir) as nats, LocalKafka(kafka_dir, topics={"t": 8}) as kafka:
        nats.url, kafka.bootstrap

See docs/devstack.md.
"""

from roomcast.devstack.kafka import LocalKafka, LocalKafkaCluster, kafka_classpath
from roomcast.devstack.nats import LocalNats, LocalNatsCluster
from roomcast.devstack.process import BrokerError

__all__ = [
    "BrokerError",
    "LocalKafka",
    "LocalKafkaCluster",
    "LocalNats",
    "LocalNatsCluster",
    "kafka_classpath",
]
