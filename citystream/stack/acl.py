"""Kafka ACLs of a ``--secure`` stack: each component's user may do its own job and nothing else.

Why per topic prefix: topic names are ``<topic_prefix><suffix>`` and the
prefix varies (``citystream.``, the demo's ``citystream.demo.``, a test's own),
while Kafka matches resource names literally or by prefix only. So the grants
are made for one prefix at a time, by ``stack up`` for the configured prefix
and by the demo for its own; a new prefix needs a ``stack up`` with it.

Who may do what (``admin`` and the broker's ``controller`` are super users):

* ``producer`` writes the inputs: ``readings.*``, ``labels`` and the sensor registry
  ``sensors`` (the simulator, the importer and ``citystream sensors``), and reads ``sensors``
  (a registry edit starts from the current entries);
* ``jobs`` reads ``readings.*``, ``sensors`` (the registry the domain jobs join) and
  ``aggregates`` (the detect job's input),
  writes every job output, and uses the jobs' consumer groups and
  transactional ids (these start with the topic prefix);
* ``loader`` reads every routed result topic (:data:`ROUTES`), writes the
  dead-letter topic (undecodable results), and uses groups ``citystream-loader*``.

Nobody but ``admin`` may create, delete or reconfigure topics.
"""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from citystream import kafkaconf, proc
from citystream.catalog import DOMAIN_NAMES
from citystream.connectors.loader.routes import DEAD_LETTER, ROUTES
from citystream.errors import UserError
from citystream.settings import Settings

INPUT_PREFIX = "readings."
PRODUCED = ("labels", "sensors")
#: What the sources read back: the registry, to edit it from its current entries.
SOURCE_READS = ("sensors",)
#: The group id registry readers give librdkafka (it looks the group up even when nothing commits).
SOURCE_GROUP_PREFIX = "citystream-registry"
#: What the Flink jobs write (the domain jobs' four outputs, the detect job's three).
JOB_OUTPUTS = ("aggregates", "late-events", "dead-letter", "sensor-health", "anomalies", "alerts")
JOB_INPUTS = ("aggregates", "sensors")
#: Consumer groups of the jobs' Kafka sources (jobs/kafka_io.py, jobs/detect.py).
JOB_GROUPS = (*(f"citystream-{name}" for name in DOMAIN_NAMES), "citystream-detect")
#: Every loader's group starts so (the store's loader, the demo's, a test's).
LOADER_GROUP_PREFIX = "citystream-loader"

_PREFIXED = ResourcePatternType.PREFIXED
_READ = (AclOperation.READ, AclOperation.DESCRIBE)
_WRITE = (AclOperation.WRITE, AclOperation.DESCRIBE)


def _allow(user: str, kind: ResourceType, name: str, pattern: ResourcePatternType, ops: tuple) -> list:
    return [AclBinding(kind, name, pattern, f"User:{user}", "*", op, AclPermissionType.ALLOW) for op in ops]


def bindings(prefix: str) -> list[AclBinding]:
    """Every ALLOW binding of the three component users for topics under ``prefix``.

    Prefixed patterns throughout: a replay's topics, groups and transactional ids are the
    live ones with a ``.replay.<run id>`` suffix, and must be allowed to the same user.
    """
    topic, group, txn = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID
    out = _allow("producer", topic, prefix + INPUT_PREFIX, _PREFIXED, _WRITE)
    for suffix in PRODUCED:
        out += _allow("producer", topic, prefix + suffix, _PREFIXED, _WRITE)
    for suffix in SOURCE_READS:
        out += _allow("producer", topic, prefix + suffix, _PREFIXED, _READ)
    out += _allow("producer", group, SOURCE_GROUP_PREFIX, _PREFIXED, _READ)
    out += _allow("jobs", topic, prefix + INPUT_PREFIX, _PREFIXED, _READ)
    for suffix in JOB_INPUTS:
        out += _allow("jobs", topic, prefix + suffix, _PREFIXED, _READ)
    for suffix in JOB_OUTPUTS:
        out += _allow("jobs", topic, prefix + suffix, _PREFIXED, _WRITE)
    for name in JOB_GROUPS:
        out += _allow("jobs", group, name, _PREFIXED, _READ)
    out += _allow("jobs", txn, prefix, _PREFIXED, _WRITE)
    for suffix in ROUTES:
        out += _allow("loader", topic, prefix + suffix, _PREFIXED, _READ)
    out += _allow("loader", topic, prefix + DEAD_LETTER, _PREFIXED, _WRITE)
    out += _allow("loader", topic, prefix + "alerts", _PREFIXED, _WRITE)  # its own stall alerts
    out += _allow("loader", group, LOADER_GROUP_PREFIX, _PREFIXED, _READ)
    return list(dict.fromkeys(out))  # DESCRIBE comes with READ and WRITE; Kafka refuses duplicates


def grant(settings: Settings, timeout_s: float = 30.0) -> int:
    """Create (idempotently) the ACLs for ``settings.topic_prefix``; 0 on a PLAINTEXT stack."""
    if not kafkaconf.secure(settings):
        return 0
    admin = AdminClient({**kafkaconf.confluent(settings, "admin"), "client.id": "citystream-acl"})
    wanted = bindings(settings.topic_prefix)
    try:
        for future in admin.create_acls(wanted, request_timeout=timeout_s).values():
            future.result()
        # The controller has committed them; the broker authorizes from its own copy of the
        # metadata, which may lag. A client refused meanwhile fails for good (librdkafka drops a
        # topic's queued records on TOPIC_AUTHORIZATION_FAILED), so return once the broker has them.
        if not proc.wait_until(lambda: set(wanted) <= _described(admin, timeout_s), timeout_s):
            raise UserError(f"the broker did not apply the Kafka ACLs within {timeout_s:.0f}s")
    except KafkaException as exc:
        raise UserError(f"creating Kafka ACLs failed: {kafkaconf.redact(str(exc), settings)}") from None
    return len(wanted)


def _described(admin: AdminClient, timeout_s: float) -> set[AclBinding]:
    """Every ACL the broker (not the controller) answers with: its authorizer's current view."""
    every = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY, AclPermissionType.ANY
    )
    return set(admin.describe_acls(every, request_timeout=timeout_s).result())
