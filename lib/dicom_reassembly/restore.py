"""Glacier restore orchestration: plan what to restore, request it politely, and track it.

The delivery sits in S3 Glacier Flexible Retrieval. Restoring is where time and money go, so:

- **wave 1** is the text (header) archives: they are small and selection needs them;
- **wave 2** is the pixel archives, and with a manifest plus criteria only the archives that hold a selected
  instance. A pixel archive cannot be indexed before it is restored, so an archive the manifest has not indexed
  cannot be proven unneeded unless every selected header is located (by the manifest's pixel rows or by a
  ``pixel_ref`` that names an archive); such archives are planned as ``unknown`` and restored by default.

Requests go through a token bucket (the account's restore-request limit is shared with everyone else), are
idempotent (in progress and already restored are outcomes, not errors) and are recorded in a restore ledger
(Parquet). Very large sets go through S3 Batch Operations instead: ``write_batch_manifest`` plus
``build_batch_restore_job``/``submit_batch_job``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from .errors import ConfigError, NotFoundError, StorageError
from .io import arrow_io, clients, reads, writes
from .io import listing as io_listing
from .io import uris as io_uris
from .io.throttle import TokenBucket

log = logging.getLogger(__name__)

ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")
TIERS = ("Bulk", "Standard", "Expedited")
WAVE_HEADERS = 1
WAVE_PIXELS = 2

# Plan states: what happens to a listed archive.
STATE_RESTORE = "restore"  # needed, in an archive class: restore it
STATE_UNKNOWN = "unknown"  # cannot be proven unneeded, in an archive class: restored unless excluded
STATE_AVAILABLE = "available"  # needed (or unknown) but readable already: no restore
STATE_NOT_NEEDED = "not_needed"  # proven unneeded (no selected instance, or headers already in the manifest)
PLAN_STATES = (STATE_RESTORE, STATE_UNKNOWN, STATE_AVAILABLE, STATE_NOT_NEEDED)

# Request outcomes recorded in the restore ledger.
OUTCOME_REQUESTED = "requested"  # 202: a new restore started
OUTCOME_ALREADY_RESTORED = "already_restored"  # 200: a restored copy exists (its expiry was extended)
OUTCOME_IN_PROGRESS = "in_progress"  # 409 RestoreAlreadyInProgress
OUTCOME_NOT_ARCHIVED = "not_archived"  # 403 InvalidObjectState: not in an archive class, readable as is
OUTCOME_BATCH = "batch"  # handed to an S3 Batch Operations job
OUTCOME_ERROR = "error"

# Status states.
STATUS_PENDING = "pending"
STATUS_RESTORED = "restored"
STATUS_NOT_REQUESTED = "not_requested"  # still archived, no restore under way
STATUS_NOT_NEEDED = "not_needed"  # not in an archive class
STATUS_MISSING = "missing"
STATUS_ERROR = "error"

DEFAULT_RATE = 100.0  # RestoreObject requests/s; AWS allows 1,000 per account and Region, shared by all callers
DEFAULT_WORKERS = 16
DEFAULT_BATCH_THRESHOLD = 100_000
_LEDGER_FLUSH_ROWS = 50_000
_MAX_DETAIL = 300


# --------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PlannedObject:
    """One listed archive and what the plan does with it."""

    uri: str
    size: int
    role: str  # 'text' | 'images'
    wave: int
    state: str
    reason: str
    storage_class: str | None = None


@dataclass
class Selection:
    """What the manifest and criteria said about the instances (counts only)."""

    evaluated: bool = True
    header_rows: int = 0
    selected: int = 0
    filtered_out: int = 0
    invalid_headers: int = 0
    located_by_ref: int = 0
    located_by_manifest: int = 0
    unlocated: int = 0


@dataclass
class RestorePlan:
    """The archives of a delivery, in waves, each with a state (see ``PLAN_STATES``)."""

    objects: list[PlannedObject]
    selection: Selection | None = None
    notes: list[str] = field(default_factory=list)

    def to_restore(self, include_unknown: bool = True, wave: int | None = None) -> list[PlannedObject]:
        """The objects to restore, headers first."""
        states = (STATE_RESTORE, STATE_UNKNOWN) if include_unknown else (STATE_RESTORE,)
        out = [o for o in self.objects if o.state in states and (wave is None or o.wave == wave)]
        return sorted(out, key=lambda o: (o.wave, o.uri))

    def summary(self, include_unknown: bool = True) -> dict[str, Any]:
        """Counts and bytes per wave and state, plus what would be restored."""
        waves: dict[str, dict[str, dict[str, int]]] = {}
        for o in self.objects:
            per_state = waves.setdefault(str(o.wave), {s: {"count": 0, "bytes": 0} for s in PLAN_STATES})
            per_state[o.state]["count"] += 1
            per_state[o.state]["bytes"] += o.size
        todo = self.to_restore(include_unknown)
        out: dict[str, Any] = {
            "archives": len(self.objects),
            "bytes": sum(o.size for o in self.objects),
            "waves": waves,
            "to_restore": {"count": len(todo), "bytes": sum(o.size for o in todo), "include_unknown": include_unknown},
            "notes": list(self.notes),
        }
        if self.selection is not None:
            out["selection"] = asdict(self.selection)
        return out


def is_archived(storage_class: str | None) -> bool:
    """True when objects of this class must be restored before a GET."""
    return (storage_class or "").upper() in ARCHIVE_CLASSES


def _state(needed: str, storage_class: str | None) -> str:
    if needed == STATE_NOT_NEEDED:
        return STATE_NOT_NEEDED
    if not is_archived(storage_class):
        return STATE_AVAILABLE
    return needed


def plan_restore(text_uri: str, images_uri: str, manifest: str | None = None, criteria: Any = None, *,
                 suffixes: tuple[str, ...] = (".tar",), always_evaluate: bool = False,
                 access: clients.ArchiveAccess | None = None) -> RestorePlan:
    """Plan the restore of a delivery: text archives in wave 1, the pixel archives needed in wave 2.

    ``criteria`` is a ``CriteriaSpec`` or a criteria file. Without manifest and criteria every archive is
    needed. Objects outside GLACIER/DEEP_ARCHIVE need no restore (state ``available``). Only keys ending in
    ``suffixes`` are archives (empty: every object), as in ``build_manifest``.

    When no pixel archive is indexed yet and no header's ``pixel_ref`` names one, the criteria cannot spare
    any pixel archive, so the headers are not parsed at all (billions of JSON documents on the full delivery)
    unless ``always_evaluate``; every pixel archive is then ``unknown``. ``access``: the input credentials, used
    to list the input bucket.
    """
    text = list(io_listing.list_objects(text_uri, suffixes, access))
    images = list(io_listing.list_objects(images_uri, suffixes, access))
    unreadable = [o for o in [*text, *images] if o.error]
    notes: list[str] = [f"{len(unreadable)} listed entries cannot be read and are left out, e.g. "
                        f"{unreadable[0].uri}: {unreadable[0].error}: {unreadable[0].error_detail}"] if unreadable else []
    text, images = [o for o in text if not o.error], [o for o in images if not o.error]
    spec = _as_spec(criteria)
    if manifest is None:
        if spec is not None:
            notes.append("criteria without a manifest cannot select archives: every pixel archive is needed")
        objects = [PlannedObject(o.uri, o.size, "text", WAVE_HEADERS, _state(STATE_RESTORE, o.storage_class),
                                 "headers", o.storage_class) for o in text]
        objects += [PlannedObject(o.uri, o.size, "images", WAVE_PIXELS, _state(STATE_RESTORE, o.storage_class),
                                  "no_manifest", o.storage_class) for o in images]
        return RestorePlan(objects, None, notes)

    dataset = arrow_io.open_manifest(manifest, ("sop_instance_uid",))
    with arrow_io.manifest_errors(manifest):
        indexed = read_indexed_archives(dataset, {o.uri: o for o in [*text, *images]})
    objects = []
    for o in text:
        # The manifest carries the header JSON of indexed text archives: they need not be read again.
        if o.uri in indexed:
            objects.append(PlannedObject(o.uri, o.size, "text", WAVE_HEADERS, STATE_NOT_NEEDED,
                                         "headers_in_manifest", o.storage_class))
        else:
            objects.append(PlannedObject(o.uri, o.size, "text", WAVE_HEADERS, _state(STATE_RESTORE, o.storage_class),
                                         "headers_not_indexed", o.storage_class))
    unindexed_text = sum(1 for o in text if o.uri not in indexed)
    selection: Selection | None = None
    if spec is None:
        objects += [PlannedObject(o.uri, o.size, "images", WAVE_PIXELS, _state(STATE_RESTORE, o.storage_class),
                                  "no_criteria", o.storage_class) for o in images]
        return RestorePlan(objects, None, notes)

    pixel_uris = [o.uri for o in images]
    with arrow_io.manifest_errors(manifest):
        if (not always_evaluate and not any(u in indexed for u in pixel_uris)
                and not read_any_archive_ref(dataset, indexed, pixel_uris, suffixes)):
            notes.append("criteria not evaluated: no pixel archive is indexed yet and no header names its pixel "
                         "archive, so selection cannot spare a pixel restore (it still filters at reassembly)")
            objects += [PlannedObject(o.uri, o.size, "images", WAVE_PIXELS, _state(STATE_UNKNOWN, o.storage_class),
                                      "not_indexed", o.storage_class) for o in images]
            return RestorePlan(objects, Selection(evaluated=False), notes)
        needed, selection = read_needed_pixel_archives(dataset, spec, indexed, pixel_uris)
    if unindexed_text:
        notes.append(f"{unindexed_text} text archives are not indexed yet: selection is partial until wave 1 is "
                     "restored and build_manifest has run")
    all_located = selection.unlocated == 0 and unindexed_text == 0
    for o in images:
        if o.uri in needed:
            need, reason = STATE_RESTORE, "selected_instances"
        elif o.uri in indexed:
            need, reason = STATE_NOT_NEEDED, "no_selected_instance"
        elif all_located:
            need, reason = STATE_NOT_NEEDED, "not_indexed_not_referenced"
        else:
            need, reason = STATE_UNKNOWN, "not_indexed"
        objects.append(PlannedObject(o.uri, o.size, "images", WAVE_PIXELS, _state(need, o.storage_class), reason,
                                     o.storage_class))
    if not all_located and any(o.state == STATE_UNKNOWN for o in objects):
        notes.append(f"{selection.unlocated} selected instances have no known pixel archive: pixel archives not yet "
                     "indexed are 'unknown' and restored unless excluded")
    return RestorePlan(objects, selection, notes)


def _as_spec(criteria: Any) -> Any:
    if criteria is None or not isinstance(criteria, str):
        return criteria
    from .selection.spec import load_criteria

    return load_criteria(criteria)


def _columns(dataset: Any, wanted: Sequence[str]) -> list[str]:
    names = set(dataset.schema.names)
    return [c for c in wanted if c in names]


def read_indexed_archives(dataset: Any, listing: dict[str, io_listing.ObjectInfo]) -> dict[str, str]:
    """Archives whose newest index is usable: ``{archive_uri: index_run}``.

    Only archive-level rows are read (one per archive and run). An index is not usable when the archive changed
    since (size or ETag differ from the listing) or when it failed for a retryable reason (e.g. not restored).
    """
    from .manifest.index import RETRYABLE_ARCHIVE_ERRORS

    cols = _columns(dataset, ("archive_size", "archive_etag", "error"))
    newest = {row["archive_uri"]: row for row in arrow_io.newest_archive_rows(dataset, cols).to_pylist()}
    out = {}
    for uri, row in newest.items():
        listed = listing.get(uri)
        if listed is None or (row.get("error") or "") in RETRYABLE_ARCHIVE_ERRORS:
            continue
        if row.get("archive_size") is not None and row["archive_size"] != listed.size:
            continue
        if row.get("archive_etag") and listed.etag and row["archive_etag"] != listed.etag:
            continue
        out[uri] = row["index_run"]
    return out


def read_any_archive_ref(dataset: Any, indexed: dict[str, str], pixel_uris: Sequence[str],
                         suffixes: tuple[str, ...]) -> bool:
    """True when some header's ``pixel_ref`` names a listed pixel archive (newest index only).

    Only the ``pixel_ref`` column is read; refs that cannot contain an archive name (no archive suffix in them)
    are dropped vectorised, so the common ``<uid>.j2c`` refs cost no Python work.
    """
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    if "pixel_ref" not in dataset.schema.names:
        return True  # unknown: let the full evaluation look at the header JSON
    resolver = _ArchiveResolver(pixel_uris)
    flt = (pads.field("kind") == "header") & pads.field("pixel_ref").is_valid()
    for batch in dataset.to_batches(columns=["archive_uri", "index_run", "pixel_ref"], filter=flt):
        if suffixes:
            refs = batch.column("pixel_ref")
            mask = None
            for suffix in suffixes:
                m = pc.match_substring(refs, suffix, ignore_case=True)
                mask = m if mask is None else pc.or_(mask, m)
            batch = batch.filter(mask)
        for row in batch.to_pylist():
            if indexed.get(row["archive_uri"]) == (row.get("index_run") or "") and resolver.resolve(row["pixel_ref"]):
                return True
    return False


def read_needed_pixel_archives(dataset: Any, spec: Any, indexed: dict[str, str],
                               pixel_uris: Sequence[str]) -> tuple[set[str], Selection]:
    """The pixel archives that hold at least one selected instance, and selection counts.

    Header rows (newest index of their archive) are streamed in batches, projecting only the columns needed;
    the criteria run on each header's JSON. A selected header is located by its ``pixel_ref`` when that names
    a listed pixel archive, else by the manifest's pixel rows (a vectorised ``is_in`` on the UID).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from .selection.criteria import first_failure

    resolver = _ArchiveResolver(pixel_uris)
    needed: set[str] = set()
    unlocated: set[str] = set()
    sel = Selection()
    cols = _columns(dataset, ("archive_uri", "index_run", "sop_instance_uid", "header_json", "error", "pixel_ref"))
    pixel_set = set(pixel_uris)
    # Only the listed, indexed text archives: a plan per text prefix then parses only that prefix's headers.
    text_archives = sorted(u for u in indexed if u not in pixel_set)
    flt = (pads.field("kind") == "header") & pads.field("archive_uri").isin(pa.array(text_archives, pa.string()))
    for batch in dataset.to_batches(columns=cols, filter=flt):
        for row in batch.to_pylist():
            if indexed.get(row["archive_uri"]) != (row.get("index_run") or ""):
                continue  # an older index of this archive, or an archive whose index is unusable
            sel.header_rows += 1
            header = _parse_header(row.get("header_json"))
            if row.get("error") or header is None or not row.get("sop_instance_uid"):
                sel.invalid_headers += 1  # never reassembled, so its pixels are not needed
                continue
            if first_failure(spec, header) is not None:
                sel.filtered_out += 1
                continue
            sel.selected += 1
            ref = row.get("pixel_ref") or _header_pixel_ref(header)
            archive = resolver.resolve(ref) if ref else None
            if archive is not None:
                sel.located_by_ref += 1
                needed.add(archive)
            else:
                unlocated.add(row["sop_instance_uid"])
    if unlocated and any(u in pixel_set for u in indexed):
        wanted = pa.array(sorted(unlocated), type=pa.string())
        found: set[str] = set()
        cols = _columns(dataset, ("archive_uri", "index_run", "sop_instance_uid"))
        pixel_indexed = sorted(u for u in indexed if u in pixel_set)
        flt = (pads.field("kind") == "pixels") & pads.field("archive_uri").isin(pa.array(pixel_indexed, pa.string()))
        for batch in dataset.to_batches(columns=cols, filter=flt):
            hit = batch.filter(pc.is_in(batch.column("sop_instance_uid"), value_set=wanted))
            for row in hit.to_pylist():
                uri = row["archive_uri"]
                if uri in pixel_set and indexed.get(uri) == (row.get("index_run") or ""):
                    needed.add(uri)
                    found.add(row["sop_instance_uid"])
        sel.located_by_manifest = len(found)
        unlocated -= found
    sel.unlocated = len(unlocated)
    log.info("restore plan: %d headers, %d selected, %d filtered out, %d pixel archives needed, %d unlocated",
             sel.header_rows, sel.selected, sel.filtered_out, len(needed), sel.unlocated)
    return needed, sel


