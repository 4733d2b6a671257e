"""Reading CSV files and their columns into numpy, with one-line errors that name the row.

Why pandas only here, and late: it is the fastest tolerant CSV reader at hand,
but importing it costs ~0.9 s, which ``citystream --help`` must not pay.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from citystream.errors import UserError


def read_table(path: Path, **kwargs: Any) -> Any:
    """A pandas DataFrame, or a UserError naming the file and what is wrong with it."""
    import pandas as pd  # ~0.9 s: paid only when a file is read, not by --help or `import FIELDS`

    try:
        df = pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a CSV file") from None
    except PermissionError:
        raise UserError(f"{path}: not readable (permission denied)") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: empty file, no CSV header") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable CSV file ({first})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if df.empty:
        raise UserError(f"{path}: no data rows")
    return df


def parse_times(raw: Any, path: Path, column: str, fmt: str | None) -> np.ndarray:
    """UTC epoch ms for a column of timestamps (no zone = UTC); names the first bad row."""
    import pandas as pd  # ~0.9 s: paid only when a file is read, not by --help or `import FIELDS`

    text = raw.astype(str).str.strip()
    try:
        parsed = pd.to_datetime(text, format=fmt, utc=True, errors="coerce")
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: column {column!r}: bad --time-format {fmt!r} ({exc})") from None
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        hint = f" (expected format {fmt})" if fmt else ""
        raise UserError(
            f"{path}: bad timestamp {text.iloc[row]!r} in data row {row + 1}, column {column!r}{hint}"
        )
    return (parsed.astype("int64") // 1_000_000).to_numpy(dtype=np.int64)


def numeric(raw: Any, path: Path, column: str) -> np.ndarray:
    """Floats of a column, NaN where empty; a non-number is refused with its row."""
    import pandas as pd  # ~0.9 s: paid only when a file is read, not by --help or `import FIELDS`

    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    text_missing = raw.isna().to_numpy() | (raw.astype(str).str.strip() == "").to_numpy()
    bad = np.isnan(values) & ~text_missing
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserError(f"{path}: column {column!r} has a non-number {raw.iloc[row]!r} in data row {row + 1}")
    return values


def parse_one(text: str, where: Path) -> int:
    """UTC epoch ms of one ISO timestamp (no zone = UTC) in ``where``."""
    try:
        when = datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise UserError(f"{where}: bad timestamp {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def is_number(text: str) -> bool:
    """Whether a label cell is a number (a flag) rather than a kind name."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def label_flags(raw: Any) -> np.ndarray:
    """True where a label column marks an anomaly: non-zero numbers, or any text but 0/false/normal/empty."""
    text = raw.astype(str).str.strip().str.lower().to_numpy()
    out = np.zeros(text.size, dtype=bool)
    for i, t in enumerate(text.tolist()):
        if t in ("", "nan", "none", "false", "normal", "no"):
            continue
        out[i] = float(t) != 0.0 if is_number(t) else True
    return out
