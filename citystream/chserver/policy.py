"""Which statements a user may run, decided on ClickHouse's own parse of the text.

Why the engine's parser and not ours: a hand-written lexer disagrees with the
engine on corner cases (dollar-quoted strings, nested comments, text that ends
inside a literal), and each disagreement is a statement that is checked as one
thing and runs as another. Here the engine does all the reading:

1. ``SELECT formatQuerySingleLine({q:String})`` - the text travels as a query
   *parameter* (never spliced), the engine parses exactly one statement (it
   refuses multi-statements and unclosed comments) and prints it canonically.
2. ``EXPLAIN AST <canonical>`` - only ever on that single canonical statement
   (on raw text chdb would run a second statement after ``;``); its node tree
   is what :func:`check` judges.
3. The canonical text is what then runs, so what was checked is what runs.

Contract: :func:`check` is an allow-list. Anything it cannot positively
classify is refused with a ClickHouse error (READONLY for the read-only user,
ACCESS_DENIED otherwise, INTO_OUTFILE_NOT_ALLOWED for ``INTO OUTFILE``).

* Read-only users: one SELECT / WITH / SHOW / DESCRIBE / EXISTS / SHOW CREATE
  over their databases (``Who.databases``: every table and database the parse
  names, unqualified names in the current database) and :data:`SYSTEM_TABLES`
  (schema metadata, readable unfiltered: the store holds the project's
  database only); no table function beyond :data:`VIEWER_TABLE_FUNCTIONS`; no
  file/url/dictionary functions; no SET, no SETTINGS clause; no INTO OUTFILE.
* Read-write users: the statement kinds in :data:`WRITER_KINDS` (what a loader
  and migrations need); table engines from :data:`ENGINES` only; no
  file/url/remote/executable table functions or engines, no dictionaries,
  no ``INSERT INTO FUNCTION``, no INTO OUTFILE.

Settings and the per-user caps: a ``Set`` node is accepted only where it holds
table settings (``CREATE ... SETTINGS``, ``ALTER ... MODIFY SETTING``) or
EXPLAIN's own options. A query-level ``SETTINGS`` clause is refused for every
user: the parse does not name the settings, so a cap could not be checked
(settings travel as URL parameters, which the server clamps). A read-write
user's ``SET`` statement is run by the engine on a scratch connection that
already holds the user's caps (:func:`set_changes`); it is refused if it
raises a cap (or asks for 0, unlimited) or touches a setting in
:data:`GUARDED_SETTINGS`.

File/url access is denied for every user by function *name*: every table
function the engine lists (``system.table_functions``) except the harmless
generators, plus :data:`SCALAR_DENIED` and the ``dictGet``/``joinGet`` families.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from citystream.chserver.errors import (
    ACCESS_DENIED,
    INTO_OUTFILE_NOT_ALLOWED,
    READONLY,
    SYNTAX_ERROR,
    StoreError,
)
from citystream.chserver.limits import DENIED_SETTINGS
from citystream.chserver.params import engine_bytes, escape_param

#: Settings no SET statement may change (how SQL is read, files, the read-only level).
GUARDED_SETTINGS = DENIED_SETTINGS | frozenset({"readonly", "allow_ddl", "default_format"})

#: Table functions a read-only user may read from: generators, no I/O.
VIEWER_TABLE_FUNCTIONS = frozenset(
    {"numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "generateseries"}
)
#: Table functions a read-write user may use in addition (still no I/O).
WRITER_TABLE_FUNCTIONS = VIEWER_TABLE_FUNCTIONS | frozenset(
    {"values", "null", "generaterandom", "input", "format"}
)
#: Scalar functions that reach files, URLs, dictionaries (which have file/url sources) or request data.
SCALAR_DENIED = frozenset({"file", "url", "getclienthttpheader", "currentrequesturl", "filesystem"})
#: Function names (lowercase) that are never table functions, even when the engine lists one so named.
_NOT_IO = frozenset({"format"})
_DENIED_PREFIXES = ("dictget", "dicthas", "dictisin", "joinget")

#: ``system`` tables a read-only user may read: schema and engine metadata (no query texts,
#: no processes, no logs, no parts with their paths).
SYSTEM_TABLES = frozenset(
    {
        "one",
        "numbers",
        "numbers_mt",
        "zeros",
        "tables",
        "columns",
        "databases",
        "settings",
        "functions",
        "table_functions",
        "formats",
        "data_type_families",
        "time_zones",
        "table_engines",
        "aggregate_function_combinators",
        "collations",
        "build_options",
    }
)

VIEWER_KINDS = frozenset(
    {
        "SelectWithUnionQuery",
        "ShowTables",
        "DescribeQuery",
        "ExistsTableQuery",
        "ExistsDatabaseQuery",
        "ShowCreateTableQuery",
        # EXPLAIN of a statement these rules accept: the dashboards' tests read query plans.
        "Explain",
    }
)
WRITER_KINDS = VIEWER_KINDS | frozenset(
    {
        "InsertQuery",
        "CreateQuery",
        "AlterQuery",
        "DropQuery",
        "RenameQuery",
        "Set",
        "UseQuery",
        "OptimizeQuery",
        "KillQueryQuery",
        "ShowColumns",
        "ShowProcesslist",
        "DeleteQuery",
        "UpdateQuery",
    }
)
#: Node kinds a read-only user's statement may contain (first word of an EXPLAIN AST line).
VIEWER_NODES = VIEWER_KINDS | frozenset(
    {
        "ExpressionList",
        "SelectQuery",
        "Literal",
        "Identifier",
        "Function",
        "Asterisk",
        "QualifiedAsterisk",
        "ColumnsRegexpMatcher",
        "ColumnsListMatcher",
        "QualifiedColumnsRegexpMatcher",
        "QualifiedColumnsListMatcher",
        "ColumnsTransformerList",
        "ColumnsExceptTransformer",
        "ColumnsReplaceTransformer",
        "ColumnsApplyTransformer",
        "TablesInSelectQuery",
        "TablesInSelectQueryElement",
        "TableExpression",
        "TableIdentifier",
        "TableJoin",
        "ArrayJoin",
        "Subquery",
        "WithElement",
        "OrderByElement",
        "SampleRatio",
        "WindowDefinition",
        "WindowListElement",
        "InterpolateElement",
        "QueryParameter",
        "DataType",
        "NameTypePair",
    }
)
#: Table engines a read-write user may create (local storage only).
ENGINES = frozenset(
    {
        "mergetree",
        "replacingmergetree",
        "summingmergetree",
        "aggregatingmergetree",
        "collapsingmergetree",
        "versionedcollapsingmergetree",
        "coalescingmergetree",
        "graphitemergetree",
        "memory",
        "log",
        "tinylog",
        "stripelog",
        "null",
        "set",
        "join",
        "buffer",
    }
)


@dataclass(frozen=True)
class Node:
    """One EXPLAIN AST line: ``kind`` (first word), ``name`` (second word, if any), children."""

    kind: str
    name: str = ""
    children: list[Node] = field(default_factory=list)

    def walk(self) -> Iterator[tuple[Node, Node | None]]:
        """Every node with its parent, depth first."""
        stack: list[tuple[Node, Node | None]] = [(self, None)]
        while stack:
            node, parent = stack.pop()
            yield node, parent
            stack.extend((child, node) for child in reversed(node.children))


@dataclass(frozen=True)
class Who:
    """The parts of a user the policy needs."""

    name: str
    readonly: bool
    #: Databases a read-only user may read (``None``: any), and the current database.
    databases: frozenset[str] | None = None
    current_database: str = "default"
    #: Caps on settings (:data:`~citystream.chserver.config.LIMIT_SETTINGS`) a SET must respect.
    limits: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Checked:
    """A statement the policy accepted: its canonical text and its top node kind."""

    text: str
    kind: str
    tree: Node

    @property
    def engine_text(self) -> str | bytes:
        """The text to run: bytes when it holds bytes that are not UTF-8 (see :func:`engine_bytes`)."""
        return engine_bytes(self.text)


def canonicalize(conn: Any, text: str) -> str:
    """The engine's single-line form of ``text``; fails unless it is exactly one statement."""
    result = conn.query(
        "SELECT formatQuerySingleLine({q:String})", "TabSeparatedRaw", params={"q": escape_param(text)}
    )
    canonical = result.bytes().decode("utf-8", "surrogateescape").removesuffix("\n")
    if not canonical.strip() or any(c in canonical for c in "\r\n\0"):
        # A newline survives formatting only inside a quoted identifier: no legitimate
        # statement needs one, and it could forge lines of the EXPLAIN AST tree.
        raise StoreError(SYNTAX_ERROR, "Identifiers with line breaks are not allowed by this server")
    return canonical


