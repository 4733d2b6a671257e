"""Producer throughput: confluent-kafka (what connectors/producer.py uses) vs kafka-python, same run.

A benchmark, not a test. Starts a private Kafka broker on free 127.0.0.1
ports, pre-encodes ``--records`` GridReading values (the simulator's Avro, per the
contracts), then times producing them with each client (``acks=all``,
idempotence, zstd, 20 ms linger) until every record is acknowledged, into a
fresh 3-partition topic per run. Prints records/s and the ratio.

Usage: ``python -m benchmarks.producer [--records 200000]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from citystream.connectors.producer import ReadingProducer
from citystream.proc import free_port
from citystream.settings import Settings
from citystream.simulator.engine import CaptureSink, SimConfig, Simulation
from citystream.stack import Kafka


def _values(n: int) -> tuple[list[bytes], list[bytes]]:
    """``n`` GridReading keys and values: a perfect simulated feed (10 sensors, 1 minute), repeated."""
    cfg = SimConfig(
        seed=7, sensors=10, domains=("grid",), duration_ms=60_000, rate_per_min=12.0, anomalies_per_hour=0.0
    )
    sink = CaptureSink()
    Simulation(cfg).run(sink)
    base = [(k, v) for topic, k, v in sink.records if topic == cfg.topic("grid")]
    keys, values = [k for k, _ in base], [v for _, v in base]
    reps = n // len(values) + 1
    return (keys * reps)[:n], (values * reps)[:n]


def _confluent(bootstrap: str, topic: str, keys: list[bytes], values: list[bytes]) -> float:
    start = time.perf_counter()
    with ReadingProducer(bootstrap, compression="zstd") as producer:
        producer.send_many(topic, keys, values)
        producer.flush()
    return time.perf_counter() - start


def _kafka_python(bootstrap: str, topic: str, keys: list[bytes], values: list[bytes]) -> float:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, compression_type="zstd",
        linger_ms=20, batch_size=256 * 1024,
    )  # fmt: skip
    start = time.perf_counter()
    for k, v in zip(keys, values, strict=True):
        producer.send(topic, key=k, value=v)
    producer.flush()
    elapsed = time.perf_counter() - start
    producer.close()
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.producer", description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(run_dir=Path(tmp), kafka_port=free_port(), kafka_controller_port=free_port())
        broker = Kafka(settings)
        broker.start()
        try:
            admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
            admin.create_topics([NewTopic(f"bench-{c}", 3, 1) for c in ("warm", "confluent", "kafka-python")])
            admin.close()
            keys, values = _values(args.records)
            _confluent(settings.kafka_bootstrap, "bench-warm", keys[:10_000], values[:10_000])
            rates = {}
            for name, run in (("confluent-kafka", _confluent), ("kafka-python", _kafka_python)):
                topic = "bench-confluent" if name == "confluent-kafka" else "bench-kafka-python"
                rates[name] = args.records / run(settings.kafka_bootstrap, topic, keys, values)
                print(
                    f"{name:16} {rates[name]:>12,.0f} records/s ({args.records:,} pre-encoded GridReadings)"
                )
            ratio = rates["confluent-kafka"] / rates["kafka-python"]
            print(f"confluent-kafka / kafka-python = {ratio:.1f}x")
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
