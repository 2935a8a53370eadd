"""roomcast.ingest: Kafka consumer group -> per-room merge -> NATS/JetStream -> commit.

`IngestConfig` holds every setting; `run_ingest(config, stop)` runs one worker until `stop` is set.
The merge, commit and dedup rules live in roomcast.core; this package only moves bytes.
"""

from roomcast.ingest.config import IngestConfig
from roomcast.ingest.worker import IngestWorker, run_ingest

__all__ = ["IngestConfig", "IngestWorker", "run_ingest"]