def parse_tree(text: str) -> Node:
    """Rebuild the node tree from EXPLAIN AST's indented lines (one space per level)."""
    root: Node | None = None
    stack: list[Node] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip(" "))
        words = line.split()
        node = Node(words[0], words[1] if len(words) > 1 and not words[1].startswith("(") else "")
        if depth == 0:
            if root is not None:
                raise StoreError(SYNTAX_ERROR, "The statement parsed into more than one tree")
            root = node
            stack = [node]
            continue
        if root is None or depth > len(stack):
            raise StoreError(SYNTAX_ERROR, "Malformed statement tree")
        del stack[depth:]
        stack[-1].children.append(node)
        stack.append(node)
    if root is None:
        raise StoreError(SYNTAX_ERROR, "Empty query")
    return root


def table_functions(conn: Any) -> frozenset[str]:
    """Names (lowercase) of the engine's table functions: all of them can be I/O."""
    names = conn.query("SELECT name FROM system.table_functions", "TabSeparatedRaw").bytes().decode()
    return frozenset(name.lower() for name in names.split())


def inspect(conn: Any, text: str, binds: Mapping[str, str]) -> tuple[str, Node]:
    """Canonical text and AST of one statement, both produced by the engine."""
    canonical = canonicalize(conn, text)
    explained = conn.query(engine_bytes("EXPLAIN AST " + canonical), "TabSeparatedRaw", params=dict(binds))
    # Literals may hold any bytes; the tree's kinds and names are what is judged.
    tree = explained.bytes().decode("utf-8", "replace")
    return canonical, parse_tree(tree)


