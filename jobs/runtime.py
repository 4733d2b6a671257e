"""How every citystream job gets its TableEnvironment.

Why one place: the connector jars, checkpointing, parallelism and the
Python worker settings must be identical whether a job runs in a local
MiniCluster, on the project's standalone cluster or under ``flink run -py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyflink.table import EnvironmentSettings, TableEnvironment

from citystream.settings import Settings


def connector_jars(settings: Settings) -> list[Path]:
    """The Kafka connector and Avro format jars resolved by ``make setup``."""
    folder = settings.jars_dir / "flink"
    jars = sorted(folder.glob("*.jar"))
    if not any(j.name.startswith("flink-sql-connector-kafka") for j in jars):
        from citystream.errors import UserError

        raise UserError(f"Flink Kafka connector jar missing in {folder}: run `make setup`")
    return jars


def table_environment(
    settings: Settings, *, parallelism: int | None = None, bounded: bool = False
) -> TableEnvironment:
    """A streaming TableEnvironment with the project's jars and checkpointing configured.

    ``bounded`` runs (demo, backfill, tests) give up after two restarts so a
    broken job fails its caller instead of restarting forever, as an
    unbounded production job should.
    """
    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = t_env.get_config()
    conf.set("pipeline.jars", ";".join(j.as_uri() for j in connector_jars(settings)))
    conf.set("parallelism.default", str(parallelism or settings.flink_parallelism))
    conf.set("execution.checkpointing.interval", "10 s")
    conf.set("execution.checkpointing.mode", "EXACTLY_ONCE")
    conf.set("table.exec.source.idle-timeout", "10 s")
    conf.set("python.executable", os.environ.get("PYFLINK_PYTHON", sys.executable))
    conf.set("python.fn-execution.bundle.size", "10000")
    conf.set("table.local-time-zone", "UTC")
    if bounded:
        conf.set("restart-strategy.type", "fixed-delay")
        conf.set("restart-strategy.fixed-delay.attempts", "2")
        conf.set("restart-strategy.fixed-delay.delay", "2 s")
    conf.set("pipeline.name", os.environ.get("CITYSTREAM_JOB_NAME", "citystream"))
    return t_env


def detached() -> bool:
    """True under ``flink run --detached``: submit and return instead of waiting for the job.

    Why ask the JVM: ``flink run`` hands the Python program an environment
    configured with the CLI's target and ``execution.attached``; a job whose
    ``main`` then called ``TableResult.wait()`` would keep the "detached"
    client running as long as the job. Local runs (MiniCluster) always wait:
    the job lives in this process.
    """
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    env = jvm.org.apache.flink.streaming.api.environment.StreamExecutionEnvironment.getExecutionEnvironment()
    conf = env.getConfiguration()
    options = jvm.org.apache.flink.configuration.DeploymentOptions
    target = conf.get(options.TARGET)
    return target not in (None, "", "local") and not conf.get(options.ATTACHED)
