"""Just enough SQL lexing to route an HTTP request the way ClickHouse does.

Contract: :func:`analyze` looks at the start of a request's query text (which
may be followed by binary INSERT data) and reports

* the statement kind (first keyword: SELECT, INSERT, CREATE ...);
* for ``INSERT ... FORMAT f`` / ``INSERT ... VALUES``: where the statement head
  ends and where the inline data begins, using ClickHouse's rule (after the
  format name skip blanks up to and including one newline);
* for other statements: a trailing top-level ``FORMAT f`` clause, whether a
  second statement follows a ``;`` (the server rejects multi-statements), and
  whether the query writes ``INTO OUTFILE`` (a server never allows that over
  HTTP);
* ``complete=False`` when an INSERT's head has not been seen in full yet, so the
  caller can read more of the body.

It never parses expressions; strings, quoted identifiers, comments and
parentheses are skipped so that keywords inside them do not count.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Statement kinds that produce a result set (X-ClickHouse-Format is reported for them).
RESULT_KINDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS", "CHECK", "KILL"})

_WORD_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_WORD = _WORD_START | frozenset("0123456789$")
_BLANK = frozenset(" \t\r\n\f\v")


@dataclass(frozen=True)
class Statement:
    kind: str = ""
    #: FORMAT named by the statement itself (output format, or input format of INSERT data).
    format: str | None = None
    #: INSERT with inline data: the statement ends at ``head_end``, data starts at ``data_start``.
    head_end: int | None = None
    data_start: int | None = None
    multi: bool = False
    into_outfile: bool = False
    complete: bool = True

    @property
    def has_insert_data(self) -> bool:
        return self.data_start is not None


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "quoted", "string", "num", "op", "(", ")", ";"
    text: str
    start: int
    end: int
    depth: int


def _tokens(text: str):  # type: ignore[no-untyped-def]
    """Yield tokens; a final token with kind 'open' means text ended inside a string or comment."""
    i = 0
    n = len(text)
    depth = 0
    while i < n:
        ch = text[i]
        if ch in _BLANK:
            i += 1
            continue
        if (ch == "-" and text.startswith("--", i)) or (ch == "#" and (i + 1 == n or text[i + 1] in " !")):
            end = text.find("\n", i)
            if end < 0:
                return
            i = end + 1
            continue
        if ch == "/" and text.startswith("/*", i):
            level = 0
            j = i
            while j < n:
                if text.startswith("/*", j):
                    level += 1
                    j += 2
                elif text.startswith("*/", j):
                    level -= 1
                    j += 2
                    if level == 0:
                        break
                else:
                    j += 1
            if level:
                yield _Token("open", "", i, n, depth)
                return
            i = j
            continue
        if ch in "'`\"":
            j = i + 1
            while j < n:
                c = text[j]
                if c == "\\":
                    j += 2
                    continue
                if c == ch:
                    if j + 1 < n and text[j + 1] == ch:  # doubled quote escapes itself
                        j += 2
                        continue
                    break
                j += 1
            if j >= n:
                yield _Token("open", "", i, n, depth)
                return
            yield _Token("string" if ch == "'" else "quoted", text[i : j + 1], i, j + 1, depth)
            i = j + 1
            continue
        if ch in _WORD_START:
            j = i + 1
            while j < n and text[j] in _WORD:
                j += 1
            yield _Token("word", text[i:j], i, j, depth)
            i = j
            continue
        if ch == "(" or ch == "[":
            yield _Token("(", ch, i, i + 1, depth)
            depth += 1
            i += 1
            continue
        if ch == ")" or ch == "]":
            depth = max(0, depth - 1)
            yield _Token(")", ch, i, i + 1, depth)
            i += 1
            continue
        if ch == ";":
            yield _Token(";", ch, i, i + 1, depth)
            i += 1
            continue
        if ch.isdigit():
            j = i + 1
            while j < n and (text[j] in _WORD or text[j] == "."):
                j += 1
            yield _Token("num", text[i:j], i, j, depth)
            i = j
            continue
        yield _Token("op", ch, i, i + 1, depth)
        i += 1


def _data_start(text: str, pos: int) -> int:
    """ClickHouse's rule: after the format name, skip blanks up to and including the first newline."""
    while pos < len(text) and text[pos] in " \t\r\f\v":
        pos += 1
    if pos < len(text) and text[pos] == "\n":
        pos += 1
    return pos