class Policy:
    """The allow-list; ``io_functions``: the engine's table-function names (:func:`table_functions`)."""

    def __init__(self, io_functions: frozenset[str], connect: Callable[[], Any] | None = None) -> None:
        self.denied = (io_functions - _NOT_IO) | SCALAR_DENIED
        #: Opens a scratch engine connection to judge SET statements; without it SET is refused.
        self.connect = connect

    def check(self, who: Who, canonical: str, tree: Node) -> Checked:
        refuse = _refuser(who)
        allowed = VIEWER_KINDS if who.readonly else WRITER_KINDS
        if tree.kind not in allowed:
            if who.readonly and tree.kind == "KillQueryQuery":
                raise StoreError(
                    ACCESS_DENIED,
                    f"{who.name}: Not enough privileges. To execute this query, "
                    "it's necessary to have the grant KILL QUERY ON *.*",
                )
            raise refuse(f"{_describe(tree.kind)} statements are not allowed for user {who.name}")
        if tree.kind == "SelectWithUnionQuery":
            self._check_tail(who, tree)
        for node, parent in tree.walk():
            self._check_node(who, node, parent)
        if tree.kind == "Set":
            self._check_set(who, canonical)
        return Checked(canonical, tree.kind, tree)

    def _check_set(self, who: Who, canonical: str) -> None:
        """A SET statement, judged by what the engine does with it on a scratch connection."""
        if self.connect is None:
            raise _refuser(who)("SET statements are not allowed by this server")
        conn = self.connect()
        try:
            changed = set_changes(conn, canonical, who.limits)
        except StoreError:
            raise
        except Exception as exc:  # the engine refused the SET itself
            raise StoreError.from_engine(exc) from exc
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        for name, value in changed.items():
            if name in GUARDED_SETTINGS:
                raise StoreError(
                    ACCESS_DENIED, f"{who.name}: Setting {name} cannot be changed on this server"
                )
            cap = who.limits.get(name)
            if cap is not None and not _within(value, cap):
                raise StoreError(
                    ACCESS_DENIED,
                    f"{who.name}: Setting {name} should not be greater than {cap} (the user's limit)",
                )

    def _check_tail(self, who: Who, tree: Node) -> None:
        """After the query itself: FORMAT (an Identifier), SETTINGS (Set), INTO OUTFILE (Literals)."""
        for extra in tree.children[1:]:
            if extra.kind == "Literal":
                raise StoreError(INTO_OUTFILE_NOT_ALLOWED, "INTO OUTFILE is not allowed")
            if extra.kind not in ("Identifier", "Set"):
                raise _refuser(who)(f"Unexpected {extra.kind} clause")

    def _check_node(self, who: Who, node: Node, parent: Node | None) -> None:
        refuse = _refuser(who)
        if who.readonly and node.kind not in VIEWER_NODES and node.kind != "Set":
            raise refuse(f"{_describe(node.kind)} is not allowed for user {who.name}")
        if node.kind == "Set" and parent is not None and not _table_or_explain_options(node, parent):
            if who.readonly:
                raise StoreError(READONLY, f"{who.name}: Cannot modify settings in readonly mode")
            raise StoreError(
                ACCESS_DENIED,
                f"{who.name}: SETTINGS clauses are not allowed by this server: "
                "pass settings as URL parameters or with SET",
            )
        if node.kind == "Set" and parent is None and who.readonly:
            raise StoreError(READONLY, f"{who.name}: Cannot modify settings in readonly mode")
        if node.kind in ("Dictionary", "FunctionWithKeyValueArguments"):
            raise refuse("Dictionaries are not allowed by this server")
        if node.kind == "Function":
            self._check_function(who, node, parent)
        elif node.kind == "TableIdentifier" and who.readonly:
            self._check_table(who, node.name)
        elif who.readonly and node.kind in _NAMED_KINDS and node.children:
            self._check_named(who, node)

    def _check_named(self, who: Who, node: Node) -> None:
        """SHOW TABLES FROM db / EXISTS [TABLE] db.t / SHOW CREATE db.t: the names are Identifier children."""
        names = [child.name for child in node.children if child.kind == "Identifier"]
        if not names:
            return
        if node.kind in ("ShowTables", "ExistsDatabaseQuery"):
            self._check_database(who, names[0])
        else:
            self._check_table(who, ".".join(names[:2]))

    def _check_function(self, who: Who, node: Node, parent: Node | None) -> None:
        refuse = _refuser(who)
        name = node.name.lower()
        if parent is not None and parent.kind == "TableExpression":
            allowed = VIEWER_TABLE_FUNCTIONS if who.readonly else WRITER_TABLE_FUNCTIONS
            if name not in allowed:
                raise refuse(f"Table function {node.name} is not allowed for user {who.name}")
            return
        if parent is not None and parent.kind == "Storage" and node is parent.children[0]:
            if name not in ENGINES:
                raise refuse(f"Table engine {node.name} is not allowed by this server")
            return
        if parent is not None and parent.kind == "InsertQuery":
            raise refuse("INSERT INTO FUNCTION is not allowed by this server")
        if name in self.denied or name.startswith(_DENIED_PREFIXES):
            raise refuse(f"Function {node.name} is not allowed by this server")

    def _check_table(self, who: Who, qualified: str) -> None:
        parts = qualified.split(".")
        if len(parts) > 2 or "`" in qualified or not all(parts):
            raise StoreError(READONLY, f"{who.name}: table name {qualified!r} is not allowed")
        database, table = parts if len(parts) == 2 else (who.current_database, parts[0])
        if database.lower() == "system":
            if table.lower() not in SYSTEM_TABLES:
                raise StoreError(ACCESS_DENIED, f"{who.name}: Not enough privileges to read system.{table}")
            return
        self._check_database(who, database)

    def _check_database(self, who: Who, database: str) -> None:
        if who.databases is not None and database not in who.databases and database.lower() != "system":
            raise StoreError(ACCESS_DENIED, f"{who.name}: Not enough privileges to read database {database}")


