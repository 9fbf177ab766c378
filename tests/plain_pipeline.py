"""The two Spark jobs as plain Python, for property tests, and the invariants every run must keep.

``run_plain`` chains the library's own stages exactly as ``reassembly.run``
does in Spark: ``manifest.index.index_archive`` per listed archive, the grouping of
``with_members_by_uid`` (members with an ``invalid_uid`` stay out, a null UID
joins nothing), the JVM fast path or ``plan_instance`` of
``with_instance_plan``, the rows of ``with_manifest_damage``, work items sorted
by (pixel_archive, pixel_offset) with ``with_archive_locality``'s per-archive
totals, and ``reassemble_partition``. tests/test_properties.py proves it gives
the Spark jobs' ledger on the same deliveries.

Each ``*_problems`` function returns what breaks one invariant, as lines; an
empty list means it holds.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from helpers import dcmftest_ok

from dicom_reassembly.config import Config
from dicom_reassembly.manifest import index, listing
from dicom_reassembly.reassembly.executor import reassemble_partition
from dicom_reassembly.reassembly.plan import PENDING, PLAN_NAMES, plan_instance
from dicom_reassembly.reassembly.run import ReassembleRun
from dicom_reassembly.reassembly.transforms import HEADER_COLUMNS, MEMBER_COLUMNS
from dicom_reassembly.records.ledger import LEDGER_NAMES, row_dict

NOW = datetime(2026, 1, 2, tzinfo=timezone.utc)
RUN_ID = "plain"
# Statuses of an object that is in place after the run.
WRITTEN = ("written", "skipped_existing")
# Outcomes that mean an exception reached a catch-all, not a rule: the run "raised".
FAULT_ERRORS = ("index_error", "read_error")
FAULT_TEXT = re.compile(r"RecursionError|MemoryError|OverflowError|ZeroDivisionError|Traceback")


@dataclass
class PlainRun:
    manifest: list[dict[str, Any]]
    plan: list[dict[str, Any]]
    ledger: list[dict[str, Any]]
    warned: list[str]  # warnings that escaped the run (onto a user's stderr)


def build_manifest_rows(root: str, cfg: Config) -> list[dict[str, Any]]:
    """jobs/build_manifest.py: list both prefixes, index every archive."""
    archives = listing.list_archives(os.path.join(root, "text"), os.path.join(root, "images"), cfg.archive_suffixes)
    return [dict(zip(index.FIELD_NAMES, row)) for a in archives for row in index.index_archive(a, "run-1", NOW, cfg.coalesce_gap)]


def members_by_uid(manifest: list[dict[str, Any]]) -> list[tuple[str | None, list[dict], list[dict]]]:
    """with_members_by_uid: (uid, header structs, pixel structs), a full outer join on the UID."""
    headers: dict[Any, list[dict]] = defaultdict(list)
    pixels: dict[Any, list[dict]] = defaultdict(list)
    for r in manifest:
        if r["kind"] not in ("header", "pixels") or r["error"] == "invalid_uid":
            continue
        if r["kind"] == "header":
            headers[r["sop_instance_uid"]].append({c: r[c] for c in HEADER_COLUMNS})
        else:
            pixels[r["sop_instance_uid"]].append({c: r[c] for c in MEMBER_COLUMNS})
    out = [(uid, hs, pixels.get(uid, []) if uid is not None else []) for uid, hs in headers.items()]
    # A null key matches nothing in a join: null-UID pixels stay a row of their own.
    out += [(uid, [], ps) for uid, ps in pixels.items() if uid is None or uid not in headers]
    return out


def plan_rows(by_uid: list[tuple[str | None, list[dict], list[dict]]]) -> list[dict[str, Any]]:
    """with_instance_plan without a selection: the JVM's fast path for one clean pair, else plan_instance."""
    out = []
    for uid, hs, ps in by_uid:
        if len(hs) == 1 and len(ps) == 1 and hs[0]["error"] is None and ps[0]["error"] is None:
            h, p = hs[0], ps[0]
            out.append({"sop_instance_uid": uid, "status": PENDING, "reason": None, "header_archive": h["archive_uri"],
                        "header_member": h["member_name"], "header_json": h["header_json"],
                        "pixel_archive": p["archive_uri"], "pixel_archive_size": p["archive_size"],
                        "pixel_member": p["member_name"], "pixel_offset": p["data_offset"], "pixel_size": p["size"],
                        "dup_pixels": None, "study_instance_uid": h["study_instance_uid"],
                        "series_instance_uid": h["series_instance_uid"], "modality": h["modality"]})
        else:
            out += [dict(zip(PLAN_NAMES, t)) for t in plan_instance(uid, hs, ps)]
    return out