def analyze(text: str) -> Statement:
    """Classify ``text`` (decoded 1:1, e.g. latin-1, so offsets equal byte offsets)."""
    tokens = iter(_tokens(text))
    kind = ""
    for tok in tokens:
        if tok.kind == "open":
            return Statement(complete=False)
        if tok.kind == "(":
            continue
        kind = tok.text.upper() if tok.kind == "word" else tok.text
        break
    if kind == "INSERT":
        return _analyze_insert(text, tokens)
    top: list[_Token] = []
    multi = False
    into_outfile = False
    prev_word = ""
    for tok in tokens:
        if tok.kind == "open":
            return Statement(kind=kind, complete=False)
        if tok.kind == ";" and tok.depth == 0:
            rest = [t for t in tokens if t.kind != ";"]
            multi = bool(rest)
            break
        word = tok.text.upper() if tok.kind == "word" else ""
        if word == "OUTFILE" and prev_word == "INTO":
            into_outfile = True
        prev_word = word
        if tok.depth == 0:
            top.append(tok)
    return Statement(kind=kind, format=_output_format(top), multi=multi, into_outfile=into_outfile)


def _output_format(top: list[_Token]) -> str | None:
    """The last top-level ``FORMAT name`` that is followed by nothing or by a SETTINGS clause."""
    for i in range(len(top) - 2, -1, -1):
        tok = top[i]
        if tok.kind != "word" or tok.text.upper() != "FORMAT" or (i and top[i - 1].text == "."):
            continue
        name = top[i + 1]
        if name.kind not in ("word", "quoted"):
            continue
        after = top[i + 2] if i + 2 < len(top) else None
        if after is None or (after.kind == "word" and after.text.upper() == "SETTINGS"):
            return name.text.strip('`"')
    return None


_NOT_BEFORE_FORMAT = frozenset({"INTO", "TABLE", "FUNCTION", "AS", "FROM", "JOIN"})


def _analyze_insert(text: str, tokens) -> Statement:  # type: ignore[no-untyped-def]
    prev: _Token | None = None
    for tok in tokens:
        if tok.kind == "open":
            return Statement(kind="INSERT", complete=False)
        word = tok.text.upper() if tok.kind == "word" else ""
        if tok.depth == 0 and word in ("SELECT", "WITH") and not _is_qualified(prev):
            return _insert_select(text, tokens)
        if tok.depth == 0 and word == "VALUES" and not _is_qualified(prev):
            return Statement(kind="INSERT", format="Values", head_end=tok.start, data_start=tok.end)
        if (
            tok.depth == 0
            and word == "FORMAT"
            and not _is_qualified(prev)
            and not (prev is not None and prev.text.upper() in _NOT_BEFORE_FORMAT)
        ):
            name = next(tokens, None)
            if name is None or name.kind == "open":
                return Statement(kind="INSERT", complete=False)
            if name.kind not in ("word", "quoted"):
                return Statement(kind="INSERT")
            if name.end == len(text):
                # The format name may continue in bytes not read yet.
                return Statement(kind="INSERT", complete=False)
            return Statement(
                kind="INSERT",
                format=name.text.strip('`"'),
                head_end=tok.start,
                data_start=_data_start(text, name.end),
            )
        if tok.kind == ";" and tok.depth == 0:
            return Statement(kind="INSERT")
        prev = tok
    return Statement(kind="INSERT", complete=False)


def _insert_select(text: str, tokens) -> Statement:  # type: ignore[no-untyped-def]
    """INSERT ... SELECT: no inline data unless it reads ``input()`` with a FORMAT clause."""
    multi = False
    seen_semicolon = False
    for tok in tokens:
        if tok.kind == "open":
            return Statement(kind="INSERT", complete=False)
        if seen_semicolon and tok.kind != ";":
            multi = True
            break
        if tok.kind == ";" and tok.depth == 0:
            seen_semicolon = True
    return Statement(kind="INSERT", multi=multi)


def _is_qualified(prev: _Token | None) -> bool:
    return prev is not None and prev.kind == "op" and prev.text == "."


def split_statements(text: str) -> list[str]:
    """Split a script on top-level ``;`` (not inside strings, comments or parentheses).

    Why: the HTTP interface runs one statement per request, so migration files
    with several statements are sent one by one. Pieces holding only comments
    or blanks are dropped.
    """
    statements: list[str] = []
    start = 0
    has_code = False
    for tok in _tokens(text):
        if tok.kind == "open":
            raise ValueError("unterminated string, quoted identifier or comment")
        if tok.kind == ";" and tok.depth == 0:
            if has_code:
                statements.append(text[start : tok.start].strip())
            start = tok.end
            has_code = False
        else:
            if not has_code:
                start = tok.start
            has_code = True
    if has_code:
        statements.append(text[start:].strip())
    return statements


def canonical(text: str) -> str:
    """The script's tokens joined by single spaces: comments and layout removed, literals kept.

    Why: a migration's checksum should change when what it does changes, not
    when a comment in it is improved.
    """
    parts = []
    for tok in _tokens(text):
        if tok.kind == "open":
            raise ValueError("unterminated string, quoted identifier or comment")
        parts.append(tok.text)
    return " ".join(parts)
