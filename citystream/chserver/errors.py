"""ClickHouse error codes and HTTP statuses, as the store reports them.

Contract: every failure the store answers with is a :class:`StoreError` whose
``code`` is a real ClickHouse error code and whose ``str()`` is the message
without the ``Code: N. DB::Exception:`` prefix. :func:`http_status` maps a code
to the HTTP status a ClickHouse server would use, so clients (clickhouse-connect,
clickhouse-go, Grafana) classify our errors exactly as they classify a server's.
"""

from __future__ import annotations

import re

UNSUPPORTED_METHOD = 1
CANNOT_PARSE_TEXT = 6
THERE_IS_NO_COLUMN = 8
DUPLICATE_COLUMN = 15
CANNOT_PARSE_ESCAPE_SEQUENCE = 25
CANNOT_PARSE_QUOTED_STRING = 26
CANNOT_PARSE_INPUT_ASSERTION_FAILED = 27
CANNOT_READ_ALL_DATA = 33
BAD_ARGUMENTS = 36
UNKNOWN_ELEMENT_IN_AST = 37
CANNOT_PARSE_DATE = 38
CHECKSUM_DOESNT_MATCH = 40
CANNOT_PARSE_DATETIME = 41
ILLEGAL_COLUMN = 44
UNKNOWN_FUNCTION = 46
UNKNOWN_IDENTIFIER = 47
NOT_IMPLEMENTED = 48
UNKNOWN_TYPE = 50
TYPE_MISMATCH = 53
UNKNOWN_STORAGE = 56
UNKNOWN_TABLE = 60
SYNTAX_ERROR = 62
UNKNOWN_AGGREGATE_FUNCTION = 63
CANNOT_PARSE_NUMBER = 72
UNKNOWN_FORMAT = 73
CANNOT_OPEN_FILE = 76
UNKNOWN_TYPE_OF_QUERY = 78
UNKNOWN_DATABASE = 81
UNKNOWN_COMPRESSION_METHOD = 89
UNKNOWN_SETTING = 115
INCORRECT_DATA = 117
UNKNOWN_TYPE_OF_AST_NODE = 123
UNKNOWN_DIRECTION_OF_SORTING = 152
TIMEOUT_EXCEEDED = 159
READONLY = 164
TOO_DEEP_AST = 167
TOO_BIG_AST = 168
UNKNOWN_USER = 192
WRONG_PASSWORD = 193
REQUIRED_PASSWORD = 194
TOO_MANY_SIMULTANEOUS_QUERIES = 202
SOCKET_TIMEOUT = 209
UNEXPECTED_AST_STRUCTURE = 223
QUERY_IS_TOO_LARGE = 229
CANNOT_DECOMPRESS = 271
VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE = 321
TOO_MANY_ROWS_OR_BYTES = 396
UNKNOWN_DATABASE_ENGINE = 336
INTO_OUTFILE_NOT_ALLOWED = 358
SESSION_NOT_FOUND = 372
SESSION_IS_LOCKED = 373
INVALID_SESSION_TIMEOUT = 374
CANNOT_PARSE_UUID = 376
HTTP_LENGTH_REQUIRED = 381
CANNOT_COMPILE_REGEXP = 427
CANNOT_SCHEDULE_TASK = 439
CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING = 441
ACCESS_DENIED = 497
UNKNOWN_ROLE = 511
SET_NON_GRANTED_ROLE = 512
AUTHENTICATION_FAILED = 516
CANNOT_PARSE_IPV4 = 675
CANNOT_PARSE_IPV6 = 676
UNSUPPORTED_MEDIA_TYPE = 779
UNKNOWN_EXCEPTION = 1002