def _parse_header(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        header = json.loads(text)
    except ValueError:
        return None
    return header if isinstance(header, dict) else None


def _header_pixel_ref(header: dict[str, Any]) -> str | None:
    from .dicom.dicom_json import pixel_ref

    return pixel_ref(header)


class _ArchiveResolver:
    """Find the listed pixel archive a BulkDataURI names, if it names one."""

    def __init__(self, uris: Iterable[str]) -> None:
        self.uris = set(uris)
        by_name: dict[str, list[str]] = {}
        for u in self.uris:
            by_name.setdefault(io_uris.basename(u), []).append(u)
        self.by_name = {k: v[0] for k, v in by_name.items() if len(v) == 1}  # ambiguous names resolve to nothing

    def resolve(self, ref: str) -> str | None:
        """The archive URI, or None when the reference names no listed archive."""
        ref = ref.split("#", 1)[0].split("?", 1)[0]
        if ref.startswith("file://"):
            ref = ref[len("file://"):]
        parts = ref.split("/")
        for i in range(len(parts), 0, -1):
            cand = "/".join(parts[:i])
            if cand in self.uris:
                return cand
        for part in parts:
            if part in self.by_name:
                return self.by_name[part]
        return None


# ---------------------------------------------------------------------------------------------- requests


LEDGER_FIELDS = ("run_id", "uri", "role", "wave", "size", "storage_class", "tier", "days", "requested_at",
                 "outcome", "http_status", "error_code", "error_detail", "job_id")


def restore_ledger_schema() -> Any:
    """The restore ledger's Arrow schema."""
    import pyarrow as pa

    return pa.schema([
        ("run_id", pa.string()), ("uri", pa.string()), ("role", pa.string()), ("wave", pa.int32()),
        ("size", pa.int64()), ("storage_class", pa.string()), ("tier", pa.string()), ("days", pa.int32()),
        ("requested_at", pa.timestamp("us", tz="UTC")), ("outcome", pa.string()), ("http_status", pa.int32()),
        ("error_code", pa.string()), ("error_detail", pa.string()), ("job_id", pa.string()),
    ])


def write_restore_ledger(rows: list[dict[str, Any]], ledger_uri: str, run_id: str, part: int) -> str:
    """Append ``rows`` to the restore ledger as one new Parquet file; returns its URI."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{k: r.get(k) for k in LEDGER_FIELDS} for r in rows], schema=restore_ledger_schema())
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    uri = io_uris.join_uri(ledger_uri, f"restore-{run_id}-{part:05d}.parquet")
    writes.write_bytes(uri, buf.getvalue(), writes.WriteOptions(content_type="application/vnd.apache.parquet"))
    return uri


def read_restore_ledger(ledger_uri: str) -> Any:
    """The whole restore ledger as an Arrow table (small: one row per request)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(io.BytesIO(reads.read_bytes(o.uri)))
              for o in io_listing.list_objects(ledger_uri, (".parquet",))]
    if not tables:
        return restore_ledger_schema().empty_table()
    return pa.concat_tables(tables)


