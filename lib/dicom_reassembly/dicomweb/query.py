"""QIDO-RS over the catalogue, in DuckDB: matching keys to SQL, rows to DICOM JSON (PS3.18 10.6).

Matching (PS3.4 C.2.2.2): single value; UID lists (``a,b`` or ``a\\b``); ``*`` and ``?`` wildcards in
text; date ranges (``20200101-20201231``, open at either end). Every query is limited to the patients
of the caller's token. Values are always bound as parameters, never pasted into the SQL.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import date
from typing import Any

import duckdb

from ..dicom.uids import uid_problem
from ..errors import NotFoundError
from ..io import listing
from ..records import catalog


class QueryError(ValueError):
    """A malformed matching key or value (HTTP 422); the message is one line."""


@dataclass(frozen=True)
class Key:
    """A matching key: the catalogue column, its DICOM tag and VR, and how it matches."""

    column: str
    tag: str
    vr: str
    match: str  # uid | text | date | int | exact


KEYS: dict[str, Key] = {k: Key(*v) for k, v in {
    "StudyInstanceUID": ("study_instance_uid", "0020000D", "UI", "uid"),
    "PatientID": ("patient_id", "00100020", "LO", "text"),
    "PatientName": ("patient_name", "00100010", "PN", "text"),
    "StudyDate": ("study_date", "00080020", "DA", "date"),
    "AccessionNumber": ("accession_number", "00080050", "SH", "text"),
    "StudyDescription": ("study_description", "00081030", "LO", "text"),
    "ModalitiesInStudy": ("modality", "00080061", "CS", "exact"),
    "Modality": ("modality", "00080060", "CS", "exact"),
    "SeriesInstanceUID": ("series_instance_uid", "0020000E", "UI", "uid"),
    "SeriesNumber": ("series_number", "00200011", "IS", "int"),
    "SeriesDescription": ("series_description", "0008103E", "LO", "text"),
    "BodyPartExamined": ("body_part_examined", "00180015", "CS", "exact"),
    "SOPInstanceUID": ("sop_instance_uid", "00080018", "UI", "uid"),
    "SOPClassUID": ("sop_class_uid", "00080016", "UI", "uid"),
    "InstanceNumber": ("instance_number", "00200013", "IS", "int"),
}.items()}
BY_TAG = {k.tag: name for name, k in KEYS.items()}
LEVEL_KEYS = {
    "study": ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "AccessionNumber", "StudyDescription",
              "ModalitiesInStudy"),
    "series": ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined"),
    "instance": ("SOPInstanceUID", "SOPClassUID", "InstanceNumber"),
}
MAX_LIMIT = 10000
_REFRESH_SECONDS = 2.0
SNAPSHOT_MAX_BYTES = 256 * 1024 * 1024


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _date(text: str) -> date:
    try:
        if not re.fullmatch(r"\d{8}", text):
            raise ValueError(text)
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError as exc:
        raise QueryError(f"{text[:20]!r} is not a date YYYYMMDD") from exc


def condition(name: str, value: str) -> tuple[str, list[Any]]:
    """SQL and parameters for one matching key; QueryError when the value is malformed."""
    key = KEYS[name]
    col = key.column
    value = value.strip()
    if key.match == "uid":
        uids = [u for u in re.split(r"[,\\]", value) if u]
        for u in uids:
            if uid_problem(u):
                raise QueryError(f"{name}: {u[:70]!r} is not a UID")
        return f"{col} IN ({', '.join('?' * len(uids))})", uids
    if key.match == "date":
        if "-" in value:
            lo, _, hi = value.partition("-")
            parts, params = [], []
            if lo:
                parts.append(f"{col} >= ?")
                params.append(_date(lo))
            if hi:
                parts.append(f"{col} <= ?")
                params.append(_date(hi))
            if not parts:
                raise QueryError(f"{name}: '-' is not a date range")
            return " AND ".join(parts), params
        return f"{col} = ?", [_date(value)]
    if key.match == "int":
        if not re.fullmatch(r"[+-]?\d{1,10}", value):
            raise QueryError(f"{name}: {value!r} is not an integer")
        return f"{col} = ?", [int(value)]
    if key.match == "text" and ("*" in value or "?" in value):
        return f"{col} LIKE ? ESCAPE '\\'", [_like(value)]
    return f"{col} = ?", [value]


def _element(vr: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(value)}]}
    if vr == "DA" and isinstance(value, date):
        return {"vr": vr, "Value": [value.strftime("%Y%m%d")]}
    if vr in ("IS", "US", "UL"):
        return {"vr": vr, "Value": [int(value)]}
    if isinstance(value, list):
        return {"vr": vr, "Value": [str(v) for v in value if v is not None]} if any(v is not None for v in value) else {"vr": vr}
    return {"vr": vr, "Value": [str(value)]}


# Output attributes per level: (tag, vr, SQL expression over the newest rows).
_STUDY_OUT = [("00080020", "DA", "min(study_date)"), ("00080050", "SH", "min(accession_number)"),
              ("00080061", "CS", "list(DISTINCT modality ORDER BY modality) FILTER (WHERE modality IS NOT NULL)"),
              ("00081030", "LO", "min(study_description)"), ("00100010", "PN", "min(patient_name)"),
              ("00100020", "LO", "min(patient_id)"), ("0020000D", "UI", "study_instance_uid"),
              ("00201206", "IS", "count(DISTINCT series_instance_uid)"), ("00201208", "IS", "count(*)")]
_SERIES_OUT = [("00080060", "CS", "min(modality)"), ("0008103E", "LO", "min(series_description)"),
               ("00180015", "CS", "min(body_part_examined)"), ("0020000D", "UI", "min(study_instance_uid)"),
               ("0020000E", "UI", "series_instance_uid"), ("00200011", "IS", "min(series_number)"),
               ("00201209", "IS", "count(*)")]
_INSTANCE_OUT = [("00080016", "UI", "sop_class_uid"), ("00080018", "UI", "sop_instance_uid"),
                 ("00083002", "UI", "transfer_syntax"), ("00100020", "LO", "patient_id"),
                 ("0020000D", "UI", "study_instance_uid"), ("0020000E", "UI", "series_instance_uid"),
                 ("00200013", "IS", "instance_number"), ("00280008", "IS", "number_of_frames"),
                 ("00280010", "US", "rows"), ("00280011", "US", "columns"), ("00280100", "US", "bits_allocated")]
LEVELS = {"study": ("study_instance_uid", _STUDY_OUT), "series": ("series_instance_uid", _SERIES_OUT),
          "instance": (None, _INSTANCE_OUT)}


class CatalogIndex:
    """The catalogue as DuckDB sees it: the view ``catalog``, newest row per instance, kept fresh.

    Every ``_REFRESH_SECONDS`` (and after an upload) the catalogue's files are listed; when they changed,
    the view is rebuilt. A catalogue up to ``SNAPSHOT_MAX_BYTES`` of Parquet is copied into an in-memory
    DuckDB table, so a query costs a millisecond instead of a scan of every file (measured: 117 ms for a
    study search over 47 small files, mostly per-file overhead); a larger one is queried in place, where
    DuckDB prunes by partition and row-group statistics.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._con = duckdb.connect()
        self._lock = threading.Lock()
        self._refreshed = 0.0
        self._files: list[tuple[str, int, str]] | None = None
        self.refresh()

    def _listing(self) -> list[tuple[str, int, str]]:
        try:
            return [(o.uri, o.size, o.etag) for o in listing.list_objects(self.uri, (".parquet",))]
        except NotFoundError:
            return []

    def refresh(self) -> None:
        """Rebuild the view when the catalogue's files changed (new rows, or a catalogue that was empty)."""
        files = self._listing()
        with self._lock:
            self._refreshed = time.monotonic()
            if files == self._files:
                return
            catalog.create_current_view(self._con, self.uri, name="catalog_live")
            if sum(size for _, size, _ in files) <= SNAPSHOT_MAX_BYTES:
                self._con.execute("CREATE OR REPLACE TABLE catalog_snapshot AS SELECT * FROM catalog_live")
                self._con.execute("CREATE OR REPLACE VIEW catalog AS SELECT * FROM catalog_snapshot")
            else:
                self._con.execute("CREATE OR REPLACE VIEW catalog AS SELECT * FROM catalog_live")
            self._files = files

    def _cursor(self) -> Any:
        if time.monotonic() - self._refreshed > _REFRESH_SECONDS:
            self.refresh()
        with self._lock:
            return self._con.cursor()

    def search(self, level: str, matches: dict[str, str], patient_ids: frozenset[str] | None, limit: int,
               offset: int) -> list[dict[str, Any]]:
        """QIDO results as DICOM JSON datasets; ``matches`` are keyword -> value, already checked."""
        where, params = self._where(matches, patient_ids)
        group, outputs = LEVELS[level]
        select = ", ".join(f"{expr} AS c{i}" for i, (_, _, expr) in enumerate(outputs))
        order = "min(study_date), study_instance_uid" if level == "study" else (
            "min(series_number), series_instance_uid" if level == "series" else "instance_number, sop_instance_uid")
        if group:
            # A study (series) matches when any of its instances does, and is described by all of them
            # (ModalitiesInStudy, the counts): match in a subquery, aggregate over the whole group.
            scope, scope_params = self._where({}, patient_ids)
            sql = (f"SELECT {select} FROM catalog WHERE {scope} AND {group} IN "
                   f"(SELECT {group} FROM catalog WHERE {where}) GROUP BY {group}")
            params = [*scope_params, *params]
        else:
            sql = f"SELECT {select} FROM catalog WHERE {where}"
        rows = self._cursor().execute(f"{sql} ORDER BY {order} NULLS LAST LIMIT ? OFFSET ?",
                                      [*params, limit, offset]).fetchall()
        return [{tag: _element(vr, row[i]) for i, (tag, vr, _) in enumerate(outputs)} for row in rows]

    @staticmethod
    def _where(matches: dict[str, str], patient_ids: frozenset[str] | None) -> tuple[str, list[Any]]:
        parts, params = ["TRUE"], []
        for name, value in matches.items():
            sql, values = condition(name, value)
            parts.append(f"({sql})")
            params.extend(values)
        if patient_ids is not None:
            if not patient_ids:
                return "FALSE", []
            parts.append(f"patient_id IN ({', '.join('?' * len(patient_ids))})")
            params.extend(sorted(patient_ids))
        return " AND ".join(parts), params

    def instance(self, study: str, series: str, sop: str) -> dict[str, Any] | None:
        """The newest catalogue row of one instance, or None."""
        cur = self._cursor()
        cur.execute("SELECT * FROM catalog WHERE sop_instance_uid = ? AND series_instance_uid = ? "
                    "AND study_instance_uid = ?", [sop, series, study])
        row = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], row)) if row else None

    def instances(self, study: str, series: str | None) -> list[dict[str, Any]]:
        """Every instance of a study or series (patient scope is the caller's to apply)."""
        cur = self._cursor()
        sql = ("SELECT sop_instance_uid, series_instance_uid, patient_id, output_uri, transfer_syntax FROM catalog "
               "WHERE study_instance_uid = ?")
        params = [study]
        if series:
            sql += " AND series_instance_uid = ?"
            params.append(series)
        cur.execute(sql + " ORDER BY series_instance_uid, instance_number NULLS LAST, sop_instance_uid", params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
