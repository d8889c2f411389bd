"""The tables the report reads (``dse.csv``, ``probe.csv`` and the others ``dsekit scan`` and
``dsekit probe`` write), checked as they are read: every damage is an error naming the file,
the line and the column."""

from __future__ import annotations

import csv
import math
from collections.abc import Collection, Sequence
from pathlib import Path

from .plots import METRIC_ORDER, TERM_LABELS

__all__ = ["read_table", "DSE_TABLE_COLUMNS", "PROBE_TABLE_COLUMNS", "ID_COLUMNS"]

#: columns of dse.csv that are not metrics
ID_COLUMNS = ("checkpoint", "epoch", "step", "partial")
_VALUE_COLUMNS = (*TERM_LABELS, *METRIC_ORDER)  # the four terms, dse, dse_raw and the baselines
#: the columns ``dsekit scan`` writes to ``dse.csv`` (values and their interval bounds)
DSE_TABLE_COLUMNS = frozenset(
    (*ID_COLUMNS, *_VALUE_COLUMNS, *(f"{c}_{s}" for c in _VALUE_COLUMNS for s in ("low", "high")))
)
#: the columns ``dsekit probe`` writes to ``probe.csv``
PROBE_TABLE_COLUMNS = frozenset(
    ("checkpoint", "epoch", "step", "dataset", "miou", "pixel_accuracy", "miou_low", "miou_high", "heads", "partial")
    + ("knn_top1", "knn_low", "knn_high")
)


def read_table(
    path: str | Path,
    required: Sequence[str] = (),
    numeric: Sequence[str] | None = None,
    *,
    finite: Sequence[str] = (),
    known: Collection[str] | None = None,
) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts, checked as they are read.

    Every check raises ``ValueError`` naming the file, and the line and the column where there
    is one: a NUL byte (a damaged file), a row with fewer or more values than the header.

    Args:
        path: the file (``FileNotFoundError`` naming it when missing).
        required: columns that must be there (``ValueError`` naming the file and the columns).
        numeric: columns whose non-empty values must be numbers; None: none checked.
        finite: columns whose values must be finite numbers (no NaN, no infinity, not empty).
        known: the columns the file may have (None: any); another column is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: not a readable CSV file ({err})") from None
    if any("\x00" in c for c in header):
        raise ValueError(f"{path}, line 1: a NUL byte in the header (a damaged file)")
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (the header has: {', '.join(header)})")
    unknown = [c for c in header if known is not None and c not in known]
    if unknown:
        raise ValueError(
            f"{path}, line 1, column {unknown[0]!r}: not a column this table has "
            f"(unknown: {', '.join(map(repr, unknown))})"
        )
    for line, row in enumerate(rows, start=2):  # a line per row: dsekit's tables quote no line breaks
        if None in row:
            raise ValueError(f"{path}, line {line}: more values than the header has columns ({len(header)})")
        short = [c for c, v in row.items() if v is None]
        if short:
            raise ValueError(f"{path}, line {line}, column {short[0]!r}: the row ends early (no value for {short})")
        for c, v in row.items():
            if "\x00" in v:
                raise ValueError(f"{path}, line {line}, column {c!r}: a NUL byte (a damaged file)")
        for c in numeric or ():
            v = row.get(c)
            if v not in (None, "") and not _is_number(v):
                raise ValueError(f"{path}, line {line}, column {c!r}: expected a number, got {v!r}")
        for c in finite:
            v = row.get(c)
            if v is not None and not (_is_number(v) and math.isfinite(float(v))):
                raise ValueError(f"{path}, line {line}, column {c!r}: expected a finite number, got {v!r}")
    return rows


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def table_header(path: Path) -> list[str]:
    """The header of the CSV at ``path`` (empty when unreadable: read_table says why)."""
    try:
        with open(path, newline="") as f:
            return next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def numeric_columns(path: Path, text: Sequence[str]) -> list[str]:
    """Every column of the CSV at ``path`` except ``text``."""
    return [c for c in table_header(path) if c not in text]