@dataclass
class RequestReport:
    """What a ``request_restores`` run did."""

    run_id: str
    outcomes: dict[str, int]
    bytes_requested: int
    ledger_files: list[str]
    error_codes: dict[str, int]


def _check_request_args(tier: str, days: int) -> None:
    if tier not in TIERS:
        raise ConfigError("bad_tier", f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
    if not isinstance(days, int) or days < 1:
        raise ConfigError("bad_days", f"days must be a whole number >= 1, got {days!r}")


def restore_one(client: Any, obj: PlannedObject, tier: str, days: int) -> dict[str, Any]:
    """Issue one RestoreObject and classify the answer; never raises for per-object problems."""
    from botocore.exceptions import BotoCoreError, ClientError

    row: dict[str, Any] = {"uri": obj.uri, "role": obj.role, "wave": obj.wave, "size": obj.size,
                           "storage_class": obj.storage_class, "tier": tier, "days": days,
                           "requested_at": datetime.now(timezone.utc)}
    if (obj.storage_class or "").upper() == "DEEP_ARCHIVE" and tier == "Expedited":
        return dict(row, outcome=OUTCOME_ERROR, error_code="tier_not_supported",
                    error_detail="Expedited retrieval is not available for DEEP_ARCHIVE")
    try:
        bucket, key = io_uris.split_s3(obj.uri)
        resp = client.restore_object(Bucket=bucket, Key=key,
                                     RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}})
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "")) or "ClientError"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "RestoreAlreadyInProgress":
            outcome = OUTCOME_IN_PROGRESS
        elif code == "InvalidObjectState":
            outcome = OUTCOME_NOT_ARCHIVED
        else:
            outcome = OUTCOME_ERROR
        return dict(row, outcome=outcome, http_status=status, error_code=code,
                    error_detail=str(err.get("Message", ""))[:_MAX_DETAIL])
    except (BotoCoreError, StorageError) as exc:
        return dict(row, outcome=OUTCOME_ERROR, error_code=type(exc).__name__, error_detail=str(exc)[:_MAX_DETAIL])
    status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    outcome = OUTCOME_ALREADY_RESTORED if status == 200 else OUTCOME_REQUESTED
    return dict(row, outcome=outcome, http_status=status)