def manifest_damage(manifest: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """with_manifest_damage: damaged archives, odd members and bad UIDs as ledger-shaped rows."""
    out = []
    for r in manifest:
        damaged = ((r["kind"] == "archive" and r["error"] is not None) or r["kind"] == "other"
                   or (r["kind"] in ("header", "pixels") and r["error"] == "invalid_uid"))
        if not damaged:
            continue
        header_side = r["kind"] == "header" or (r["kind"] != "pixels" and r["archive_role"] == "text")
        if r["kind"] == "archive":
            status = "not_restored" if r["error"] == "not_restored" else "unreadable_archive"
        else:
            status = "invalid_header" if header_side else "invalid_pixels"
        side = "header" if header_side else "pixel"
        out.append({"sop_instance_uid": r["sop_instance_uid"], "status": status,
                    "reason": ": ".join(v for v in (r["error"], r["error_detail"]) if v is not None),
                    f"{side}_archive": r["archive_uri"], f"{side}_member": r["member_name"]})
    return out


def _ledger(row: dict[str, Any]) -> dict[str, Any]:
    """with_ledger_columns: the ledger's columns, the others dropped, missing ones null."""
    return {n: RUN_ID if n == "run_id" else NOW if n == "finished_at" else row.get(n) for n in LEDGER_NAMES}


def work_items(plan: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """with_archive_locality: pending rows by (pixel_archive, pixel_offset), with each archive's totals."""
    pending = [dict(r) for r in plan if r["status"] == PENDING]
    wanted: Counter[str] = Counter()
    end: dict[str, int] = {}
    for r in pending:
        wanted[r["pixel_archive"]] += r["pixel_size"]
        end[r["pixel_archive"]] = max(end.get(r["pixel_archive"], 0), r["pixel_offset"] + r["pixel_size"])
    for r in pending:
        r.update(archive_wanted=wanted[r["pixel_archive"]], archive_end=end[r["pixel_archive"]])
    return sorted(pending, key=lambda r: (r["pixel_archive"], r["pixel_offset"]))


def run_plain(root: str, out: str, key_template: str | None = None) -> PlainRun:
    """Both jobs on the delivery under ``root`` with the default configuration; objects go to ``out``.

    ``key_template`` goes to the executors as it is, as if it had slipped past
    ``check_key_template``: the write itself must still never replace another instance.
    """
    cfg = Config(upload_threads=2)
    task = ReassembleRun(spark=None, manifest_uri="", out=out, ledger_uri="", runs_uri="", computations_uri="",
                         cfg=cfg).task_settings(RUN_ID)
    if key_template is not None:
        task = replace(task, writes=replace(task.writes, key_template=key_template))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = build_manifest_rows(root, cfg)
        plan = plan_rows(members_by_uid(manifest))
        written = [row_dict(t) for t in reassemble_partition(work_items(plan), task)]
    ledger = [_ledger(r) for r in plan if r["status"] != PENDING] + [_ledger(r) for r in manifest_damage(manifest)]
    # User warnings are what pydicom says about the data: the issue wants them in reasons, not on stderr.
    warned = [f"{w.category.__name__}: {str(w.message)[:200]}" for w in caught if issubclass(w.category, UserWarning)]
    return PlainRun(manifest, plan, ledger + written, warned)


# ---------------------------------------------------------------- invariants


def fault_problems(run: PlainRun) -> list[str]:
    """The run never raises: no catch-all outcome (index_error, read_error, failed) and no fault in a reason."""
    out = [f"manifest {r['error']} for {r['member_name'] or r['archive_uri']}: {r['error_detail']}"
           for r in run.manifest if r["error"] in FAULT_ERRORS or FAULT_TEXT.search(r["error_detail"] or "")]
    out += [f"ledger {r['status']} for {r['sop_instance_uid']}: {r['reason']}"
            for r in run.ledger if r["status"] == "failed" or FAULT_TEXT.search(r["reason"] or "")]
    return out


def unaccounted_members(manifest: list[dict[str, Any]], ledger: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """with_unaccounted_members: manifest members (kind != archive) that no ledger row names."""
    members = {(r["archive_uri"], r["member_name"]) for r in manifest if r["kind"] != "archive"}
    named = {(r[f"{s}_archive"], r[f"{s}_member"]) for r in ledger for s in ("header", "pixel")
             if r[f"{s}_member"] is not None}
    return members - named


def key_problems(ledger: list[dict[str, Any]]) -> list[str]:
    """No two instances share a key: one output_uri per written row."""
    uris = Counter(r["output_uri"] for r in ledger if r["status"] in WRITTEN and r["output_uri"])
    return [f"{n} written rows share {uri}" for uri, n in uris.items() if n > 1]


def decoded(path: str) -> Any:
    """The file's dataset and its pixels as stored (no colour conversion)."""
    from pydicom import dcmread

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path)
        ds.pixel_array_options(as_rgb=False)
        return ds, ds.pixel_array


def written_problems(ledger: list[dict[str, Any]]) -> list[str]:
    """Every written object passes dcmftest, holds its row's UID, decodes, and its array fits its header."""
    out = []
    for r in ledger:
        if r["status"] not in WRITTEN or not r["output_uri"]:
            continue
        path, uid = r["output_uri"], r["sop_instance_uid"]
        if not os.path.isfile(path):
            out.append(f"{uid}: {path} is missing")
            continue
        if not dcmftest_ok(path):
            out.append(f"{uid}: dcmftest refuses {path}")
            continue
        try:
            ds, arr = decoded(path)
        except Exception as exc:  # any failure to read or decode is the finding
            out.append(f"{uid}: does not decode: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        if str(ds.SOPInstanceUID) != uid:
            out.append(f"{uid}: {path} holds SOPInstanceUID {ds.SOPInstanceUID}")
        frames = int(ds.get("NumberOfFrames") or 1)
        shape = ((frames,) if frames > 1 else ()) + (int(ds.Rows), int(ds.Columns)) + (
            (int(ds.SamplesPerPixel),) if int(ds.SamplesPerPixel) > 1 else ())
        if arr.shape != shape:
            out.append(f"{uid}: decoded shape {arr.shape}, header says {shape}")
    return out
