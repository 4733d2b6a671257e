"""Whose fault is a refused insert: the table's (stall, alert, divert nothing) or a record's (dead letter)?

Why: a batch the store refuses as bad data may hold a few bad records - or a
table a migration broke, which refuses them all. Diverting a whole batch
would turn a bad migration into silent loss of good data; so only records
*proven* bad on their own go to dead letters, and everything else stalls the
loader until the table is fixed (nothing committed meanwhile). The rules, in
order:

1. the table must still hold what the contract says (:mod:`.tablecheck`):
   checked before a table's first insert, every ``check_every_s`` after, and
   whenever an insert is refused as data - a drift is the table's fault;
2. a refused batch is bisected (each half inserted on its own, with its own
   deduplication token) until each refused record stands alone;
3. when no record went in and every record was refused alone with the same
   error (or the first ``PROOF`` were, in order), the table is at fault -
   unless its definition is exactly the one under which it last accepted
   this loader's rows, in which case these records are bad on their own;
4. a bisection that needs more than ``MAX_INSERTS`` inserts stalls instead
   of hammering the store.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from citystream.connectors.loader.common import BadData, one_line
from citystream.connectors.loader.routes import Route
from citystream.connectors.loader.storelink import StoreLink
from citystream.connectors.loader.tablecheck import drift, table_columns

log = logging.getLogger("citystream.connectors.loader")

#: Records refused alone in a row, none taken, after which the table (not the data) is at fault.
PROOF = 32
#: Inserts one bisection may make; beyond that the loader stalls rather than hammer the store.
MAX_INSERTS = 4096


class TableFault(Exception):
    """The table, not the data, refuses the batch: stall (nothing committed, nothing diverted)."""

    def __init__(self, code: int | None, message: str, reason: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.code = code
        self.message = message
        self.reason = reason


@dataclass
class Isolation:
    """What a bisection found: rows inserted, records refused alone (index, error), inserts made."""

    size: int
    inserted: int = 0
    inserts: int = 0
    rejected: list[tuple[int, BadData]] = field(default_factory=list)
    #: Whether the table's definition is the one under which it last accepted rows (None: not asked).
    unchanged: bool | None = None

    def refused(self, index: int, error: BadData) -> None:
        self.rejected.append((index, error))

    def spend(self) -> None:
        self.inserts += 1
        if self.inserts > MAX_INSERTS:
            first = self.rejected[0][1] if self.rejected else BadData("refused", None)
            raise TableFault(
                first.code, str(first), f"isolating the refused records needs over {MAX_INSERTS} inserts"
            )

    def one_error(self) -> bool:
        """Every record refused so far was refused with the same error code."""
        return len({e.code for _, e in self.rejected}) == 1


def isolate(
    found: Isolation,
    lo: int,
    hi: int,
    error: BadData,
    insert: Callable[[int, int], int],
    refused: Callable[[Isolation], None],
) -> None:
    """Halve ``[lo, hi)`` (refused with ``error``) until each refused record stands alone, in order.

    ``insert(a, b)`` inserts records ``[a, b)`` on their own (rows written; :class:`BadData` when
    refused); ``refused(found)`` is told after each record found refused alone (it may stall).
    Left halves first, so with nothing inserted the records found are the batch's first ones.
    """
    if hi - lo == 1:
        found.refused(lo, error)
        refused(found)
        return
    mid = (lo + hi) // 2
    for a, b in ((lo, mid), (mid, hi)):
        found.spend()
        try:
            found.inserted += insert(a, b)
        except BadData as sub:
            isolate(found, a, b, sub, insert, refused)


class Judge:
    """Decides, per table, whether a refusal is the table's fault (see the module docstring)."""

    def __init__(self, link: StoreLink, database: str, check_every_s: float = 30.0) -> None:
        self.link = link
        self.database = database
        self.check_every_s = check_every_s
        self._checked: dict[str, float] = {}
        #: table -> digest of its definition when it last accepted this loader's rows.
        self._definitions: dict[str, str] = {}

    def maybe_check(self, route: Route, stop: Callable[[], bool]) -> None:
        """The contract check, before a table's first insert and every ``check_every_s``: drift stalls."""
        last = self._checked.get(route.table)
        if last is not None and time.monotonic() - last < self.check_every_s:
            return
        self.check_drift(route, None, stop)

    def check_drift(self, route: Route, refused: BadData | None, stop: Callable[[], bool]) -> None:
        """Raise :class:`TableFault` when the table no longer holds what the contract says."""
        try:
            columns = table_columns(self.link.get(stop), self.database, route.table)
        except Exception as exc:  # cannot look: the insert itself will tell
            log.warning("could not check the columns of %s: %s", route.table, one_line(exc))
            return
        code, message = (refused.code, str(refused)) if refused else (None, "found before inserting")
        if columns is None:
            raise TableFault(code, message, f"table {self.database}.{route.table} does not exist")
        problems = drift(route.record, route.columns, columns)
        if problems:  # not marked as checked: every retry checks again before it inserts
            raise TableFault(code, message, "the table left its contract: " + "; ".join(problems))
        self._checked[route.table] = time.monotonic()

    def early(self, route: Route, found: Isolation, stop: Callable[[], bool]) -> None:
        """During a bisection: the first ``PROOF`` records all refused alone, none taken -> the table."""
        if found.inserted or len(found.rejected) < PROOF or not found.one_error():
            return
        if self._unchanged(route.table, found, stop):
            return
        first = found.rejected[0][1]
        raise TableFault(
            first.code,
            str(first),
            f"the first {PROOF} records each fail alone with the same error, none went in",
        )

    def decide(self, route: Route, found: Isolation, stop: Callable[[], bool]) -> None:
        """After a bisection: every record refused alone with one error is the table's fault (rule 3)."""
        if not found.rejected or found.inserted or len(found.rejected) < found.size or not found.one_error():
            return
        first = found.rejected[0][1]
        if self._unchanged(route.table, found, stop):
            log.warning(
                "every record of a batch of %d was refused by %s, whose definition is the one under which "
                "it accepted this loader's rows before: the records are bad on their own",
                found.size, route.table,
            )  # fmt: skip
            return
        raise TableFault(
            first.code, str(first), f"all {found.size} record(s) fail alone with the same error, none went in"
        )

    def accepted(self, table: str, written: int, stop: Callable[[], bool]) -> None:
        """``table`` took rows: remember its definition (once) as one that accepts this loader's rows."""
        if written <= 0 or table in self._definitions:
            return
        digest = self._definition(table, stop)
        if digest is not None:
            self._definitions[table] = digest

    def forget(self, table: str) -> None:
        """The table was changed (a stall ended): its definition is learnt again, and checked at once."""
        self._definitions.pop(table, None)
        self._checked.pop(table, None)

    def _unchanged(self, table: str, found: Isolation, stop: Callable[[], bool]) -> bool:
        if found.unchanged is None:
            known = self._definitions.get(table)
            found.unchanged = known is not None and self._definition(table, stop) == known
        return found.unchanged

    def _definition(self, table: str, stop: Callable[[], bool]) -> str | None:
        """A digest of the table's CREATE statement (columns, constraints, settings); None if unknown."""
        try:
            rows = (
                self.link.get(stop)
                .query(
                    "SELECT create_table_query FROM system.tables "
                    "WHERE database = {db:String} AND name = {t:String}",
                    parameters={"db": self.database, "t": table},
                )
                .result_rows
            )
        except Exception as exc:
            log.info("could not read the definition of %s: %s", table, one_line(exc))
            return None
        if not rows:
            return None
        return hashlib.blake2b(str(rows[0][0]).encode(), digest_size=16).hexdigest()