_BAD_REQUEST = {
    BAD_ARGUMENTS,
    CANNOT_COMPILE_REGEXP,
    CANNOT_PARSE_TEXT,
    CANNOT_PARSE_ESCAPE_SEQUENCE,
    CANNOT_PARSE_QUOTED_STRING,
    CANNOT_PARSE_DATE,
    CANNOT_PARSE_DATETIME,
    CANNOT_PARSE_NUMBER,
    CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING,
    CANNOT_PARSE_IPV4,
    CANNOT_PARSE_IPV6,
    CANNOT_PARSE_INPUT_ASSERTION_FAILED,
    CANNOT_PARSE_UUID,
    DUPLICATE_COLUMN,
    ILLEGAL_COLUMN,
    UNKNOWN_ELEMENT_IN_AST,
    UNKNOWN_TYPE_OF_AST_NODE,
    THERE_IS_NO_COLUMN,
    TOO_DEEP_AST,
    TOO_BIG_AST,
    UNEXPECTED_AST_STRUCTURE,
    SYNTAX_ERROR,
    INCORRECT_DATA,
    TYPE_MISMATCH,
    VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE,
}
_NOT_FOUND = {
    UNKNOWN_TABLE,
    UNKNOWN_FUNCTION,
    UNKNOWN_IDENTIFIER,
    UNKNOWN_TYPE,
    UNKNOWN_STORAGE,
    UNKNOWN_DATABASE,
    UNKNOWN_SETTING,
    UNKNOWN_DIRECTION_OF_SORTING,
    UNKNOWN_AGGREGATE_FUNCTION,
    UNKNOWN_FORMAT,
    UNKNOWN_DATABASE_ENGINE,
    UNKNOWN_TYPE_OF_QUERY,
    UNKNOWN_ROLE,
}
_FORBIDDEN = {UNKNOWN_USER, WRONG_PASSWORD, AUTHENTICATION_FAILED, SET_NON_GRANTED_ROLE, ACCESS_DENIED}
#: Refusals that no well-behaved client meets in normal work: a request too large or corrupt, bad
#: credentials, a forbidden statement. The handler delays their answer (``refusal_delay_s``).
HOSTILE_CODES = frozenset(
    {QUERY_IS_TOO_LARGE, CANNOT_DECOMPRESS, CHECKSUM_DOESNT_MATCH, REQUIRED_PASSWORD, READONLY} | _FORBIDDEN
)
_SINGLE = {
    REQUIRED_PASSWORD: 401,
    QUERY_IS_TOO_LARGE: 413,
    NOT_IMPLEMENTED: 501,
    SOCKET_TIMEOUT: 503,
    CANNOT_OPEN_FILE: 503,
    CANNOT_SCHEDULE_TASK: 503,
    HTTP_LENGTH_REQUIRED: 411,
    TIMEOUT_EXCEEDED: 408,
    UNSUPPORTED_MEDIA_TYPE: 415,
}

#: Names for the codes the store raises itself (engine errors carry their own name).
NAMES = {
    value: name
    for name, value in globals().items()
    if name.isupper() and isinstance(value, int) and not name.startswith("_")
}

_CODE_RE = re.compile(r"Code:\s*(\d+)\.\s*(?:DB::Exception:\s*)?")


def http_status(code: int) -> int:
    """HTTP status a ClickHouse server answers with for exception ``code``."""
    if code in _SINGLE:
        return _SINGLE[code]
    if code in _FORBIDDEN:
        return 403
    if code in _BAD_REQUEST:
        return 400
    if code in _NOT_FOUND:
        return 404
    return 500


class StoreError(Exception):
    """A failure reported to the client as ``Code: N. DB::Exception: message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def name(self) -> str:
        return NAMES.get(self.code, "")

    @classmethod
    def from_engine(cls, exc: BaseException) -> StoreError:
        """Recover code and message from a chdb exception (its text embeds ``Code: N.``)."""
        text = str(exc)
        match = _CODE_RE.search(text)
        if not match:
            return cls(UNKNOWN_EXCEPTION, text.strip() or type(exc).__name__)
        return cls(int(match.group(1)), text[match.end() :].strip())

    def body(self, version: str) -> str:
        """The response body text a server would send (one exception, version trailer)."""
        message = str(self)
        name = self.name
        if name and not message.endswith(f"({name})"):
            message = f"{message} ({name})"
        return f"Code: {self.code}. DB::Exception: {message} (version {version})\n"


class StartError(Exception):
    """The server cannot start for a reason its operator must fix (port taken, data directory in use).

    ``cause`` ("port" or "data_dir") lets an embedding application add its own
    hint (which setting or command to use) without parsing the message.
    """

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause
