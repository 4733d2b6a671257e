"""The stack's Kafka: one combined broker+controller in KRaft mode, run from Maven Central jars."""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from pathlib import Path

from kafka import KafkaAdminClient

from citystream.errors import UserError
from citystream.stack.service import Service


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

    def _write_config(self) -> Path:
        s = self.settings
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{s.kafka_controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{s.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
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
            "auto.create.topics.enable": "true",
            "log.retention.hours": "168",
        }
        path = self.dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
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

    def _launch(self) -> subprocess.Popen[bytes]:
        config = self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            cluster_id = "-"
            while cluster_id.startswith("-"):  # kafka-storage would take "-..." for an option
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            fmt = subprocess.run(
                self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)),
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise UserError(f"formatting Kafka storage failed: {fmt.stdout.strip()} {fmt.stderr.strip()}")
        with open(self.log, "ab") as log:
            return subprocess.Popen(
                self._java("kafka.Kafka", str(config), heap="768m"),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def healthy(self) -> bool:
        admin = KafkaAdminClient(
            bootstrap_servers=self.settings.kafka_bootstrap,
            request_timeout_ms=3000,
            client_id="citystream-health",
        )
        try:
            return bool(admin.describe_cluster().get("brokers"))
        finally:
            admin.close()

    def detail(self) -> str:
        return f"KRaft broker+controller, data {self.data_dir}"