def request_restores(objects: RestorePlan | Iterable[PlannedObject], tier: str = "Bulk", days: int = 7,
                     rate: float = DEFAULT_RATE, ledger_uri: str | None = None, *, include_unknown: bool = True,
                     wave: int | None = None, workers: int = DEFAULT_WORKERS, settings: clients.S3Settings | None = None,
                     bucket: TokenBucket | None = None, run_id: str | None = None,
                     flush_rows: int = _LEDGER_FLUSH_ROWS) -> RequestReport:
    """Issue RestoreObject for each object (headers first), rate-limited, and record each in the ledger.

    In progress (409) and already restored (200) are outcomes, not errors, so a re-run is harmless. Every
    per-object failure becomes a ledger row with its error code; nothing here raises for one object.
    """
    _check_request_args(tier, days)
    if isinstance(objects, RestorePlan):
        todo = objects.to_restore(include_unknown, wave)
    else:
        todo = sorted((o for o in objects if wave is None or o.wave == wave), key=lambda o: (o.wave, o.uri))
    run_id = run_id or new_run_id()
    limiter = bucket or TokenBucket(rate)
    client = clients.s3_client(settings)

    def one(obj: PlannedObject) -> dict[str, Any]:
        limiter.acquire()
        return restore_one(client, obj, tier, days)

    outcomes: dict[str, int] = {}
    codes: dict[str, int] = {}
    files: list[str] = []
    pending: list[dict[str, Any]] = []
    requested_bytes = 0
    chunk = max(1, min(flush_rows, 10_000))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="restore") as pool:
        for start in range(0, len(todo), chunk):
            for row in pool.map(one, todo[start:start + chunk]):
                row["run_id"] = run_id
                outcomes[row["outcome"]] = outcomes.get(row["outcome"], 0) + 1
                if row["outcome"] == OUTCOME_REQUESTED:
                    requested_bytes += row["size"]
                if row.get("error_code") and row["outcome"] == OUTCOME_ERROR:
                    codes[row["error_code"]] = codes.get(row["error_code"], 0) + 1
                pending.append(row)
            if ledger_uri and len(pending) >= flush_rows:
                files.append(write_restore_ledger(pending, ledger_uri, run_id, len(files)))
                pending = []
    if ledger_uri and pending:
        files.append(write_restore_ledger(pending, ledger_uri, run_id, len(files)))
    log.info("restore run %s: %s", run_id, ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())) or "nothing")
    return RequestReport(run_id, outcomes, requested_bytes, files, codes)


