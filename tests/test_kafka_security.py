"""Kafka over SASL_SSL (``stack up --secure``): a real broker, real clients, real refusals.

Why a broker of its own: the session's shared broker is PLAINTEXT (every other
test uses it); this module starts one on free loopback ports with a SASL_SSL
listener only, the generated CA and SCRAM-SHA-512 users, and checks what an
attacker on the machine would try (no credentials, a wrong password, a topic
typo) as well as that each component still does its job with its own user.
"""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from citystream import contracts, kafkaconf
from citystream.cli import main
from citystream.connectors.loader.kafka import consumer_config
from citystream.connectors.producer import DeliveryError, ReadingProducer
from citystream.errors import UserError
from citystream.jobs.sql import kafka_table
from citystream.settings import Settings
from citystream.settings import load as load_settings
from citystream.stack import Kafka, acl
from citystream.stack.kafka import ensure_material
from citystream.topics import ensure_topics, list_topics
from tests.conftest import stack_settings

pytestmark = [pytest.mark.integration, pytest.mark.security]

T0_MS = 1_767_571_200_000  # 2026-01-05T00:00:00Z


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings of a SASL_SSL broker started for this module (material generated on first start)."""
    settings = stack_settings(
        tmp_path_factory.mktemp("secure"), topic_prefix="sec.", kafka_security=kafkaconf.SASL_SSL
    )
    broker = Kafka(settings)
    broker.start()
    try:
        acl.grant(settings)
        acl.grant(settings.replace(topic_prefix="secjob."))
        yield settings
    finally:
        broker.stop()


def _secrets(settings: Settings) -> list[str]:
    found = kafkaconf.load_secrets(settings)
    values = [*found["users"].values(), found["keystore"], found["ca"], found["controller"]]
    assert sorted(kafkaconf.secret_values(settings)) == sorted(values)
    return values


def _grid_reading(i: int) -> dict:
    return {
        "envelope": {
            "sensor_id": f"sec-grid-{i % 3:02d}", "site_id": "sec-ss01", "zone_id": "sec-z01",
            "domain": "grid", "event_time": T0_MS + i * 5_000, "seq": i, "lat": 52.5, "lon": 13.4,
            "quality": 0,
        },
        "phase": "a", "voltage_v": 230.0 + i, "current_a": 40.0, "frequency_hz": 50.0,
        "active_power_kw": 8.0, "reactive_power_kvar": 1.0, "power_factor": 0.97,
    }  # fmt: skip


def _auth_errors(config: dict) -> list[KafkaError]:
    """Asserts a confluent-kafka client gets no metadata with ``config``; the errors it reported."""
    errors: list[KafkaError] = []
    admin = AdminClient(
        {
            **config,
            "error_cb": errors.append,
            "socket.timeout.ms": 3000,
            "logger": logging.getLogger("test.kafka_security"),  # into caplog, not over the output
        }
    )
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=6)
    admin.poll(1)  # error callbacks are served by poll
    return errors


def test_material_is_private_and_reused(secure: Settings) -> None:
    material = kafkaconf.secrets_dir(secure)
    assert stat.S_IMODE(material.stat().st_mode) == 0o700
    files = sorted(p.name for p in material.iterdir())
    assert {"ca.pem", "broker.p12", "secrets.json"} <= set(files)
    for path in [*material.iterdir(), secure.run_dir / "kafka" / "server.properties"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    before = (material / "secrets.json").read_text()
    assert set(json.loads(before)["users"]) == set(kafkaconf.USERS)
    assert ensure_material(secure) == material
    assert (material / "secrets.json").read_text() == before
    assert sorted(p.name for p in material.iterdir()) == files


def test_listener_is_sasl_ssl_only_and_no_auto_create(secure: Settings) -> None:
    props = (secure.run_dir / "kafka" / "server.properties").read_text()
    assert f"listeners=SASL_SSL://127.0.0.1:{secure.kafka_port},CONTROLLER://" in props
    assert "PLAINTEXT" not in props  # the controller listener too: no anonymous super user
    assert "listener.security.protocol.map=CONTROLLER:SASL_SSL,SASL_SSL:SASL_SSL" in props
    assert "auto.create.topics.enable=false" in props
    assert "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer" in props
    assert "super.users=User:admin;User:controller\n" in props
    assert "allow.everyone.if.no.acl.found=false" in props


def test_unauthenticated_client_is_refused(secure: Settings) -> None:
    # PLAINTEXT against the TLS listener: the broker closes the connection, no metadata.
    _auth_errors({"bootstrap.servers": secure.kafka_bootstrap})
    # Nor through the controller's listener (TLS and its own user there too).
    _auth_errors({"bootstrap.servers": f"127.0.0.1:{secure.kafka_controller_port}"})
    # TLS but no SASL: the broker closes the connection.
    tls_only = {
        "bootstrap.servers": secure.kafka_bootstrap,
        "security.protocol": "SSL",
        "ssl.ca.location": str(kafkaconf.ca_file(secure)),
    }
    _auth_errors(tls_only)
    with pytest.raises(UserError, match="cannot talk to Kafka"):
        ensure_topics(secure.kafka_bootstrap, secure.topic_prefix, secure.topics_spec, timeout_s=5)


def test_wrong_password_is_refused(secure: Settings) -> None:
    wrong = {**kafkaconf.confluent(secure, "producer"), "sasl.password": "not-the-password"}
    errors = _auth_errors(wrong)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    bad = {**kafkaconf.kafka_python(secure, "admin"), "sasl_plain_password": "not-the-password"}
    with pytest.raises(UserError):
        ensure_topics(
            secure.kafka_bootstrap, secure.topic_prefix, secure.topics_spec, timeout_s=5, security=bad
        )
    # A real user with another user's password is refused too.
    swapped = {**kafkaconf.confluent(secure, "loader"), "sasl.password": kafkaconf.password(secure, "jobs")}
    assert any(e.code() == KafkaError._AUTHENTICATION for e in _auth_errors(swapped))


def _consume(settings: Settings, topic: str, want: int) -> list[bytes]:
    """Read ``want`` records of input ``topic`` as the jobs user (in a group of the grid job)."""
    config = {**kafkaconf.confluent(settings, "jobs"), "group.id": "citystream-grid"}
    consumer = Consumer({**config, "auto.offset.reset": "earliest", "enable.partition.eof": False})
    values: list[bytes] = []
    try:
        consumer.subscribe([topic])
        for _ in range(60):
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                assert msg.error() is None, msg.error()
                values.append(msg.value())
            if len(values) >= want:
                break
    finally:
        consumer.close()
    return values


def test_round_trip_with_per_component_users(secure: Settings) -> None:
    admin = kafkaconf.kafka_python(secure, "admin")
    changes = ensure_topics(secure.kafka_bootstrap, secure.topic_prefix, secure.topics_spec, security=admin)
    assert changes, "the spec's topics were created over SASL_SSL by the admin user"
    topic = secure.topic("readings.grid")
    with ReadingProducer.from_settings(secure, compression="zstd") as producer:
        for i in range(50):
            producer.send(topic, "citystream.GridReading", _grid_reading(i))
        producer.flush()
        assert producer.sent == 50
    values = _consume(secure, topic, 50)
    assert len(values) == 50
    states = {
        s.name: s.status for s in list_topics(secure.kafka_bootstrap, secure.topic_prefix, security=admin)
    }
    assert states[topic] == "ok"


def test_missing_topic_is_not_auto_created(secure: Settings) -> None:
    typo = secure.topic("readings.gird")
    with pytest.raises(DeliveryError), ReadingProducer.from_settings(secure, delivery_timeout_ms=3000) as p:
        p.send(typo, "citystream.GridReading", _grid_reading(0))
    consumer = Consumer(consumer_config(secure, "citystream-loader-sec-typo"))
    try:
        consumer.subscribe([typo])
        consumer.consume(num_messages=1, timeout=3.0)
        names = set(consumer.list_topics(timeout=10).topics)
    finally:
        consumer.close()
    assert typo not in names


def test_flink_options_carry_the_jobs_user_and_redact(secure: Settings) -> None:
    props = kafkaconf.flink(secure)
    assert props["properties.security.protocol"] == "SASL_SSL"
    assert props["properties.sasl.mechanism"] == "SCRAM-SHA-512"
    assert props["properties.sasl.jaas.config"].startswith(kafkaconf.FLINK_SCRAM_MODULE)
    assert 'username="jobs"' in props["properties.sasl.jaas.config"]
    assert props["properties.ssl.truststore.location"] == str(kafkaconf.ca_file(secure))
    ddl = kafka_table("t", "citystream.Anomaly", topic="x", bootstrap=secure.kafka_bootstrap, security=props)
    secret = kafkaconf.password(secure, "jobs")
    assert secret in ddl
    assert secret not in kafkaconf.redact(ddl, secure) and "***" in kafkaconf.redact(ddl, secure)
    assert kafkaconf.flink(secure.replace(kafka_security="plaintext")) == {}


def _drain(settings: Settings, topic: str, idle_s: float = 8.0) -> list[bytes]:
    """Every committed record of ``topic``, as the loader's user, until it stays quiet ``idle_s``."""
    consumer = Consumer({**consumer_config(settings, "citystream-loader-sec"), "enable.partition.eof": False})
    values: list[bytes] = []
    try:
        consumer.subscribe([topic])
        quiet = 0.0
        while quiet < idle_s:
            msgs = consumer.consume(num_messages=10_000, timeout=1.0)
            quiet = 0.0 if msgs else quiet + 1.0
            values += [m.value() for m in msgs if m.error() is None]
    finally:
        consumer.close()
    return values


