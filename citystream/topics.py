"""Kafka topics as declared in infra/topics.toml (``citystream topics create | list`` applies them).

Why declarative: the producer, the Flink jobs and the store all assume each
topic's partitioning, retention and compaction; one file decides them and
``ensure_topics`` makes a broker match it, as often as you like.

Contract of ``ensure_topics`` / ``citystream topics create``:

* creates the topics the broker lacks, with the spec's partitions and configs;
* sets every config the spec names whose value on the broker differs (configs the
  spec does not name are left alone);
* adds partitions where the spec asks for more, and says that keys then map to
  other partitions;
* refuses, before changing anything, when the spec asks for fewer partitions than
  a topic has (Kafka cannot remove partitions): a UserError names the topic;
* returns (and the command prints) what it changed; a second run changes nothing.

``citystream topics list`` compares the broker with the spec and changes nothing.
"""

from __future__ import annotations

import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaError

from citystream.errors import UserError
from citystream.proc import wait_until
from citystream.settings import ROOT

#: The spec ``citystream topics`` applies unless given another.
DEFAULT_SPEC = ROOT / "infra" / "topics.toml"

#: Kafka topic configs every topic must state.
REQUIRED_CONFIGS = ("cleanup.policy", "retention.ms", "compression.type")

_CLEANUP_POLICIES = {"delete", "compact", "compact,delete"}
_COMPRESSION = {"zstd", "lz4", "snappy", "gzip", "uncompressed", "producer"}
_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]*$")
_TOPIC_KEYS = {"partitions", "replication_factor", "key", "value"}
_MAX_TOPIC_NAME = 249


@dataclass(frozen=True)
class TopicSpec:
    """One topic as the spec file declares it (name without the prefix)."""

    suffix: str
    partitions: int
    replication_factor: int
    key: str
    value: str
    configs: Mapping[str, str] = field(default_factory=dict)

    def name(self, prefix: str) -> str:
        return f"{prefix}{self.suffix}"


@dataclass(frozen=True)
class Change:
    """One thing ``ensure_topics`` did to the broker."""

    topic: str
    action: str  # "create" | "add-partitions" | "alter-config"
    detail: str

    def __str__(self) -> str:
        return f"{self.action:14} {self.topic}: {self.detail}"


@dataclass(frozen=True)
class TopicState:
    """A topic as the broker has it, next to what the spec wants (either may be missing)."""

    name: str
    spec: TopicSpec | None
    partitions: int | None  # None: the broker has no such topic
    configs: Mapping[str, str]  # the spec's config keys -> broker value

    @property
    def status(self) -> str:
        if self.spec is None:
            return "not in spec"
        if self.partitions is None:
            return "missing"
        diffs = [
            f"{k}={self.configs.get(k)}" for k, v in self.spec.configs.items() if self.configs.get(k) != v
        ]
        if self.partitions != self.spec.partitions:
            diffs.insert(0, f"partitions={self.partitions}")
        return "differs: " + ", ".join(diffs) if diffs else "ok"


# --------------------------------------------------------------------------- spec


