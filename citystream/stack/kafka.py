"""The stack's Kafka: one combined broker+controller in KRaft mode, run from Maven Central jars."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import uuid
from pathlib import Path

from kafka import KafkaAdminClient

from citystream import kafkaconf
from citystream.errors import UserError
from citystream.settings import KAFKA_SECURE_MARKER, Settings
from citystream.stack.service import Service
from citystream.stack.store import INHERITED_VARS

#: Marker (in the service dir) of a data dir formatted with the SCRAM users: without it a
#: secure broker would start on PLAINTEXT-formatted metadata that knows no users. Its presence
#: is also what makes every later command of this run dir speak SASL_SSL (``settings.load``).
_SECURE_MARKER = KAFKA_SECURE_MARKER.name
#: KRaft's own ACL store; ``admin`` (the tools, the broker itself) and ``controller`` are its
#: only super users, every other user gets the ACLs of :mod:`citystream.stack.acl`.
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
PLAIN_MODULE = "org.apache.kafka.common.security.plain.PlainLoginModule"


def java_env() -> dict[str, str]:
    """The whole environment of the broker's JVM and tools: none of our variables beyond the basics.

    Why from scratch: ours may hold any citystream secret (the Grafana token, the store's
    passwords); the broker reads its own from ``server.properties`` (0600) and needs none of them.
    """
    return {var: os.environ[var] for var in (*INHERITED_VARS, "JAVA_HOME") if var in os.environ}


class Kafka(Service):
    """Apache Kafka 4.x, one combined broker+controller in KRaft mode, from Maven Central jars."""

    name = "kafka"
    port_env = "CITYSTREAM_KAFKA_PORT"

    @property
    def port(self) -> int:
        return self.settings.kafka_port

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def _classpath(self) -> str:
        jars = self.settings.jars_dir / "kafka"
        if not any(jars.glob("kafka_2.13-*.jar")):
            raise UserError(f"Kafka broker jars missing in {jars}: run `make setup`")
        return f"{jars}/*"

    @property
    def secure(self) -> bool:
        return kafkaconf.secure(self.settings)

    def _listener_props(self) -> dict[str, str]:
        """PLAINTEXT, or SASL_SSL listeners only, with an authorizer.

        The controller listener is SASL_SSL too, with one static PLAIN user (KRaft cannot use
        SCRAM there: the SCRAM users live in the metadata the controller serves). A PLAINTEXT
        controller would make every local process a super user (``User:ANONYMOUS``).
        """
        s = self.settings
        controller = f"CONTROLLER://127.0.0.1:{s.kafka_controller_port}"
        if not self.secure:
            return {
                "listeners": f"PLAINTEXT://127.0.0.1:{s.kafka_port},{controller}",
                "advertised.listeners": f"PLAINTEXT://127.0.0.1:{s.kafka_port}",
                "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                "inter.broker.listener.name": "PLAINTEXT",
                "auto.create.topics.enable": "true",
            }
        found = kafkaconf.load_secrets(s)
        material = kafkaconf.secrets_dir(s)
        admin = kafkaconf.jaas("admin", found["users"]["admin"])
        ctl = found["controller"]
        ctl_jaas = f'{PLAIN_MODULE} required username="controller" password="{ctl}" user_controller="{ctl}";'
        return {
            "listeners": f"SASL_SSL://127.0.0.1:{s.kafka_port},{controller}",
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{s.kafka_port}",
            "listener.security.protocol.map": "CONTROLLER:SASL_SSL,SASL_SSL:SASL_SSL",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": kafkaconf.MECHANISM,
            "sasl.mechanism.inter.broker.protocol": kafkaconf.MECHANISM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": admin,
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": ctl_jaas,
            "authorizer.class.name": AUTHORIZER,
            "super.users": "User:admin;User:controller",
            "allow.everyone.if.no.acl.found": "false",
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(material / "broker.p12"),
            "ssl.keystore.password": found["keystore"],
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(material / kafkaconf.CA_FILE),
            "ssl.client.auth": "none",
            # Topics come from infra/topics.toml only; a typo must fail, not make a topic.
            "auto.create.topics.enable": "false",
        }

    def _write_config(self) -> Path:
        s = self.settings
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{s.kafka_controller_port}",
            "controller.listener.names": "CONTROLLER",
            **self._listener_props(),
            "log.dirs": str(self.data_dir),
            "num.partitions": "2",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "168",
        }
        path = self.dir / "server.properties"
        _write_private(path, "".join(f"{k}={v}\n" for k, v in props.items()))
        log4j = self.dir / "log4j2.properties"
        log4j.write_text(
            "rootLogger.level = INFO\nrootLogger.appenderRef.out.ref = out\n"
            "appender.out.type = Console\nappender.out.name = out\n"
            "appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
            "logger.kafka.name = kafka\nlogger.kafka.level = WARN\n"
            "logger.apache.name = org.apache.kafka\nlogger.apache.level = WARN\n"
            "logger.started.name = kafka.server.KafkaRaftServer\nlogger.started.level = INFO\n"
        )
        return path

    def _java(self, *args: str, heap: str = "512m") -> list[str]:
        java = shutil.which("java")
        if not java:
            raise UserError("java not found: install OpenJDK 17 (apt-get install openjdk-17-jdk-headless)")
        return [
            java,
            f"-Xmx{heap}",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            "-cp",
            self._classpath(),
            *args,
        ]

    def _format(self, config: Path) -> None:
        """Format the KRaft storage once; a secure broker gets its SCRAM users in the same step.

        The users' passwords go through a Java @argfile (mode 0600, deleted after), never the
        command line another local user could read in /proc.
        """
        cluster_id = "-"
        while cluster_id.startswith("-"):  # kafka-storage would take "-..." for an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        args = ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)]
        argfile = self.dir / "format.args"
        if self.secure:
            users = kafkaconf.load_secrets(self.settings)["users"]
            scram = [f"{kafkaconf.MECHANISM}=[name={u},password={p}]" for u, p in users.items()]
            _write_private(argfile, "\n".join(["kafka.tools.StorageTool", *args[1:], *_add_scram(scram)]))
            args = [f"@{argfile}"]
        try:
            fmt = subprocess.run(
                self._java(*args), capture_output=True, text=True, check=False, env=java_env()
            )
        finally:
            argfile.unlink(missing_ok=True)
        if fmt.returncode != 0:
            out = kafkaconf.redact(f"{fmt.stdout.strip()} {fmt.stderr.strip()}", self.settings)
            raise UserError(f"formatting Kafka storage failed: {out}")
        if self.secure:
            (self.dir / _SECURE_MARKER).touch()
        else:
            (self.dir / _SECURE_MARKER).unlink(missing_ok=True)  # a stale one from purged data

    def start(self, timeout_s: float = 120.0) -> str:
        """Start, unless the requested security contradicts the broker's formatted data."""
        self._check_mode()
        return super().start(timeout_s)

    def _check_mode(self) -> None:
        formatted = (self.data_dir / "meta.properties").exists()
        marked = (self.dir / _SECURE_MARKER).exists()
        if self.secure and formatted and not marked:
            raise UserError(
                f"the broker data in {self.data_dir} was formatted without SCRAM users; "
                "`citystream stack down --purge` first to start it --secure"
            )
        if not self.secure and marked:
            raise UserError(
                f"the broker in {self.dir} was started --secure but CITYSTREAM_KAFKA_SECURITY says "
                f"{self.settings.kafka_security!r}: unset it (the run dir remembers sasl_ssl), or "
                "`citystream stack down --purge` first to start it PLAINTEXT"
            )

    def _launch(self) -> subprocess.Popen[bytes]:
        formatted = (self.data_dir / "meta.properties").exists()
        if self.secure:
            ensure_material(self.settings)
        config = self._write_config()
        if not formatted:
            self._format(config)
        with open(self.log, "ab") as log:
            return subprocess.Popen(
                self._java("kafka.Kafka", str(config), heap="768m"),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=java_env(),
            )

    def healthy(self) -> bool:
        admin = KafkaAdminClient(
            bootstrap_servers=self.settings.kafka_bootstrap,
            request_timeout_ms=3000,
            client_id="citystream-health",
            **kafkaconf.kafka_python(self.settings, "admin"),
        )
        try:
            return bool(admin.describe_cluster().get("brokers"))
        finally:
            admin.close()

    def detail(self) -> str:
        listener = "SASL_SSL (SCRAM-SHA-512)" if self.secure else "PLAINTEXT"
        return f"KRaft broker+controller, {listener}, data {self.data_dir}"


