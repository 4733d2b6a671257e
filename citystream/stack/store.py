"""The stack's store: the embedded ClickHouse engine (chdb) in one process serving ClickHouse HTTP."""

from __future__ import annotations

import subprocess
from pathlib import Path

from citystream import proc
from citystream.settings import Settings
from citystream.stack.service import Service, venv_python
from citystream.store.client import connect


class Store(Service):
    """The embedded ClickHouse engine (chdb), owned by one process that serves ClickHouse HTTP."""

    name = "store"
    port_env = "CITYSTREAM_STORE_PORT"

    def __init__(self, settings: Settings, loader: bool = True) -> None:
        super().__init__(settings)
        #: Whether the store process also runs the Kafka loader of the result topics.
        self.loader = loader

    @property
    def port(self) -> int:
        return self.settings.store_port

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def _launch(self) -> subprocess.Popen[bytes]:
        cmd = [
            venv_python(),
            "-m",
            "citystream.cli",
            "store",
            "serve",
            "--data",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--loader" if self.loader else "--no-loader",
        ]
        with open(self.log, "ab") as log:
            return subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                # The loader inside must find the same broker, topics and database as this stack.
                env=proc.child_env(self.settings.to_env()),
            )

    def healthy(self) -> bool:
        client = connect(self.settings)
        try:
            return client.command("SELECT 1") == 1
        finally:
            client.close()

    def detail(self) -> str:
        return f"chdb, data {self.data_dir}, {self.settings.clickhouse_url}"
