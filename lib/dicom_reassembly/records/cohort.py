"""Cohort lists: the instances a cohort selected, as ``cohort`` writes them and ``reassemble --only``,
``stow --only`` and ``uid --from-list`` read them.

A list is a CSV file with a header naming ``sop_instance_uid`` first (``cohort`` writes
``sop_instance_uid,output_uri,study_instance_uid,series_instance_uid``), or plain text with one UID per line.
The UID is always the first column, so a list cut down by hand, or written by another tool, still reads.
Every UID is checked when the list is read: a bad line is a one-line error naming it, never a skipped row.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..dicom.uids import uid_problem
from ..errors import ConfigError, NotFoundError, ReassemblyError
from ..io import reads, uris, writes

log = logging.getLogger(__name__)

LIST_COLUMNS = ("sop_instance_uid", "output_uri", "study_instance_uid", "series_instance_uid")
HEADER = LIST_COLUMNS[0]
CHECK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Listed:
    """One instance of a list: its UID and, when the list has one, where its object is."""

    uid: str
    output_uri: str | None = None


def _write_rows(out: Any, rows: Iterable[Sequence[Any]]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LIST_COLUMNS)
    n = 0
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
        n += 1
    return n


def write_uid_list(uri: str, rows: Iterable[Sequence[Any]]) -> int:
    """Write a list (local path or ``s3://``) from rows in ``LIST_COLUMNS`` order; returns how many rows."""
    if uris.is_s3(uri):
        buf = io.StringIO()
        n = _write_rows(buf, rows)
        writes.write_bytes(uri, buf.getvalue().encode("utf-8"))
        return n
    try:
        with open(uri, "w", encoding="utf-8", newline="") as fh:
            return _write_rows(fh, rows)
    except OSError as exc:
        raise ConfigError("uid_list_unwritable", exc.strerror or type(exc).__name__, uri=uri) from None


def parse_uid_list(text: str, where: str, complete: bool = True) -> list[Listed]:
    """The instances of a list's text, in order, each once; ConfigError ``bad_uid_list`` names a bad line.

    ``complete`` false: ``text`` is the list's beginning, so its last line may be cut short and is not checked.
    """
    lines = text.splitlines()
    if not complete and lines:
        lines = lines[:-1]
    rows = list(csv.reader(lines))
    uri_at = None
    start = 0
    first = next((i for i, r in enumerate(rows) if r and any(c.strip() for c in r)), None)
    if first is not None and rows[first][0].strip() == HEADER:
        names = [c.strip() for c in rows[first]]
        uri_at = names.index("output_uri") if "output_uri" in names else None
        start = first + 1
    seen: dict[str, Listed] = {}
    for number, row in enumerate(rows[start:], start=start + 1):
        if not row or not any(c.strip() for c in row):
            continue
        uid = row[0].strip()
        problem = uid_problem(uid)
        if problem:
            raise ConfigError("bad_uid_list", f"line {number}: {uid[:70]!r} is {problem}", uri=where)
        uri = row[uri_at].strip() if uri_at is not None and uri_at < len(row) and row[uri_at].strip() else None
        seen.setdefault(uid, Listed(uid, uri))
    return list(seen.values())


def _read_text(uri: str, limit: int | None = None) -> tuple[str, bool]:
    """The list's text (its first ``limit`` bytes when given), and whether that is all of it."""
    try:
        data = reads.read_range(uri, 0, limit) if limit else reads.read_bytes(uri)
    except NotFoundError:
        raise ConfigError("uid_list_not_found", "no such list", uri=uri) from None
    except ReassemblyError:
        raise
    except OSError as exc:
        raise ConfigError("uid_list_unreadable", exc.strerror or type(exc).__name__, uri=uri) from None
    complete = limit is None or len(data) < limit
    try:  # a cut beginning may end inside a character: that last line is not checked anyway
        return data.decode("utf-8-sig", errors="strict" if complete else "ignore"), complete
    except UnicodeDecodeError:
        raise ConfigError("bad_uid_list", "not UTF-8 text", uri=uri) from None


def read_uid_list(uri: str) -> list[Listed]:
    """Every instance of the list at ``uri`` (local or ``s3://``); an empty list is an error (nothing to do)."""
    listed = parse_uid_list(_read_text(uri)[0], uri)
    if not listed:
        raise ConfigError("empty_uid_list", "the list names no instance", uri=uri)
    return listed


def check_uid_list(uri: str) -> None:
    """Check a list's beginning before a Spark job reads all of it: it exists, and its first lines are UIDs."""
    text, complete = _read_text(uri, CHECK_BYTES)
    if not parse_uid_list(text, uri, complete) and complete:
        raise ConfigError("empty_uid_list", "the list names no instance", uri=uri)


def read_uid_list_df(spark: Any, uri: str) -> Any:
    """The list's UIDs as a one-column DataFrame (``sop_instance_uid``, distinct), read by Spark at any size."""
    from pyspark.sql import functions as F

    # A list saved by a spreadsheet starts with a BOM: without it, the first UID would match nothing.
    line = F.regexp_replace(F.col("value"), "^\ufeff", "")
    first = F.trim(F.split(line, ",").getItem(0))
    return (spark.read.text(uri).select(first.alias("sop_instance_uid"))
            .filter((F.col("sop_instance_uid") != "") & (F.col("sop_instance_uid") != HEADER)).distinct())