def new_run_id() -> str:
    """A run id that sorts by time and is unique."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


# ------------------------------------------------------------------------------------------------ status


@dataclass(frozen=True)
class ObjectStatus:
    """The restore status of one object."""

    uri: str
    size: int
    wave: int
    state: str
    expiry: datetime | None = None
    storage_class: str | None = None
    error: str | None = None


def parse_restore_header(value: str | None) -> tuple[bool | None, datetime | None]:
    """Parse S3's ``x-amz-restore`` header into (ongoing, expiry).

    ``ongoing-request="true"`` -> (True, None); ``ongoing-request="false", expiry-date="Fri, 21 Dec 2012
    00:00:00 GMT"`` -> (False, that datetime); no header -> (None, None).
    """
    if not value:
        return None, None
    fields: dict[str, str] = {}
    rest = value
    while rest:
        name, sep, rest = rest.partition("=")
        if not sep:
            break
        rest = rest.lstrip()
        if rest.startswith('"'):
            val, _, rest = rest[1:].partition('"')
        else:
            val, _, rest = rest.partition(",")
        fields[name.strip().strip(",").strip().lower()] = val
        rest = rest.lstrip().lstrip(",")
    ongoing_text = fields.get("ongoing-request", "").lower()
    ongoing = True if ongoing_text == "true" else False if ongoing_text == "false" else None
    expiry = None
    if fields.get("expiry-date"):
        try:
            expiry = parsedate_to_datetime(fields["expiry-date"])
        except (TypeError, ValueError):
            expiry = None
    return ongoing, expiry


def status_one(client: Any, obj: PlannedObject) -> ObjectStatus:
    """HEAD one object and read its Restore header; never raises for per-object problems."""
    from botocore.exceptions import BotoCoreError, ClientError

    if not io_uris.is_s3(obj.uri) or (obj.storage_class is not None and not is_archived(obj.storage_class)):
        return ObjectStatus(obj.uri, obj.size, obj.wave, STATUS_NOT_NEEDED, storage_class=obj.storage_class)
    try:
        bucket, key = io_uris.split_s3(obj.uri)
        r = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "")) or "ClientError"
        state = STATUS_MISSING if code in ("404", "NoSuchKey", "NotFound") else STATUS_ERROR
        return ObjectStatus(obj.uri, obj.size, obj.wave, state, storage_class=obj.storage_class, error=code)
    except (BotoCoreError, StorageError) as exc:
        return ObjectStatus(obj.uri, obj.size, obj.wave, STATUS_ERROR, storage_class=obj.storage_class,
                            error=type(exc).__name__)
    sc = r.get("StorageClass") or "STANDARD"
    if not is_archived(sc):
        return ObjectStatus(obj.uri, obj.size, obj.wave, STATUS_NOT_NEEDED, storage_class=sc)
    ongoing, expiry = parse_restore_header(r.get("Restore"))
    if ongoing is True:
        state = STATUS_PENDING
    elif ongoing is False:
        state = STATUS_RESTORED
    else:
        state = STATUS_NOT_REQUESTED
    return ObjectStatus(obj.uri, obj.size, obj.wave, state, expiry, sc)


@dataclass
class StatusReport:
    """Restore status of a set of objects, with per-state counts and bytes."""

    objects: list[ObjectStatus]

    def summary(self) -> dict[str, Any]:
        """Counts and bytes per state and per wave, and the earliest expiry of the restored copies."""
        states: dict[str, dict[str, int]] = {}
        waves: dict[str, dict[str, int]] = {}
        for s in self.objects:
            d = states.setdefault(s.state, {"count": 0, "bytes": 0})
            d["count"] += 1
            d["bytes"] += s.size
            w = waves.setdefault(str(s.wave), {})
            w[s.state] = w.get(s.state, 0) + 1
        expiries = [s.expiry for s in self.objects if s.expiry is not None]
        return {
            "objects": len(self.objects),
            "states": states,
            "waves": waves,
            "earliest_expiry": min(expiries).isoformat() if expiries else None,
            "complete": all(s.state in (STATUS_RESTORED, STATUS_NOT_NEEDED) for s in self.objects),
        }


def restore_status(objects: RestorePlan | Iterable[PlannedObject], *, include_unknown: bool = True,
                   settings: clients.S3Settings | None = None, workers: int = DEFAULT_WORKERS,
                   progress: bool = False) -> StatusReport:
    """HEAD every object to be restored and report pending, restored (with expiry) and not needed.

    ``progress`` shows a tqdm bar on stderr (CLI use).
    """
    if isinstance(objects, RestorePlan):
        todo = [o for o in objects.objects if o.state in (STATE_RESTORE, STATE_AVAILABLE)
                or (include_unknown and o.state == STATE_UNKNOWN)]
    else:
        todo = list(objects)
    todo.sort(key=lambda o: (o.wave, o.uri))
    client = clients.s3_client(settings)
    from tqdm import tqdm

    out: list[ObjectStatus] = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="restore-status") as pool, \
            tqdm(total=len(todo), unit="obj", file=sys.stderr, disable=not progress, desc="restore status") as bar:
        for st in pool.map(lambda o: status_one(client, o), todo):
            out.append(st)
            bar.update(1)
    return StatusReport(out)


# ------------------------------------------------------------------------------------ Batch Operations


@dataclass(frozen=True)
class BatchManifest:
    """A written S3 Batch Operations manifest."""

    uri: str
    etag: str | None
    count: int


def batch_manifest_lines(uris: Iterable[str]) -> Iterator[str]:
    """``bucket,key`` CSV lines with URL-encoded keys (what S3BatchOperations_CSV_20180820 expects)."""
    for uri in uris:
        if not io_uris.is_s3(uri):
            raise ConfigError("batch_needs_s3", "S3 Batch Operations only act on s3:// objects", uri=uri)
        bucket, key = io_uris.split_s3(uri)
        # Encode everything (commas, spaces, '+', non-ASCII): the manifest is CSV and S3 URL-decodes the key.
        yield f"{bucket},{quote(key, safe='')}\n"


def write_batch_manifest(uris: Iterable[str], out_uri: str) -> BatchManifest:
    """Write the CSV manifest (no header row) and return its URI and ETag (needed by CreateJob)."""
    text = "".join(batch_manifest_lines(uris))
    count = text.count("\n")
    writes.write_bytes(out_uri, text.encode("utf-8"), writes.WriteOptions(content_type="text/csv"))
    info = io_listing.head(out_uri)
    etag = info.etag if info is not None and io_uris.is_s3(out_uri) else None
    return BatchManifest(out_uri, etag, count)


@dataclass(frozen=True)
class RestoreConfig:
    """Account settings for Batch Operations jobs (from ``--config``)."""

    account_id: str | None = None
    role_arn: str | None = None
    report_bucket: str | None = None
    report_prefix: str = "restore-reports"
    report_scope: str = "AllTasks"
    partition: str = "aws"
    region: str | None = None
    priority: int = 10


def read_restore_config(path: str | None) -> RestoreConfig:
    """Read the ``restore`` section (or the top level) of a JSON config file."""
    if not path:
        return RestoreConfig()
    from .config import MAX_CONFIG_BYTES
    from .io.json_document import DocumentTooDeep, DocumentTooLarge, loads_document, read_document_bytes

    try:
        raw = loads_document(read_document_bytes(path, MAX_CONFIG_BYTES).decode())
    except DocumentTooLarge as exc:
        raise ConfigError("config_too_large", str(exc), uri=path) from None
    except DocumentTooDeep as exc:
        raise ConfigError("config_too_deep", str(exc), uri=path) from None
    except ValueError as exc:
        raise ConfigError("bad_config", f"not JSON ({exc})", uri=path) from None
    except NotFoundError:
        raise ConfigError("config_not_found", "no such config file", uri=path) from None
    if not isinstance(raw, dict):
        raise ConfigError("bad_config", "the config must be a JSON object", uri=path)
    section = raw.get("restore", raw)
    known = set(RestoreConfig.__dataclass_fields__)
    values = {k: v for k, v in section.items() if k in known}
    return RestoreConfig(**values)


def _bucket_arn(bucket: str, partition: str) -> str:
    return bucket if bucket.startswith("arn:") else f"arn:{partition}:s3:::{bucket}"


def build_batch_restore_job(config: RestoreConfig, manifest: BatchManifest, *, tier: str = "Bulk", days: int = 7,
                            description: str = "dicom-reassembly restore") -> dict[str, Any]:
    """The s3control CreateJob request for an S3InitiateRestoreObject job over ``manifest``.

    The ClientRequestToken derives from the manifest and parameters, so submitting twice creates one job.
    """
    _check_request_args(tier, days)
    if tier == "Expedited":
        raise ConfigError("bad_tier", "S3 Batch Operations restore supports Bulk and Standard, not Expedited")
    missing = [k for k in ("account_id", "role_arn", "report_bucket") if not getattr(config, k)]
    if missing:
        raise ConfigError("batch_config_missing", f"--config must give {', '.join(missing)} for a Batch Operations job")
    if not manifest.etag:
        raise ConfigError("batch_manifest_etag", "the manifest must be on S3 with an ETag", uri=manifest.uri)
    bucket, key = io_uris.split_s3(manifest.uri)
    token_src = f"{manifest.uri}|{manifest.etag}|{tier}|{days}|{config.account_id}"
    return {
        "AccountId": str(config.account_id),
        "ConfirmationRequired": False,
        "Operation": {"S3InitiateRestoreObject": {"ExpirationInDays": days, "GlacierJobTier": tier.upper()}},
        "Report": {
            "Bucket": _bucket_arn(str(config.report_bucket), config.partition),
            "Format": "Report_CSV_20180820",
            "Enabled": True,
            "Prefix": config.report_prefix,
            "ReportScope": config.report_scope,
        },
        "ClientRequestToken": hashlib.sha256(token_src.encode()).hexdigest()[:64],
        "Manifest": {
            "Spec": {"Format": "S3BatchOperations_CSV_20180820", "Fields": ["Bucket", "Key"]},
            "Location": {"ObjectArn": f"arn:{config.partition}:s3:::{bucket}/{key}", "ETag": manifest.etag},
        },
        "Description": f"{description} ({manifest.count} objects, {tier}, {days} days)"[:256],
        "Priority": int(config.priority),
        "RoleArn": str(config.role_arn),
    }


def submit_batch_job(client: Any, request: dict[str, Any]) -> str:
    """Create the Batch Operations job; returns its JobId."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        resp = client.create_job(**request)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "")) or "ClientError"
        log.error("CreateJob failed for account %s: %s", request.get("AccountId"), code)
        raise StorageError("batch_create_failed", code) from exc
    except BotoCoreError as exc:
        raise StorageError("s3control_unreachable", type(exc).__name__) from exc
    return str(resp["JobId"])