def test_grid_job_over_sasl_ssl(secure: Settings, capfd: pytest.CaptureFixture[str]) -> None:
    """The grid job (Flink SQL Kafka source and exactly-once sinks) as the ``jobs`` user."""
    # pyflink is heavy: imported only by the one test that runs a job.
    import pyflink

    from citystream.jobs.common import Windows, process, window_options
    from citystream.jobs.grid import GRID
    from citystream.jobs.kafka_io import build, insert_all
    from citystream.jobs.runtime import table_environment
    from tests.test_kafka_pipeline import readings

    settings = secure.replace(topic_prefix="secjob.")
    admin = kafkaconf.kafka_python(settings, "admin")
    ensure_topics(settings.kafka_bootstrap, settings.topic_prefix, settings.topics_spec, security=admin)
    rows = readings(sensors=2, minutes=2)
    with ReadingProducer.from_settings(settings) as producer:
        for r in rows:
            producer.send(settings.topic("readings.grid"), "citystream.GridReading", r)
    flink_log = Path(pyflink.__file__).parent / "log" / "flink-root-python-vm.log"  # the MiniCluster's log
    start = flink_log.stat().st_size if flink_log.exists() else 0
    windows = Windows()
    t_env = table_environment(
        settings, job="secjob", parallelism=1, checkpoint_interval="2 s", overrides=window_options(windows)
    )
    sinks = build(t_env, settings, GRID, windows, bounded=True)
    insert_all(t_env, process(t_env, GRID, t_env.from_path("grid_raw"), windows), sinks).wait()
    aggregates = [
        contracts.decode("citystream.WindowAggregate", v)
        for v in _drain(settings, settings.topic("aggregates"))
    ]
    want = ("sensor", "voltage_v", 60_000)
    span = {id(a): a["window_end"] - a["window_start"] for a in aggregates}
    volts = [a for a in aggregates if (a["key_kind"], a["metric"], span[id(a)]) == want]
    assert sum(a["samples"] for a in volts) == len(rows)
    out, err = capfd.readouterr()
    logged = flink_log.read_bytes()[start:].decode(errors="replace") if flink_log.exists() else ""
    for secret in _secrets(secure):
        assert secret not in out + err + logged, (
            "a generated secret appears in the job's output or Flink's log"
        )