def load_spec(path: Path = DEFAULT_SPEC) -> list[TopicSpec]:
    """The topics of a spec file, validated; any mistake is a UserError naming the file and key."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: topic spec not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(doc) - {"defaults", "topics"}
    if unknown:
        raise UserError(
            f"{path}: unknown section(s) {', '.join(sorted(unknown))}; expected [defaults], [topics.*]"
        )
    defaults = doc.get("defaults", {})
    topics = doc.get("topics", {})
    if not isinstance(defaults, dict) or not isinstance(topics, dict) or not topics:
        raise UserError(f'{path}: needs a [topics."NAME"] table per topic')
    specs = []
    for suffix, table in topics.items():
        where = f'{path}: [topics."{suffix}"]'
        if not isinstance(table, dict):
            raise UserError(f"{where} must be a table")
        if not suffix or not _TOPIC_CHARS.match(suffix):
            raise UserError(f"{where}: topic names use only letters, digits, '.', '_' and '-'")
        specs.append(_topic_spec(suffix, {**defaults, **table}, where))
    return specs


def _topic_spec(suffix: str, table: Mapping[str, Any], where: str) -> TopicSpec:
    unknown = {k for k in table if "." not in k} - _TOPIC_KEYS
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
            'Kafka configs are quoted and contain a dot, e.g. "retention.ms"'
        )
    for key in ("partitions", "replication_factor"):
        value = table.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{where}: {key} must be a whole number >= 1, got {value!r}")
    for key in ("key", "value"):
        if not isinstance(table.get(key), str) or not table[key].strip():
            raise UserError(f"{where}: {key} must say what the Kafka {key} is (a non-empty string)")
    configs = {}
    for key, value in table.items():
        if "." not in key:
            continue
        if isinstance(value, bool):
            configs[key] = "true" if value else "false"
        elif isinstance(value, int | float | str):
            configs[key] = str(value)
        else:
            raise UserError(f"{where}: {key} must be a string or number, got {value!r}")
    missing = [k for k in REQUIRED_CONFIGS if k not in configs]
    if missing:
        raise UserError(f"{where}: missing {', '.join(missing)} (set it here or in [defaults])")
    configs["cleanup.policy"] = _policy(configs["cleanup.policy"])
    if configs["cleanup.policy"] not in _CLEANUP_POLICIES:
        raise UserError(f'{where}: cleanup.policy must be delete, compact or "compact,delete"')
    if configs["compression.type"] not in _COMPRESSION:
        raise UserError(f"{where}: compression.type must be one of {', '.join(sorted(_COMPRESSION))}")
    try:
        retention_ok = int(configs["retention.ms"]) >= -1
    except ValueError:
        retention_ok = False
    if not retention_ok:
        raise UserError(f"{where}: retention.ms must be milliseconds or -1 (forever)")
    return TopicSpec(
        suffix, table["partitions"], table["replication_factor"], table["key"], table["value"], configs
    )


def _policy(value: str) -> str:
    """Kafka reports "compact,delete" and "delete,compact" alike; compare them as one."""
    return ",".join(sorted(p.strip() for p in value.split(",") if p.strip()))


def _normalise(key: str, value: str) -> str:
    return _policy(value) if key == "cleanup.policy" else value


def _check_prefix(prefix: str, specs: list[TopicSpec]) -> None:
    if not _TOPIC_CHARS.match(prefix):
        raise UserError(f"topic prefix {prefix!r}: use only letters, digits, '.', '_' and '-'")
    for spec in specs:
        name = spec.name(prefix)
        if len(name) > _MAX_TOPIC_NAME:
            raise UserError(f"topic name {name[:40]}... is longer than Kafka's {_MAX_TOPIC_NAME} characters")


# --------------------------------------------------------------------------- broker


def _connect(bootstrap: str, timeout_s: float, security: Mapping[str, Any] | None = None) -> KafkaAdminClient:
    """An admin client, or a UserError that says where nothing answered.

    ``security``: kafka-python keyword arguments from :func:`citystream.kafkaconf.kafka_python`.
    """
    servers = [s.strip() for s in bootstrap.split(",") if s.strip()]
    endpoints = []
    for server in servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            raise UserError(f"Kafka bootstrap {server!r} is not HOST:PORT (set CITYSTREAM_KAFKA_BOOTSTRAP)")
        endpoints.append((host.strip("[]"), int(port)))
    if not endpoints:
        raise UserError("Kafka bootstrap is empty (set CITYSTREAM_KAFKA_BOOTSTRAP)")
    # a refused port fails here at once instead of after the client's bootstrap timeout
    reachable = False
    for host, port in endpoints:
        try:
            socket.create_connection((host, port), timeout=min(timeout_s, 3.0)).close()
            reachable = True
            break
        except OSError:
            continue
    if not reachable:
        raise UserError(f"no Kafka broker answers at {bootstrap}: start it with `citystream stack up`")

    try:
        return KafkaAdminClient(
            bootstrap_servers=servers,
            client_id="citystream-topics",
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(timeout_s * 1000),
            **(security or {}),
        )
    except KafkaError as exc:
        raise UserError(f"cannot talk to Kafka at {bootstrap}: {exc}") from None


def _observe(
    admin: KafkaAdminClient, names: list[str], keys: Mapping[str, list[str]]
) -> dict[str, TopicState]:
    """Partition counts and the given config keys of those ``names`` the broker has."""
    existing = set(admin.list_topics())
    present = [n for n in names if n in existing]
    partitions = {}
    if present:
        for topic in admin.describe_topics(present):
            if topic.get("error_code", 0) == 0:
                partitions[topic["name"]] = len(topic["partitions"])
    configs: dict[str, dict[str, str]] = {n: {} for n in partitions}
    wanted = [
        ConfigResource(ConfigResourceType.TOPIC, n, list(keys.get(n, []))) for n in partitions if keys.get(n)
    ]
    if wanted:
        described = admin.describe_configs(wanted, config_filter="all").get("topic", {})
        for name, entries in described.items():
            configs[name] = {k: _normalise(k, str(e.get("value"))) for k, e in entries.items()}
    return {n: TopicState(n, None, partitions.get(n), configs.get(n, {})) for n in names}


def ensure_topics(
    bootstrap: str,
    prefix: str,
    spec_path: Path = DEFAULT_SPEC,
    *,
    timeout_s: float = 30.0,
    security: Mapping[str, Any] | None = None,
) -> list[Change]:
    """Make the broker's topics match the spec; returns what changed (empty: already up to date).

    Plans everything first, so a refused partition decrease changes nothing at all.
    """
    specs = load_spec(spec_path)
    _check_prefix(prefix, specs)
    by_name = {s.name(prefix): s for s in specs}
    admin = _connect(bootstrap, timeout_s, security)
    try:
        return _apply(admin, by_name, timeout_s)
    finally:
        admin.close()


def _apply(admin: KafkaAdminClient, by_name: Mapping[str, TopicSpec], timeout_s: float) -> list[Change]:
    states = _observe(admin, list(by_name), {n: list(s.configs) for n, s in by_name.items()})
    refused = [
        f"{n} has {st.partitions} partitions, the spec asks for {by_name[n].partitions}"
        for n, st in states.items()
        if st.partitions is not None and st.partitions > by_name[n].partitions
    ]
    if refused:
        raise UserError(
            "Kafka cannot remove partitions: "
            + "; ".join(refused)
            + ". Raise partitions in the spec, or delete the topic (and its data) first. Nothing was changed."
        )
    create = {n: s for n, s in by_name.items() if states[n].partitions is None}
    grow = {
        n: s.partitions for n, s in by_name.items() if (states[n].partitions or s.partitions) < s.partitions
    }
    alter = {
        n: {k: v for k, v in s.configs.items() if states[n].configs.get(k) != v}
        for n, s in by_name.items()
        if n not in create
    }
    alter = {n: diff for n, diff in alter.items() if diff}
    changes: list[Change] = []
    timeout_ms = int(timeout_s * 1000)
    try:
        if create:
            changes += _create(admin, create, timeout_ms)
        if grow:
            changes += _grow(admin, grow, states, timeout_ms)
        if alter:
            changes += _alter(admin, alter, states, timeout_s)
    except KafkaError as exc:
        done = "; ".join(str(c) for c in changes) or "nothing"
        raise UserError(f"Kafka refused a topic change ({exc}); already done: {done}") from None
    return changes


def _create(admin: KafkaAdminClient, create: Mapping[str, TopicSpec], timeout_ms: int) -> list[Change]:
    result = admin.create_topics(
        {
            n: {
                "num_partitions": s.partitions,
                "replication_factor": s.replication_factor,
                "configs": dict(s.configs),
            }
            for n, s in create.items()
        },
        timeout_ms=timeout_ms,
        raise_errors=False,
    )
    errors = [f"{t['name']}: {t['error_message']}" for t in result["topics"] if t["error_code"]]
    if errors:
        raise UserError("could not create " + "; ".join(errors))
    admin.wait_for_topics(list(create), timeout_ms=timeout_ms)
    changes = []
    for n, s in create.items():
        settings = ", ".join(f"{k}={v}" for k, v in s.configs.items())
        changes.append(Change(n, "create", f"partitions={s.partitions}, {settings}"))
    return changes


def _grow(
    admin: KafkaAdminClient, grow: Mapping[str, int], states: Mapping[str, TopicState], timeout_ms: int
) -> list[Change]:
    response = admin.create_partitions(dict(grow), timeout_ms=timeout_ms, raise_errors=False)
    errors = [f"{r.name}: {r.error_message}" for r in response.results if r.error_code]
    if errors:
        raise UserError("could not add partitions: " + "; ".join(errors))
    return [
        Change(
            n,
            "add-partitions",
            f"{states[n].partitions} -> {count}; keys written from now on may land on other "
            "partitions than before (per-key order holds only within old or new data)",
        )
        for n, count in grow.items()
    ]


def _alter(
    admin: KafkaAdminClient,
    alter: Mapping[str, Mapping[str, str]],
    states: Mapping[str, TopicState],
    timeout_s: float,
) -> list[Change]:
    resources = [ConfigResource(ConfigResourceType.TOPIC, n, dict(diff)) for n, diff in alter.items()]
    try:
        result = admin.alter_configs(resources)
    except ValueError as exc:  # kafka-python rejects keys that are no topic config
        raise UserError(f"could not alter topic configs: {exc}") from None
    errors = [f"{n}: {r}" for n, r in result.get("topic", {}).items() if r != "OK"]
    if errors:
        raise UserError("could not alter topic configs: " + "; ".join(errors))

    # The broker applies committed config changes asynchronously: wait until it shows
    # them, so a caller (or a second `topics create`) sees the state just reported.
    def applied() -> bool:
        now = _observe(admin, list(alter), {n: list(d) for n, d in alter.items()})
        return all(now[n].configs.get(k) == v for n, d in alter.items() for k, v in d.items())

    if not wait_until(applied, timeout_s, interval_s=0.2):
        raise UserError(f"Kafka accepted the config changes but did not apply them within {timeout_s:.0f}s")
    return [
        Change(n, "alter-config", f"{k}: {states[n].configs.get(k)} -> {v}")
        for n, diff in alter.items()
        for k, v in diff.items()
    ]


def list_topics(
    bootstrap: str,
    prefix: str,
    spec_path: Path = DEFAULT_SPEC,
    *,
    timeout_s: float = 30.0,
    security: Mapping[str, Any] | None = None,
) -> list[TopicState]:
    """The spec's topics and any other topic under ``prefix``, as the broker has them."""
    specs = load_spec(spec_path)
    _check_prefix(prefix, specs)
    by_name = {s.name(prefix): s for s in specs}
    admin = _connect(bootstrap, timeout_s, security)
    try:
        extra = sorted(n for n in admin.list_topics() if n.startswith(prefix) and n not in by_name)
        keys = {n: list(s.configs) for n, s in by_name.items()}
        keys.update({n: list(REQUIRED_CONFIGS) for n in extra})
        states = _observe(admin, [*by_name, *extra], keys)
    finally:
        admin.close()
    return [TopicState(st.name, by_name.get(st.name), st.partitions, st.configs) for st in states.values()]


def prepare_topics(
    bootstrap: str, prefix: str, spec: Path = DEFAULT_SPEC, *, security: Mapping[str, Any] | None = None
) -> str:
    """Create the topics declared in the spec if missing; the readings topics' codec.

    Why before producing: producing to a missing topic would auto-create it with one
    partition and broker defaults, silently diverging from the spec. Producing with
    the topic's own codec spares the broker a recompression.
    """
    ensure_topics(bootstrap, prefix, spec, security=security)
    codecs = {s.configs.get("compression.type") for s in load_spec(spec) if s.suffix.startswith("readings.")}
    codec = codecs.pop() if len(codecs) == 1 else "lz4"
    return codec if codec in ("lz4", "zstd", "snappy", "gzip") else "lz4"
