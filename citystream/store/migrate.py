"""Versioned schema migrations for the store, applied over ClickHouse HTTP.

Contract:

* Migrations are the files ``infra/clickhouse/migrations/NNNN_name.sql``,
  versions 1, 2, 3 ... without gaps. Statements are separated by ``;`` and sent
  one per request (HTTP runs one statement at a time), in file order, with the
  configured database (``settings.clickhouse_database``, created first) as the
  default database, so files use unqualified table names.
* Every statement must be idempotent (``IF NOT EXISTS`` ...): ClickHouse DDL
  is not transactional, so a migration that failed half-way is re-run from
  its first statement. A version is recorded in ``schema_migrations`` (with a
  sha256 of its statements, comments and layout excluded) only after all its
  statements succeeded.
* :func:`migrate` refuses to run when the database records a version newer
  than the newest file (the store was migrated by a newer citystream), or when
  an applied file was edited afterwards (add a new migration instead).
* It works the same against the embedded store and a real ClickHouse server:
  it only uses the clickhouse-connect client from :mod:`citystream.store.client`.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citystream.chserver.sqltext import canonical, split_statements
from citystream.errors import UserError
from citystream.settings import ROOT, Settings
from citystream.store.client import connect

MIGRATIONS_DIR = ROOT / "infra" / "clickhouse" / "migrations"
TABLE = "schema_migrations"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE}
(
    version     UInt32,
    name        String,
    checksum    String,
    statements  UInt32,
    duration_ms UInt64,
    applied_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the statements without comments and layout (editing a comment is not a change)."""
        try:
            return hashlib.sha256(canonical(self.sql).encode()).hexdigest()
        except ValueError as exc:
            raise UserError(f"migration {self.path.name}: {exc}") from None

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    def statements(self) -> list[str]:
        try:
            return split_statements(self.sql)
        except ValueError as exc:
            raise UserError(f"migration {self.path.name}: {exc}") from None


@dataclass(frozen=True)
class Applied:
    version: int
    name: str
    checksum: str
    applied_at: Any


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order; a misnamed file or a gap is an error, not a skip."""
    found: dict[int, Migration] = {}
    for path in sorted(Path(directory).glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise UserError(f"migration file {path} is not named NNNN_lowercase_name.sql")
        version = int(match.group(1))
        if version in found:
            raise UserError(
                f"two migrations have version {version}: {found[version].path.name} and {path.name}"
            )
        found[version] = Migration(version, match.group(2), path, path.read_text(encoding="utf-8"))
    versions = sorted(found)
    if versions != list(range(1, len(versions) + 1)):
        raise UserError(f"migration versions in {directory} must be 1..N without gaps, found {versions}")
    return [found[v] for v in versions]


def _quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def applied(client: Any, database: str) -> dict[int, Applied]:
    """Versions recorded in ``database`` (empty when it or its table does not exist yet)."""
    exists = client.command(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        parameters={"db": database, "t": TABLE},
    )
    if not int(exists):
        return {}
    rows = client.query(
        f"SELECT version, argMax(name, applied_at), argMax(checksum, applied_at), max(applied_at) "
        f"FROM {_quote_ident(database)}.{TABLE} GROUP BY version ORDER BY version"
    ).result_rows
    return {int(r[0]): Applied(int(r[0]), r[1], r[2], r[3]) for r in rows}


def check(migrations: Sequence[Migration], done: dict[int, Applied]) -> None:
    """Refuse a store that is ahead of this code, or whose applied migrations were edited."""
    known = max((m.version for m in migrations), default=0)
    newest = max(done, default=0)
    if newest > known:
        raise UserError(
            f"the store's schema is at version {newest} but this citystream only knows migrations "
            f"up to {known}: upgrade citystream (or point it at another database) instead of migrating"
        )
    for m in migrations:
        record = done.get(m.version)
        if record is not None and record.checksum != m.checksum:
            raise UserError(
                f"migration {m.path.name} was changed after it was applied to the store "
                f"(recorded sha256 {record.checksum[:12]}, file {m.checksum[:12]}): "
                "restore the file and add a new migration for the change"
            )


def migrate_client(
    client: Any,
    database: str,
    *,
    target: int | None = None,
    migrations: Sequence[Migration] | None = None,
    echo: Callable[[str], None] = print,
) -> list[int]:
    """Apply pending migrations up to ``target`` (default: all) with ``client``; the versions applied."""
    migrations = list(discover() if migrations is None else migrations)
    if target is not None and not 0 <= target <= len(migrations):
        raise UserError(f"--to {target}: known migrations are 1..{len(migrations)}")
    client.command(f"CREATE DATABASE IF NOT EXISTS {_quote_ident(database)}", use_database=False)
    previous_db = client.database
    client.database = database
    try:
        client.command(_CREATE_TABLE)
        done = applied(client, database)
        check(migrations, done)
        ran: list[int] = []
        for m in migrations:
            if m.version in done or (target is not None and m.version > target):
                continue
            statements = m.statements()
            started = time.perf_counter()
            for i, statement in enumerate(statements, 1):
                try:
                    client.command(statement)
                except Exception as exc:
                    raise UserError(
                        f"migration {m.path.name}, statement {i} of {len(statements)} failed: "
                        f"{_first_line(exc)} (fix it and run `citystream store migrate` again; "
                        "the statements before it are idempotent)"
                    ) from exc
            elapsed_ms = int((time.perf_counter() - started) * 1000)
            client.insert(
                TABLE,
                [[m.version, m.name, m.checksum, len(statements), elapsed_ms]],
                column_names=["version", "name", "checksum", "statements", "duration_ms"],
            )
            echo(f"applied {m.label} ({len(statements)} statements, {elapsed_ms} ms)")
            ran.append(m.version)
        return ran
    finally:
        client.database = previous_db


def migrate(
    settings: Settings,
    *,
    target: int | None = None,
    echo: Callable[[str], None] = lambda _line: None,
) -> list[int]:
    """Bring ``settings.clickhouse_database`` up to date (or up to ``target``); the versions applied.

    Quiet by default because the stack and the tests call it; the CLI passes ``print``.
    """
    client = connect(settings, database=None)
    try:
        return migrate_client(client, settings.clickhouse_database, target=target, echo=echo)
    finally:
        client.close()


def schema_version(client: Any, database: str) -> int:
    """The highest version applied to ``database`` (0 when none)."""
    return max(applied(client, database), default=0)


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    match = re.search(r"Code: \d+\. DB::Exception: (.*)", text)
    if match:
        text = match.group(0)
    text = re.sub(r"\s*\(version [^)]*\)", "", text)
    text = re.sub(r"\s*\(for url [^)]*\)", "", text)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