def test_no_secret_in_logs_or_config(
    secure: Settings, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """Every client at DEBUG, then the broker's log, our logs, stdout/stderr and `config` are grepped."""
    caplog.set_level(logging.DEBUG)
    # `stack` quiets kafka-python's logger for its health polls; this test needs its DEBUG dump.
    caplog.set_level(logging.DEBUG, logger="kafka")
    admin = kafkaconf.kafka_python(secure, "admin")
    ensure_topics(secure.kafka_bootstrap, secure.topic_prefix, secure.topics_spec, security=admin)
    with ReadingProducer.from_settings(secure) as producer:
        producer.send(secure.topic("readings.grid"), "citystream.GridReading", _grid_reading(99))
    _consume(secure, secure.topic("readings.grid"), 1)
    _auth_errors({**kafkaconf.confluent(secure, "loader"), "sasl.password": "wrong", "debug": "security"})
    out, err = capfd.readouterr()
    broker_log = Path(secure.run_dir / "kafka" / "kafka.log").read_text(errors="replace")
    masked = json.dumps(secure.masked())
    texts = {
        "broker log": broker_log,
        "client logs": caplog.text,
        "stdout": out,
        "stderr": err,
        "config": masked,
    }
    assert "KafkaAdminClient with configuration" in caplog.text  # kafka-python's DEBUG dump did run
    for secret in _secrets(secure):
        for where, text in texts.items():
            assert secret not in text, f"a generated secret appears in the {where}"


# --------------------------------------------------------------------------- ACLs and the run dir


def _authorization_error(err: KafkaError | None) -> bool:
    codes = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED}
    return err is not None and (err.code() in codes or err.code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED)


def _visible_topics(settings: Settings, user: str) -> set[str]:
    """The topics ``user``'s metadata shows under the prefix: Kafka hides what a user may not describe."""
    admin = AdminClient({**kafkaconf.confluent(settings, user), "logger": logging.getLogger("test.acl")})
    return {t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topic_prefix)}