# ---------------------------------------------------------------------------------------------------- CLI


def add_restore_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``restore plan|request|status``; the handler is ``args.func`` (returns an exit code)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--text", required=True, help="prefix of the text (header) archives")
    common.add_argument("--images", required=True, help="prefix of the image (pixel) archives")
    common.add_argument("--manifest", help="manifest dataset (Parquet) from build_manifest")
    common.add_argument("--criteria", help="criteria file (JSON); needs --manifest to select archives")
    common.add_argument("--evaluate-all", action="store_true",
                        help="parse every header even when no pixel archive can be located (slow at scale)")
    common.add_argument("--exclude-unknown", action="store_true",
                        help="do not restore pixel archives that cannot be proven unneeded")
    common.add_argument("--wave", type=int, choices=(WAVE_HEADERS, WAVE_PIXELS),
                        help="only this wave (1 headers, 2 pixels); default both, headers first")
    common.add_argument("--suffix", action="append", dest="suffixes", metavar="SUFFIX",
                        help="archive key ending (repeatable; default .tar; '' for every object)")
    common.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="concurrent S3 requests")
    common.add_argument("--config", help="JSON config with account_id, role_arn, report_bucket (Batch Operations)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = subparsers.add_parser("restore", help="plan, request and track Glacier restores")
    sub = p.add_subparsers(dest="restore_command", required=True, metavar="plan|request|status")
    sub.add_parser("plan", parents=[common], help="list the archives and what must be restored, per wave")
    req = sub.add_parser("request", parents=[common], help="issue RestoreObject (or a Batch Operations job)")
    req.add_argument("--tier", choices=TIERS, default="Bulk")
    req.add_argument("--days", type=int, default=7, help="days the restored copy stays (default 7)")
    req.add_argument("--rate", type=float, default=DEFAULT_RATE,
                     help=f"RestoreObject requests per second (default {DEFAULT_RATE:g})")
    req.add_argument("--ledger", help="restore ledger dataset (Parquet), appended to; required for API requests")
    req.add_argument("--batch-manifest", help="write an S3 Batch Operations CSV manifest here and use a job")
    req.add_argument("--batch-threshold", type=int, default=DEFAULT_BATCH_THRESHOLD,
                     help="use Batch Operations from this many objects (default %(default)s)")
    req.add_argument("--create-job", action="store_true", help="create the Batch Operations job (else print it)")
    status = sub.add_parser("status", parents=[common], help="read each object's Restore header")
    status.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=handle_restore)
    return p


