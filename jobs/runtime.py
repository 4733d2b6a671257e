"""How every citystream job gets its Flink environment: one set of options, two API flavours.

Why one place: the connector jars, checkpointing, restart policy, job name,
parallelism and the Python worker settings must be identical whether a job
runs in a local MiniCluster, on the project's standalone cluster or under
``flink run -py``, and whether it is written with the Table API (the domain
jobs) or the DataStream API (the detect job). :func:`job_options` decides
them; :func:`table_environment` and :func:`stream_environment` only apply
them to the environment kind a job needs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from pyflink.common import Configuration
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.java_gateway import get_gateway
from pyflink.table import EnvironmentSettings, StreamTableEnvironment, TableEnvironment

from citystream.errors import UserError
from citystream.settings import ROOT, Settings

JAVA_DIR = ROOT / "jobs" / "java"
UDF_JAR_NAME = "citystream-udfs.jar"

#: SQL name -> Java class of the project's JVM functions (jobs/java).
JAVA_FUNCTIONS = {
    "AVRO_DECODE": "io.citystream.flink.AvroDecode",
    "EPOCH_MS": "io.citystream.flink.EpochMillis",
    "COUNT_AT_LEAST": "io.citystream.flink.CountAtLeast",
    "LINEAR_SLOPE": "io.citystream.flink.LinearSlope",
    "ENVELOPE_TIME": "io.citystream.flink.EnvelopeTime",
    "EMISSIONS": "io.citystream.flink.Emissions",
    "SENSOR_SILENCE": "io.citystream.flink.SensorSilence",
}


def connector_jars(settings: Settings) -> list[Path]:
    """The Kafka connector and Avro format jars resolved by ``make setup``."""
    folder = settings.jars_dir / "flink"
    jars = sorted(folder.glob("*.jar"))
    if not any(j.name.startswith("flink-sql-connector-kafka") for j in jars):
        raise UserError(f"Flink Kafka connector jar missing in {folder}: run `make setup`")
    return jars


def udf_jar(*, build: bool = True) -> Path:
    """The project's JVM function jar, built with Maven when missing or older than its sources.

    Why on demand: the jar is a build artefact (git-ignored ``target/``), and a
    job started from a fresh checkout should not need a separate build step.
    """
    jar = JAVA_DIR / "target" / UDF_JAR_NAME
    sources = [JAVA_DIR / "pom.xml", *sorted((JAVA_DIR / "src").rglob("*.java"))]
    stale = not jar.is_file() or jar.stat().st_mtime < max(p.stat().st_mtime for p in sources)
    if stale and build:
        cmd = ["mvn", "-q", "-B", "-f", str(JAVA_DIR / "pom.xml"), "package"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not jar.is_file():
            raise UserError(
                f"building {jar.name} failed: {' '.join(cmd)}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
    return jar


def job_options(
    settings: Settings,
    *,
    job: str,
    parallelism: int | None = None,
    bounded: bool = False,
    savepoint: str | None = None,
    checkpoint_interval: str | None = None,
    idle_timeout: str = "10 s",
    jars: tuple[Path, ...] = (),
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Every Flink option a citystream job runs with, as ``key -> value``.

    ``job`` is the default name; ``settings.job_name`` (what ``jobs submit``
    sets) wins. The name also names the checkpoint folder: checkpoints go to
    the file system under the run directory, because the JobManager's
    in-memory default caps state at 5 MB, which the de-duplication state of a
    few hundred thousand readings (or the detect job's pending verdicts)
    already exceeds (measured). ``bounded`` runs (demo, backfill, tests) give
    up after two restarts so a broken job fails its caller instead of
    restarting forever, as an unbounded production job should.
    """
    name = settings.job_name or job
    options = {
        "pipeline.name": name,
        "pipeline.jars": ";".join(j.as_uri() for j in (*connector_jars(settings), *jars)),
        "parallelism.default": str(parallelism or settings.flink_parallelism),
        **checkpoint_options(settings, name, checkpoint_interval),
        "python.executable": settings.pyflink_python or sys.executable,
        "python.fn-execution.bundle.size": "10000",
        "table.local-time-zone": "UTC",
        "table.exec.source.idle-timeout": idle_timeout,
        # Stable operator uids derived from the plan, so savepoints survive restarts of the same SQL.
        "table.exec.uid.generation": "ALWAYS",
    }
    if savepoint:
        options["execution.state-recovery.path"] = savepoint
    options.update(restart_options("bounded" if bounded else settings.restart_strategy))
    options.update(overrides or {})
    return options


#: ``CITYSTREAM_STATE_BACKEND`` -> Flink's ``state.backend.type`` (RocksDB ships inside flink-dist).
STATE_BACKENDS = {"hashmap": "hashmap", "rocksdb": "rocksdb"}

#: ``CITYSTREAM_RESTART_STRATEGY`` -> Flink options. ``bounded``: what bounded runs always use.
RESTART_STRATEGIES: dict[str, dict[str, str]] = {
    "exponential-delay": {
        "restart-strategy.type": "exponential-delay",
        "restart-strategy.exponential-delay.initial-backoff": "1 s",
        "restart-strategy.exponential-delay.max-backoff": "1 min",
    },
    "fixed-delay": {
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": "10",
        "restart-strategy.fixed-delay.delay": "10 s",
    },
    "failure-rate": {
        "restart-strategy.type": "failure-rate",
        "restart-strategy.failure-rate.max-failures-per-interval": "3",
        "restart-strategy.failure-rate.failure-rate-interval": "5 min",
        "restart-strategy.failure-rate.delay": "10 s",
    },
    "none": {"restart-strategy.type": "none"},
    "bounded": {
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": "2",
        "restart-strategy.fixed-delay.delay": "2 s",
    },
}