def _read_refused(settings: Settings, user: str, topic: str, group: str) -> KafkaError:
    """The error ``user`` gets reading ``topic`` from its start (asserts one comes)."""
    config = {**kafkaconf.confluent(settings, user), "group.id": group, "auto.offset.reset": "earliest"}
    consumer = Consumer({**config, "logger": logging.getLogger("test.acl")})
    try:
        consumer.subscribe([topic])
        for _ in range(20):
            for msg in consumer.consume(num_messages=10, timeout=1.0):
                assert msg.error() is not None, f"{user} read a record of {topic}"
                if _authorization_error(msg.error()):
                    return msg.error()
    finally:
        consumer.close()
    raise AssertionError(f"{user} reading {topic} got no authorization error")


def test_acls_confine_each_user(secure: Settings) -> None:
    """Producer writes inputs only, the loader reads results only; nobody but admin makes topics."""
    admin = kafkaconf.kafka_python(secure, "admin")
    ensure_topics(secure.kafka_bootstrap, secure.topic_prefix, secure.topics_spec, security=admin)
    p = secure.topic_prefix
    inputs = {f"{p}readings.{d}" for d in ("traffic", "water", "grid")} | {f"{p}labels", f"{p}sensors"}
    assert _visible_topics(secure, "producer") == inputs
    assert f"{p}aggregates" in _visible_topics(secure, "loader")
    assert not any(
        ".readings." in t or t.startswith(f"{p}readings") for t in _visible_topics(secure, "loader")
    )
    # The producer may neither read a result topic nor write one.
    err = _read_refused(secure, "producer", secure.topic("aggregates"), "citystream-loader-evil")
    assert _authorization_error(err)
    with (
        pytest.raises(DeliveryError),
        ReadingProducer.from_settings(secure, delivery_timeout_ms=5000) as prod,
    ):
        prod.send(secure.topic("aggregates"), "citystream.GridReading", _grid_reading(0))
    # The loader may not read the raw readings; the jobs user may not join the loader's groups.
    assert _authorization_error(
        _read_refused(secure, "loader", secure.topic("readings.grid"), "citystream-loader-x")
    )
    assert _authorization_error(
        _read_refused(secure, "jobs", secure.topic("aggregates"), "citystream-loader-x")
    )
    for user in ("producer", "jobs", "loader"):
        client = AdminClient({**kafkaconf.confluent(secure, user), "logger": logging.getLogger("test.acl")})
        futures = client.create_topics([NewTopic(f"{p}evil-{user}", 1, 1)], request_timeout=10)
        with pytest.raises(KafkaException) as refused:
            next(iter(futures.values())).result()
        assert _authorization_error(refused.value.args[0]), refused.value
    assert not any(
        "evil" in t for t in _visible_topics(secure, "producer") | _visible_topics(secure, "loader")
    )


def test_run_dir_remembers_secure_mode(
    secure: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a --secure start, commands need no variable: settings come from the run dir."""
    env = {"CITYSTREAM_RUN_DIR": str(secure.run_dir), "CITYSTREAM_KAFKA_PORT": str(secure.kafka_port)}
    assert load_settings(env).kafka_security == kafkaconf.SASL_SSL
    assert load_settings({**env, "CITYSTREAM_KAFKA_SECURITY": "plaintext"}).kafka_security == "plaintext"
    # An external broker is not this run dir's: nothing is assumed about it.
    external = {**env, "CITYSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    assert load_settings(external).kafka_security == kafkaconf.PLAINTEXT
    # Contradicting the run dir is refused with the fix, not answered with a broken broker.
    with pytest.raises(UserError, match="started --secure"):
        Kafka(secure.replace(kafka_security="plaintext")).start()
    # A real command with only the run dir and ports: it lists the topics over SASL_SSL.
    for var in ("CITYSTREAM_KAFKA_SECURITY", "CITYSTREAM_KAFKA_SECRETS_DIR"):
        monkeypatch.delenv(var, raising=False)
    for var, value in {**env, "CITYSTREAM_TOPIC_PREFIX": secure.topic_prefix}.items():
        monkeypatch.setenv(var, value)
    ensure_topics(secure.kafka_bootstrap, secure.topic_prefix, secure.topics_spec,
                  security=kafkaconf.kafka_python(secure, "admin"))  # fmt: skip
    assert main(["topics", "list"]) == 0
    assert secure.topic("readings.grid") in capsys.readouterr().out
    main(["stack", "status"])  # the store and Flink are not started here: only Kafka's line counts
    out = capsys.readouterr().out
    assert "SASL_SSL" in next(line for line in out.splitlines() if line.startswith("kafka ")), out
    assert "kafka security: sasl_ssl" in out