# --------------------------------------------------------------------------- secure material


def _add_scram(entries: list[str]) -> list[str]:
    return [arg for entry in entries for arg in ("--add-scram", entry)]


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, from the first byte (no window at a wider mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def ensure_material(settings: Settings) -> Path:
    """Create, once, the CA, the broker's keystore and the SCRAM users' passwords; reuse them after.

    Why keytool: it ships with the JDK the broker needs anyway, and no Python
    crypto dependency is installed. Keystore passwords reach keytool through
    its environment (``-storepass:env``), never its command line.
    """
    material = kafkaconf.secrets_dir(settings)
    done = material / kafkaconf.SECRETS_FILE
    if done.exists():
        found = kafkaconf.load_secrets(settings)
        if "controller" not in found:  # material made before the controller listener was secured
            _write_private(done, json.dumps({**found, "controller": secrets.token_urlsafe(24)}, indent=1))
        return material
    keytool = shutil.which("keytool")
    if not keytool:
        raise UserError("keytool not found: install OpenJDK 17 (apt-get install openjdk-17-jdk-headless)")
    material.mkdir(parents=True, exist_ok=True)
    os.chmod(material, 0o700)
    for stale in ("ca.p12", "broker.p12", "broker.csr", "broker.crt", kafkaconf.CA_FILE):
        (material / stale).unlink(missing_ok=True)  # a half-made set from an interrupted run
    found = {
        "users": {user: secrets.token_urlsafe(24) for user in kafkaconf.USERS},
        "keystore": secrets.token_urlsafe(24),
        "ca": secrets.token_urlsafe(24),
        "controller": secrets.token_urlsafe(24),
    }
    env = {**java_env(), "CS_CA_PASS": found["ca"], "CS_KS_PASS": found["keystore"]}
    ca = ["-keystore", str(material / "ca.p12"), "-storetype", "PKCS12", "-storepass:env", "CS_CA_PASS"]
    ks = ["-keystore", str(material / "broker.p12"), "-storetype", "PKCS12", "-storepass:env", "CS_KS_PASS"]
    key = ["-keyalg", "RSA", "-keysize", "2048"]
    steps = [
        ["-genkeypair", "-alias", "ca", *key, "-dname", "CN=citystream local CA", "-ext", "bc:c",
         "-validity", "3650", *ca],
        ["-exportcert", "-rfc", "-alias", "ca", "-file", str(material / kafkaconf.CA_FILE), *ca],
        ["-genkeypair", "-alias", "broker", *key, "-dname", "CN=127.0.0.1", "-validity", "825", *ks],
        ["-certreq", "-alias", "broker", "-file", str(material / "broker.csr"), *ks],
        ["-gencert", "-alias", "ca", "-infile", str(material / "broker.csr"), "-outfile",
         str(material / "broker.crt"), "-rfc", "-validity", "825", "-ext", "SAN=ip:127.0.0.1,dns:localhost",
         "-ext", "EKU=serverAuth", *ca],
        ["-importcert", "-noprompt", "-alias", "ca", "-file", str(material / kafkaconf.CA_FILE), *ks],
        ["-importcert", "-alias", "broker", "-file", str(material / "broker.crt"), *ks],
    ]  # fmt: skip
    for step in steps:
        run = subprocess.run([keytool, *step], env=env, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise UserError(f"keytool {step[0]} failed: {run.stdout.strip()} {run.stderr.strip()}")
    for path in material.iterdir():
        os.chmod(path, 0o600)
    _write_private(done, json.dumps(found, indent=1))  # last: its presence means "complete"
    return material