def checkpoint_options(settings: Settings, name: str, interval: str | None = None) -> dict[str, str]:
    """Checkpointing of every job: exactly once, on the file system, retained on cancel and failure.

    Why retained: ``citystream jobs recover`` resumes a job whose JobManager
    died from its newest completed checkpoint on disk, and a cancelled job
    can be resumed the same way; Flink deletes all but the newest
    ``retained_checkpoints`` while the job runs.
    """
    backend = STATE_BACKENDS.get(settings.state_backend)
    if backend is None:
        raise UserError(
            f"CITYSTREAM_STATE_BACKEND={settings.state_backend!r}: use one of {', '.join(STATE_BACKENDS)}"
        )
    if settings.retained_checkpoints < 1:
        raise UserError(
            f"CITYSTREAM_RETAINED_CHECKPOINTS must be at least 1, got {settings.retained_checkpoints}"
        )
    return {
        "execution.checkpointing.interval": interval or settings.checkpoint_interval,
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.storage": "filesystem",
        "execution.checkpointing.dir": (settings.run_dir / "flink" / "checkpoints" / name).as_uri(),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": str(settings.retained_checkpoints),
        "state.backend.type": backend,
    }


def restart_options(strategy: str) -> dict[str, str]:
    """Flink's restart options for ``strategy`` (a name of :data:`RESTART_STRATEGIES`)."""
    if strategy not in RESTART_STRATEGIES:
        raise UserError(
            f"CITYSTREAM_RESTART_STRATEGY={strategy!r}: use one of "
            f"{', '.join(k for k in RESTART_STRATEGIES if k != 'bounded')}"
        )
    return RESTART_STRATEGIES[strategy]


def table_environment(
    settings: Settings,
    *,
    job: str = "citystream",
    parallelism: int | None = None,
    bounded: bool = False,
    savepoint: str | None = None,
    checkpoint_interval: str | None = None,
    overrides: Mapping[str, str] | None = None,
) -> TableEnvironment:
    """A streaming TableEnvironment with :func:`job_options` and the project's JVM functions."""
    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = t_env.get_config()
    options = job_options(
        settings, job=job, parallelism=parallelism, bounded=bounded, savepoint=savepoint,
        checkpoint_interval=checkpoint_interval, jars=(udf_jar(),), overrides=overrides,
    )  # fmt: skip
    for key, value in options.items():
        conf.set(key, value)
    for name, cls in JAVA_FUNCTIONS.items():
        t_env.execute_sql(f"CREATE TEMPORARY SYSTEM FUNCTION IF NOT EXISTS {name} AS '{cls}' LANGUAGE JAVA")
    return t_env


def stream_environment(
    settings: Settings,
    *,
    job: str,
    parallelism: int | None = None,
    bounded: bool = False,
    savepoint: str | None = None,
    idle_timeout: str = "10 s",
    overrides: Mapping[str, str] | None = None,
) -> tuple[StreamExecutionEnvironment, StreamTableEnvironment]:
    """A DataStream environment (and its table environment) with :func:`job_options`."""
    options = job_options(
        settings, job=job, parallelism=parallelism, bounded=bounded, savepoint=savepoint,
        idle_timeout=idle_timeout, overrides=overrides,
    )  # fmt: skip
    jars = options.pop("pipeline.jars").split(";")
    conf = Configuration()
    for key, value in options.items():
        conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment()
    env.configure(conf)
    env.add_jars(*jars)  # also puts them on this process's class loader (the Kafka table factory)
    # configure() leaves these two to their own setters on some code paths: set them explicitly.
    env.set_parallelism(int(options["parallelism.default"]))
    env.enable_checkpointing(_millis(options["execution.checkpointing.interval"]))
    t_env = StreamTableEnvironment.create(env)
    t_conf = t_env.get_config()
    for key, value in options.items():
        if key.startswith("table."):
            t_conf.set(key, value)
    return env, t_env


def _millis(duration: str) -> int:
    """``"10 s"`` / ``"500ms"`` / ``"2 min"`` -> milliseconds (Flink's duration forms we accept)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|min|)\s*", duration)
    if match is None:
        raise UserError(f"not a duration: {duration!r} (write e.g. '10 s', '500 ms', '2 min')")
    number, unit = match.groups()
    return int(float(number) * {"ms": 1, "s": 1000, "min": 60_000}[unit or "ms"])


def detached() -> bool:
    """True under ``flink run --detached``: submit and return instead of waiting for the job.

    Why ask the JVM: ``flink run`` hands the Python program an environment
    configured with the CLI's target and ``execution.attached``; a job whose
    ``main`` then called ``TableResult.wait()`` would keep the "detached"
    client running as long as the job. Local runs (MiniCluster) always wait:
    the job lives in this process.
    """
    jvm = get_gateway().jvm
    env = jvm.org.apache.flink.streaming.api.environment.StreamExecutionEnvironment.getExecutionEnvironment()
    conf = env.getConfiguration()
    options = jvm.org.apache.flink.configuration.DeploymentOptions
    target = conf.get(options.TARGET)
    return target not in (None, "", "local") and not conf.get(options.ATTACHED)
