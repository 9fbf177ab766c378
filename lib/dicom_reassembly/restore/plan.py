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

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..io import arrow_io, clients
from ..io import listing as io_listing
from ..io import uris as io_uris

log = logging.getLogger(__name__)
ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")
WAVE_HEADERS = 1
WAVE_PIXELS = 2
# Plan states: what happens to a listed archive.
STATE_RESTORE = "restore"  # needed, in an archive class: restore it
STATE_UNKNOWN = "unknown"  # cannot be proven unneeded, in an archive class: restored unless excluded
STATE_AVAILABLE = "available"  # needed (or unknown) but readable already: no restore
STATE_NOT_NEEDED = "not_needed"  # proven unneeded (no selected instance, or headers already in the manifest)
PLAN_STATES = (STATE_RESTORE, STATE_UNKNOWN, STATE_AVAILABLE, STATE_NOT_NEEDED)


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
    spec = criteria_spec(criteria)
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


def criteria_spec(criteria: Any) -> Any:
    if criteria is None or not isinstance(criteria, str):
        return criteria
    from ..selection.spec import load_criteria

    return load_criteria(criteria)


def _columns(dataset: Any, wanted: Sequence[str]) -> list[str]:
    names = set(dataset.schema.names)
    return [c for c in wanted if c in names]


def read_indexed_archives(dataset: Any, listing: dict[str, io_listing.ObjectInfo]) -> dict[str, str]:
    """Archives whose newest index is usable: ``{archive_uri: index_run}``.

    Only archive-level rows are read (one per archive and run). An index is not usable when the archive changed
    since (size or ETag differ from the listing) or when it failed for a retryable reason (e.g. not restored).
    """
    from ..manifest.index import RETRYABLE_ARCHIVE_ERRORS

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

    from ..selection.criteria import first_failure

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
    from ..dicom.dicom_json import pixel_ref

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