def _table_or_explain_options(node: Node, parent: Node) -> bool:
    """Table settings (CREATE's storage, ALTER MODIFY SETTING) or EXPLAIN's options (its first child).

    A SETTINGS clause after EXPLAIN's query (``EXPLAIN SELECT 1 FORMAT TSV
    SETTINGS x = 1``) is the EXPLAIN's query settings: not its first child.
    """
    if parent.kind in ("Storage", "AlterCommand"):
        return True
    return parent.kind == "Explain" and bool(parent.children) and node is parent.children[0]


def _within(value: str, cap: int) -> bool:
    try:
        number = float(value)
    except ValueError:
        return False
    return 0 < number <= cap


def set_changes(conn: Any, canonical: str, limits: Mapping[str, int]) -> dict[str, str]:
    """The settings a SET statement changes, as the engine applies it (name -> new value).

    Why run it: the parse does not name the settings. On a scratch connection
    holding the user's caps, every setting whose value differs after the
    statement is one it changed (``SET max_memory_usage = 0`` differs from the
    cap, so "back to unlimited" is seen too). Setting a value to what it
    already is changes nothing and is not reported.
    """
    if limits:
        caps = ", ".join(f"{name} = {int(cap)}" for name, cap in limits.items())
        conn.query(f"SET {caps}", "TabSeparated")
    before = _settings_snapshot(conn)
    conn.query(engine_bytes(canonical), "TabSeparated")
    try:
        after = _settings_snapshot(conn)
    except Exception:  # e.g. a dialect in which the snapshot itself no longer parses
        raise StoreError(ACCESS_DENIED, "This SET changes how the server reads SQL: not allowed") from None
    return {name: value for name, value in after.items() if before.get(name) != value}


def _settings_snapshot(conn: Any) -> dict[str, str]:
    data = conn.query("SELECT name, value FROM system.settings", "JSONCompactEachRow").bytes()
    return {row[0]: row[1] for row in map(json.loads, data.decode("utf-8").splitlines())}


_NAMED_KINDS = frozenset({"ShowTables", "ExistsTableQuery", "ShowCreateTableQuery", "ExistsDatabaseQuery"})


def _refuser(who: Who):  # type: ignore[no-untyped-def]
    code = READONLY if who.readonly else ACCESS_DENIED

    def refuse(message: str) -> StoreError:
        return StoreError(code, f"{who.name}: {message}")

    return refuse


def _describe(kind: str) -> str:
    return kind.removesuffix("Query") or kind