def handle_restore(args: argparse.Namespace) -> int:
    """Run a ``restore`` subcommand. Errors reach the CLI, which prints one line."""
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.criteria and not args.manifest:
        raise ConfigError("criteria_needs_manifest", "--criteria selects archives through --manifest; give both")
    if args.restore_command == "request":  # fail before listing millions of keys
        _check_request_args(args.tier, args.days)
        if not args.ledger and not args.batch_manifest:
            raise ConfigError("ledger_required", "--ledger URI is required: every restore request is recorded")
    spec = _as_spec(args.criteria)
    settings = getattr(spec, "s3", None)
    suffixes = tuple(s for s in args.suffixes if s) if args.suffixes else (".tar",)
    plan = plan_restore(args.text, args.images, args.manifest, spec, suffixes=suffixes,
                        always_evaluate=args.evaluate_all, access=getattr(spec, "access", None))
    include_unknown = not args.exclude_unknown
    if args.restore_command == "plan":
        summary = plan.summary(include_unknown)
        print(json.dumps(summary, indent=2, default=str) if args.json else format_plan(summary))
        return 0
    if args.restore_command == "status":
        objs = [o for o in plan.objects if args.wave is None or o.wave == args.wave]
        report = restore_status(RestorePlan(objs, plan.selection, plan.notes), include_unknown=include_unknown,
                                settings=settings, workers=args.workers, progress=not args.no_progress)
        summary = report.summary()
        print(json.dumps(summary, indent=2, default=str) if args.json else format_status(summary))
        return 0
    return _run_request(args, plan, include_unknown, settings)


