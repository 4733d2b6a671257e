"""One typed, frozen settings object for every component.

Why one object: the stack scripts, the jobs, the producer and the store must
agree on ports, paths and topic names; reading the environment in one place
(``ENV`` below names every variable) keeps them from drifting apart and lets
``citystream config`` show exactly what a run will use, secrets masked.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: Repository root: the checkout that holds avro/, jobs/, infra/ ...
ROOT = Path(__file__).resolve().parent.parent

#: Every environment variable citystream reads, with the field it sets.
ENV: dict[str, str] = {
    "CITYSTREAM_RUN_DIR": "run_dir",
    "CITYSTREAM_SECRETS_FILE": "secrets_file",
    "CITYSTREAM_JARS_DIR": "jars_dir",
    "CITYSTREAM_KAFKA_PORT": "kafka_port",
    "CITYSTREAM_KAFKA_CONTROLLER_PORT": "kafka_controller_port",
    "CITYSTREAM_KAFKA_BOOTSTRAP": "kafka_bootstrap",
    "CITYSTREAM_KAFKA_SECURITY": "kafka_security",
    "CITYSTREAM_KAFKA_SECRETS_DIR": "kafka_secrets_dir",
    "CITYSTREAM_FLINK_PORT": "flink_rest_port",
    "CITYSTREAM_FLINK_PARALLELISM": "flink_parallelism",
    "CITYSTREAM_FLINK_URL": "flink_url",
    "CITYSTREAM_CHECKPOINT_INTERVAL": "checkpoint_interval",
    "CITYSTREAM_STATE_BACKEND": "state_backend",
    "CITYSTREAM_RESTART_STRATEGY": "restart_strategy",
    "CITYSTREAM_RETAINED_CHECKPOINTS": "retained_checkpoints",
    "CITYSTREAM_STORE_PORT": "store_port",
    "CITYSTREAM_STORE_ALLOWED_ORIGINS": "store_allowed_origins",
    "CITYSTREAM_CLICKHOUSE_URL": "clickhouse_url",
    "CITYSTREAM_CLICKHOUSE_USER": "clickhouse_user",
    "CITYSTREAM_CLICKHOUSE_PASSWORD": "clickhouse_password",
    "CITYSTREAM_CLICKHOUSE_DATABASE": "clickhouse_database",
    "CITYSTREAM_CLICKHOUSE_VIEWER_USER": "clickhouse_viewer_user",
    "CITYSTREAM_CLICKHOUSE_VIEWER_PASSWORD": "clickhouse_viewer_password",
    "CITYSTREAM_TOPIC_PREFIX": "topic_prefix",
    "CITYSTREAM_TOPICS_SPEC": "topics_spec",
    "CITYSTREAM_GRAFANA_URL": "grafana_url",
    "CITYSTREAM_GRAFANA_TOKEN": "grafana_token",
    "CITYSTREAM_GRAFANA_USER": "grafana_user",
    "CITYSTREAM_GRAFANA_PASSWORD": "grafana_password",
    "CITYSTREAM_JOB_NAME": "job_name",
    "CITYSTREAM_LOADER_BATCH_BYTES": "loader_batch_bytes",
    "PYFLINK_PYTHON": "pyflink_python",
}

SECRETS = frozenset(
    {"clickhouse_password", "clickhouse_viewer_password", "grafana_token", "grafana_password"}
)
#: Secrets the secrets file may hold: the store users' passwords, which `stack up` generates there.
FILE_SECRETS = ("clickhouse_password", "clickhouse_viewer_password")
#: Under the run dir: present when the stack's broker was formatted with SCRAM users
#: (``stack up --secure``); every later command then speaks SASL_SSL unless the env says otherwise.
KAFKA_SECURE_MARKER = Path("kafka") / "formatted-with-scram"


@dataclass(frozen=True)
class Settings:
    """Everything a citystream process needs to find the others.

    Empty ``kafka_bootstrap`` / ``clickhouse_url`` mean "the local stack":
    they are derived from the ports, so changing one port is enough.
    """

    run_dir: Path = ROOT / ".run"
    #: TOML file of FILE_SECRETS (mode 0600); None: ``run_dir/secrets.toml``. See :func:`load`.
    secrets_file: Path | None = None
    jars_dir: Path = ROOT / ".cache" / "jars"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_bootstrap: str = ""
    #: ``plaintext`` (default) or ``sasl_ssl``: SCRAM-SHA-512 users over TLS (``stack up --secure``).
    kafka_security: str = "plaintext"
    #: Where the broker's CA, certificate and SCRAM passwords live; empty: ``run_dir/kafka/security``.
    kafka_secrets_dir: str = ""
    flink_rest_port: int = 8081
    flink_parallelism: int = 1
    #: Flink REST API of the cluster ``citystream jobs`` talks to; empty: the stack's, from the port.
    flink_url: str = ""
    #: Every job's checkpoint interval (a Flink duration: ``10 s``, ``500 ms``, ``2 min``).
    checkpoint_interval: str = "10 s"
    #: ``hashmap`` (state on the heap) or ``rocksdb`` (on local disk; ships inside flink-dist).
    state_backend: str = "hashmap"
    #: Unbounded jobs: ``exponential-delay``, ``fixed-delay``, ``failure-rate`` or ``none``.
    restart_strategy: str = "exponential-delay"
    #: Completed checkpoints kept per job (retained on cancel and failure, for ``jobs recover``).
    retained_checkpoints: int = 3
    store_port: int = 8123
    #: Browser origins (``scheme://host:port``, comma-separated) the store accepts requests from;
    #: empty: none (a request with an ``Origin`` header is refused).
    store_allowed_origins: str = ""
    clickhouse_url: str = ""
    clickhouse_user: str = "default"
    clickhouse_password: str = field(default="", repr=False)
    clickhouse_database: str = "citystream"
    clickhouse_viewer_user: str = "viewer"
    clickhouse_viewer_password: str = field(default="", repr=False)
    topic_prefix: str = "citystream."
    topics_spec: Path = ROOT / "infra" / "topics.toml"
    grafana_url: str = "http://127.0.0.1:3000"
    grafana_token: str = field(default="", repr=False)
    grafana_user: str = ""
    grafana_password: str = field(default="", repr=False)
    #: Flink job name (and checkpoint folder) of this process's job; empty: the job's own default.
    job_name: str = ""
    #: Python interpreter of Flink's Python workers; empty: the one running this process.
    pyflink_python: str = ""
    #: Bytes (Kafka values) of one loader batch at most, beside its row bound: one insert must stay
    #: well under the store's request limit (256 MiB) and the loader's memory. A record larger than
    #: this is loaded alone.
    loader_batch_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if self.secrets_file is None:
            object.__setattr__(self, "secrets_file", Path(self.run_dir) / "secrets.toml")
        if not self.kafka_bootstrap:
            object.__setattr__(self, "kafka_bootstrap", f"127.0.0.1:{self.kafka_port}")
        if not self.clickhouse_url:
            object.__setattr__(self, "clickhouse_url", f"http://127.0.0.1:{self.store_port}")
        if not self.flink_url:
            object.__setattr__(self, "flink_url", f"http://127.0.0.1:{self.flink_rest_port}")

    @property
    def embedded_store(self) -> bool:
        """True when the store is our own chdb process rather than a ClickHouse server."""
        return self.clickhouse_url == f"http://127.0.0.1:{self.store_port}"

    def topic(self, name: str) -> str:
        """Full topic name, e.g. ``topic("readings.grid")`` -> ``citystream.readings.grid``."""
        return f"{self.topic_prefix}{name}"

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed (derived URLs are re-derived when left at defaults)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if "kafka_port" in changes and "kafka_bootstrap" not in changes:
            values["kafka_bootstrap"] = ""
        if "store_port" in changes and "clickhouse_url" not in changes:
            values["clickhouse_url"] = ""
        if "flink_rest_port" in changes and "flink_url" not in changes:
            values["flink_url"] = ""
        if "run_dir" in changes and "secrets_file" not in changes:
            values["secrets_file"] = None
        values.update(changes)
        return Settings(**values)  # type: ignore[arg-type]

    def to_env(self, secrets: bool = True) -> dict[str, str]:
        """These settings as CITYSTREAM_* variables, so a child process (a Flink job) sees the same.

        ``secrets=False``: each secret present but empty, for a child that needs none of them
        (an empty variable wins over the secrets file in :func:`load`, so it finds none there).
        """
        return {
            var: str(getattr(self, name)) if secrets or name not in SECRETS else ""
            for var, name in ENV.items()
        }

    def masked(self) -> dict[str, str]:
        """Field -> printable value, with secrets replaced by '***'."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = "***" if f.name in SECRETS and value else str(value)
        return out


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment, then the secrets file; a malformed number names the variable.

    Why the file: `stack up` generates the store users' passwords there, so
    every process on the machine (CLI, loader, jobs, tests) finds them without
    anyone exporting secrets. A password variable that is present in the
    environment wins over the file even when empty (a child given ``to_env()``
    gets exactly its parent's settings). Likewise ``kafka_security``: unset, it
    is ``sasl_ssl`` when the run dir's own broker was started ``--secure``.
    """
    environ = os.environ if environ is None else environ
    types = {f.name: f.type for f in dataclasses.fields(Settings)}
    values: dict[str, object] = {}
    for var, name in ENV.items():
        raw = environ.get(var)
        if raw is None or raw == "":
            continue
        kind = types[name]
        if kind == "int":
            try:
                values[name] = int(raw)
            except ValueError:
                raise ValueError(f"{var}={raw!r} is not a whole number") from None
        elif kind in ("Path", "Path | None"):
            values[name] = Path(raw).expanduser().resolve()
        else:
            values[name] = raw
    settings = Settings(**values)  # type: ignore[arg-type]
    if "kafka_security" not in values and _run_dir_is_secure(settings):
        settings = settings.replace(kafka_security="sasl_ssl")
    assert settings.secrets_file is not None  # derived in __post_init__
    names = {name: var for var, name in ENV.items()}
    stored = read_secrets(settings.secrets_file)
    fill = {name: value for name, value in stored.items() if names[name] not in environ}
    return settings.replace(**fill) if fill else settings


def _run_dir_is_secure(settings: Settings) -> bool:
    """Whether the run dir's own broker (not an external one) was started ``--secure``."""
    local = settings.kafka_bootstrap == f"127.0.0.1:{settings.kafka_port}"
    return local and (Path(settings.run_dir) / KAFKA_SECURE_MARKER).exists()


def read_secrets(path: Path) -> dict[str, str]:
    """FILE_SECRETS from ``path`` ({} when it does not exist); anything else in it is an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ValueError(f"cannot read the secrets file {path}: {exc.strerror}") from None
    try:
        stored = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"the secrets file {path} is not valid TOML: {exc}") from None
    unknown = sorted(k for k, v in stored.items() if k not in FILE_SECRETS or not isinstance(v, str))
    if unknown:
        raise ValueError(
            f"the secrets file {path} may hold only {', '.join(FILE_SECRETS)} (strings): {unknown}"
        )
    return stored
