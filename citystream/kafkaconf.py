"""How each component connects to Kafka, from Settings: one place for security options.

Why one module: the producers (confluent-kafka), the topic admin (kafka-python),
the loader (confluent-kafka) and the Flink jobs (the Java client inside Flink's
Kafka connector) spell the same four facts differently - protocol, mechanism,
user and password, trusted CA. Deriving all of them here keeps a PLAINTEXT
stack and a ``stack up --secure`` (SASL_SSL, SCRAM-SHA-512) stack one setting
apart, with each component on its own user.

The generated material lives in ``Settings.kafka_secrets_dir`` (default
``run_dir/kafka/security``, mode 0700, files 0600): ``ca.pem`` (the CA clients
trust) and ``secrets.json`` (the users' passwords); :mod:`citystream.stack.kafka`
writes it. Passwords never enter Settings, so ``citystream config`` cannot show
them; :func:`redact` masks them in text that might be shown (a job's DDL).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from citystream.errors import UserError
from citystream.settings import Settings

PLAINTEXT = "plaintext"
SASL_SSL = "sasl_ssl"
MECHANISM = "SCRAM-SHA-512"
#: The SCRAM users ``stack up --secure`` creates: one per component (admin is also the broker's own).
USERS = ("admin", "producer", "jobs", "loader")
CA_FILE = "ca.pem"
SECRETS_FILE = "secrets.json"
#: Flink's SQL Kafka connector shades the Kafka client: its JAAS module has the shaded name.
FLINK_SCRAM_MODULE = "org.apache.flink.kafka.shaded.org.apache.kafka.common.security.scram.ScramLoginModule"
KAFKA_SCRAM_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"


class Secret(str):
    """A password that prints as ``***`` inside containers.

    Why: kafka-python logs its whole configuration at DEBUG ("Starting
    KafkaAdminClient with configuration: {...}"), i.e. the repr of each value;
    the SCRAM code itself only uses the string's characters.
    """

    def __repr__(self) -> str:
        return "'***'"


def secure(settings: Settings) -> bool:
    """True for SASL_SSL; an unknown value is a UserError naming the variable."""
    mode = settings.kafka_security.strip().lower()
    if mode not in (PLAINTEXT, SASL_SSL):
        raise UserError(
            f"CITYSTREAM_KAFKA_SECURITY={settings.kafka_security!r}: expected {PLAINTEXT} or {SASL_SSL}"
        )
    return mode == SASL_SSL


def secrets_dir(settings: Settings) -> Path:
    """Where the CA and the users' passwords live (derived from the run dir unless set)."""
    if settings.kafka_secrets_dir:
        return Path(settings.kafka_secrets_dir).expanduser().resolve()
    return settings.run_dir / "kafka" / "security"


def ca_file(settings: Settings) -> Path:
    return secrets_dir(settings) / CA_FILE


def load_secrets(settings: Settings) -> dict[str, Any]:
    """The generated secrets (``users`` -> password, ``keystore`` password); UserError if absent."""
    path = secrets_dir(settings) / SECRETS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(
            f"Kafka is set to {SASL_SSL} but {path} is missing: start the broker with "
            "`citystream stack up --secure` (or point CITYSTREAM_KAFKA_SECRETS_DIR at its material)"
        ) from None
    except ValueError:
        raise UserError(f"{path} is not valid JSON") from None


def password(settings: Settings, user: str) -> str:
    users = load_secrets(settings).get("users", {})
    if user not in users:
        raise UserError(f"no Kafka user {user!r} in {secrets_dir(settings) / SECRETS_FILE}")
    return str(users[user])


def jaas(user: str, secret: str, module: str = KAFKA_SCRAM_MODULE) -> str:
    """A JAAS line for SCRAM; generated passwords are URL-safe, so no quoting is needed."""
    return f'{module} required username="{user}" password="{secret}";'


def confluent(settings: Settings, user: str) -> dict[str, Any]:
    """librdkafka (confluent-kafka) options: bootstrap, plus SASL_SSL as ``user`` when secure."""
    return {"bootstrap.servers": settings.kafka_bootstrap, **confluent_security(settings, user)}


def confluent_security(settings: Settings, user: str) -> dict[str, Any]:
    """Only the security options of :func:`confluent` (for a caller with its own bootstrap)."""
    if not secure(settings):
        return {}
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": MECHANISM,
        "sasl.username": user,
        "sasl.password": password(settings, user),
        "ssl.ca.location": str(ca_file(settings)),
        "ssl.endpoint.identification.algorithm": "https",
    }


def kafka_python(settings: Settings, user: str) -> dict[str, Any]:
    """kafka-python keyword arguments for security (bootstrap is the caller's: it splits it)."""
    if not secure(settings):
        return {}
    return {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": MECHANISM,
        "sasl_plain_username": user,
        "sasl_plain_password": Secret(password(settings, user)),
        "ssl_cafile": str(ca_file(settings)),
        "ssl_check_hostname": True,
    }


def flink(settings: Settings, user: str = "jobs") -> dict[str, str]:
    """Flink Kafka table options (``properties.*``) for security; empty for PLAINTEXT."""
    if not secure(settings):
        return {}
    return {
        "properties.security.protocol": "SASL_SSL",
        "properties.sasl.mechanism": MECHANISM,
        "properties.sasl.jaas.config": jaas(user, password(settings, user), FLINK_SCRAM_MODULE),
        "properties.ssl.truststore.type": "PEM",
        "properties.ssl.truststore.location": str(ca_file(settings)),
    }


def secret_values(settings: Settings) -> list[str]:
    """Every generated Kafka secret (users', keystore, CA and controller passwords); [] if none yet."""
    if not (secrets_dir(settings) / SECRETS_FILE).exists():
        return []
    found = load_secrets(settings)
    named = [found.get(k, "") for k in ("keystore", "ca", "controller")]
    return [str(v) for v in [*found.get("users", {}).values(), *named] if v]


def redact(text: str, settings: Settings) -> str:
    """``text`` with every generated Kafka secret replaced by ``***`` (for DDL or errors shown)."""
    for secret in secret_values(settings):
        text = text.replace(secret, "***")
    return text