def _run_request(args: argparse.Namespace, plan: RestorePlan, include_unknown: bool,
                 settings: clients.S3Settings | None) -> int:
    _check_request_args(args.tier, args.days)
    todo = plan.to_restore(include_unknown, args.wave)
    if not todo:
        print("nothing to restore")
        return 0
    if args.batch_manifest or len(todo) >= args.batch_threshold:
        if not args.batch_manifest:
            raise ConfigError("batch_manifest_required", f"{len(todo)} objects reach --batch-threshold "
                                                         f"{args.batch_threshold}: give --batch-manifest s3://...")
        config = read_restore_config(args.config)
        manifest = write_batch_manifest((o.uri for o in todo), args.batch_manifest)
        request = build_batch_restore_job(config, manifest, tier=args.tier, days=args.days)
        job_id = None
        if args.create_job:
            import boto3

            job_id = submit_batch_job(boto3.client("s3control", region_name=config.region), request)
        if args.ledger:
            now = datetime.now(timezone.utc)
            run_id = new_run_id()
            rows = [{"run_id": run_id, "uri": o.uri, "role": o.role, "wave": o.wave, "size": o.size,
                     "storage_class": o.storage_class, "tier": args.tier, "days": args.days, "requested_at": now,
                     "outcome": OUTCOME_BATCH, "job_id": job_id} for o in todo]
            if rows:
                write_restore_ledger(rows, args.ledger, run_id, 0)
        out = {"batch_manifest": asdict(manifest), "job_id": job_id, "create_job_request": request}
        print(json.dumps(out, indent=2, default=str))
        return 0
    if not args.ledger:
        raise ConfigError("ledger_required", "--ledger URI is required: every restore request is recorded")
    report = request_restores(todo, args.tier, args.days, args.rate, args.ledger, workers=args.workers,
                              settings=settings)
    summary = asdict(report)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(f"restore run {report.run_id}: {len(todo)} objects, tier {args.tier}, {args.days} days")
        for k, v in sorted(report.outcomes.items()):
            print(f"  {k:<18} {v:>10}")
        for k, v in sorted(report.error_codes.items()):
            print(f"  error {k:<12} {v:>10}")
    if report.error_codes:
        print(f"dicom-reassembly restore: {sum(report.error_codes.values())} requests failed; see the ledger "
              f"{args.ledger} and re-run (idempotent)", file=sys.stderr)
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} PB"


def format_plan(summary: dict[str, Any]) -> str:
    """A plan summary as a small text table."""
    lines = [f"{'wave':<6}{'state':<12}{'archives':>12}{'bytes':>14}"]
    for wave, states in sorted(summary["waves"].items()):
        for state, d in states.items():
            if d["count"]:
                lines.append(f"{wave:<6}{state:<12}{d['count']:>12,}{_human(d['bytes']):>14}")
    t = summary["to_restore"]
    lines.append(f"to restore: {t['count']:,} archives, {_human(t['bytes'])}"
                 f"{'' if t['include_unknown'] else ' (unknown excluded)'}")
    if "selection" in summary and summary["selection"]["evaluated"]:
        s = summary["selection"]
        lines.append(f"selection: {s['selected']:,} selected, {s['filtered_out']:,} filtered out, "
                     f"{s['invalid_headers']:,} invalid headers, {s['unlocated']:,} without a known pixel archive")
    lines.extend(f"note: {n}" for n in summary.get("notes", []))
    return "\n".join(lines)


def format_status(summary: dict[str, Any]) -> str:
    """A status summary as a small text table."""
    lines = [f"{'state':<15}{'objects':>12}{'bytes':>14}"]
    for state, d in sorted(summary["states"].items()):
        lines.append(f"{state:<15}{d['count']:>12,}{_human(d['bytes']):>14}")
    if summary.get("earliest_expiry"):
        lines.append(f"earliest expiry of a restored copy: {summary['earliest_expiry']}")
    lines.append("all restored" if summary["complete"] else "not complete")
    return "\n".join(lines)
