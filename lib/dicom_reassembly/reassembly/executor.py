"""The executor side of a run: work items sorted by (pixel archive, offset) in, ledger rows out.

Each archive is read in one forward pass (``reads``); each instance is assembled, written by a bounded thread
pool (``writes``) and, when asked, forwarded by STOW-RS (``forward``). A failure costs one instance, never
the task.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from ..dicom.header_rules import MAX_HEADER_BYTES
from ..dicom.part10 import Part10, assemble
from ..errors import ReassemblyError
from ..io import reads, uris
from ..io.clients import ArchiveAccess
from ..records.ledger import ledger_row
from ..stow.settings import StowAuth, StowSettings
from .forward import StowForward
from .reads import Payload, ReadTuning, read_archive_members
from .writes import WritePolicy, WriterPool, output_key, write_once

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSettings:
    """What one reassembly task needs, small and picklable, in parts: each helper is handed only its own.

    ``access`` holds the input credentials for the partner's bucket only (``input_s3_parameters``); ``stow_auth``
    is read on the driver, since executors on YARN do not inherit its environment.
    """

    run_id: str
    writes: WritePolicy
    reads: ReadTuning = ReadTuning()
    access: ArchiveAccess | None = None
    max_header_bytes: int = MAX_HEADER_BYTES
    stow: StowSettings | None = None
    stow_auth: StowAuth | None = None


def _put(item: dict[str, Any], obj: Part10, payload: Payload, run_id: str, policy: WritePolicy, pool: WriterPool,
         forward: StowForward | None) -> list[tuple]:
    """Write one object (or skip it when it already exists) and return its ledger row.

    Create-exclusive (see ``writes.write_once``): on S3 a conditional PUT, so a first run costs one request per
    instance. ``skip_existing`` false replaces an object of the same instance, never another instance's.
    """
    common = _ledger_values(item)
    try:
        reason = None
        if policy.out:
            uri = uris.join_uri(policy.out, output_key(policy.key_template, item))
            outcome = write_once(uri, obj, replace_same_instance=not policy.skip_existing,
                                 existing_check=policy.existing_check, options=policy.write_options,
                                 before_write=pool.before_write)
            status, reason = outcome.status, outcome.reason
            if status == "conflict":  # nothing of ours is at the key: the reason names it and what holds it
                return [ledger_row(run_id, status, reason, **common)]
            common.update(output_uri=uri, output_bytes=obj.size, output_checksum=f"sha256:{obj.sha256}")
        else:
            status = "written"
            common.update(output_bytes=obj.size, output_checksum=f"sha256:{obj.sha256}")
        common["transfer_syntax"] = obj.transfer_syntax
        # What was accepted as the source had it (e.g. J2K precision other than BitsStored) stays on record.
        notes = "; ".join([*obj.notes, *([reason] if reason else [])]) or None
        row = ledger_row(run_id, status, notes, **common)
        if forward is not None:
            forward.add(item["sop_instance_uid"], obj, row)
            return []
        return [row]
    except ReassemblyError as exc:
        log.warning("write failed for %s: %s", item["sop_instance_uid"], exc.reason)
        return [ledger_row(run_id, "failed", exc.one_line(), **common)]
    except Exception as exc:  # a disk error or an SDK fault costs this instance, not the task
        log.warning("write failed for %s: %s", item["sop_instance_uid"], type(exc).__name__)
        return [ledger_row(run_id, "failed", f"{type(exc).__name__}: {str(exc)[:200]}", **common)]
    finally:
        obj.parts = []  # drop views of the member before its buffer is released (STOW keeps its own copy)
        payload.close()


def _ledger_values(item: dict[str, Any]) -> dict[str, Any]:
    return {k: item.get(k) for k in ("sop_instance_uid", "header_archive", "header_member", "pixel_archive",
                                     "pixel_member", "study_instance_uid", "series_instance_uid")}


def _copies(item: dict[str, Any]) -> list[dict[str, Any]]:
    if not item.get("dup_pixels"):
        return []
    return [dict(zip(("archive", "member", "offset", "size"), d)) for d in json.loads(item["dup_pixels"])]


def _outcome_rows(run_id: str, item: dict[str, Any], status: str, reason: str) -> Iterator[tuple]:
    """The instance's row, and one per extra pixel copy, so every member stays accounted for."""
    yield ledger_row(run_id, status, reason, **_ledger_values(item))
    for c in _copies(item):
        yield ledger_row(run_id, status, f"copy of {item['pixel_archive']}:{item['pixel_member']}: {reason}",
                         sop_instance_uid=item["sop_instance_uid"], pixel_archive=c["archive"], pixel_member=c["member"])


def _identical_copies(copies: list[dict[str, Any]], payload: Payload, access: ArchiveAccess | None) -> bool:
    """Read each same-size pixel copy once and compare it with the primary's bytes."""
    primary = hashlib.sha256(payload.data).digest()
    return all(hashlib.sha256(reads.read_range(c["archive"], c["offset"], c["size"], access)).digest() == primary
               for c in copies)


def _process(item: dict[str, Any], payload: Payload, task: TaskSettings, pool: WriterPool,
             forward: StowForward | None) -> Iterator[tuple]:
    uid = item["sop_instance_uid"]
    base = _ledger_values(item)
    if item.get("dup_pixels"):
        copies = _copies(item)
        primary = f"{item['pixel_archive']}:{item['pixel_member']}"
        try:
            identical = _identical_copies(copies, payload, task.access)
        except ReassemblyError as exc:
            payload.close()
            yield from _outcome_rows(task.run_id, item, exc.status, f"reading a duplicate copy: {exc.one_line()}")
            return
        if not identical:
            where = ", ".join([primary, *(f"{c['archive']}:{c['member']}" for c in copies)])
            payload.close()
            yield ledger_row(task.run_id, "conflict", f"pixel copies differ: {where}", **base)
            for c in copies:
                yield ledger_row(task.run_id, "conflict", f"pixel copies differ: {where}", sop_instance_uid=uid,
                                 pixel_archive=c["archive"], pixel_member=c["member"])
            return
        for c in copies:
            yield ledger_row(task.run_id, "duplicate", f"identical copy of {primary}", sop_instance_uid=uid,
                             pixel_archive=c["archive"], pixel_member=c["member"])
    try:
        obj = assemble(item["header_json"], payload.data, uid, item["pixel_member"],
                       max_header_bytes=task.max_header_bytes)
    except ReassemblyError as exc:
        payload.close()
        yield ledger_row(task.run_id, exc.status, exc.one_line(), **base)
        return
    pool.submit(lambda: _put(item, obj, payload, task.run_id, task.writes, pool, forward))


def reassemble_partition(rows: Iterable[Any], task: TaskSettings) -> Iterator[tuple]:
    """Executor side: work items sorted by (pixel_archive, pixel_offset) in, ledger rows out."""
    pool = WriterPool(task.writes.upload_threads, task.writes.put_rate)
    forward = StowForward(task.stow, task.stow_auth) if task.stow is not None else None
    try:
        items = (r.asDict() if hasattr(r, "asDict") else dict(r) for r in rows)
        for archive, group in groupby(items, key=lambda r: r["pixel_archive"]):
            # Items stream through: only a coalesced range's worth is ever held.
            for item, payload, err in read_archive_members(archive, group, None, task.reads, task.access):
                if err is not None:
                    yield from _outcome_rows(task.run_id, item, err.status, err.one_line())
                    continue
                emitted = 0
                try:
                    for row in _process(item, payload, task, pool, forward):
                        emitted += 1
                        yield row
                except Exception as exc:  # a bug or an unforeseen input costs one instance, never the run
                    log.exception("unexpected failure on %s", item["sop_instance_uid"])
                    payload.close()
                    if not emitted:
                        yield from _outcome_rows(task.run_id, item, "failed", f"{type(exc).__name__}: {str(exc)[:200]}")
                yield from pool.done()
                if forward is not None:
                    yield from forward.ready()
        yield from pool.drain()
        if forward is not None:
            yield from forward.flush()
    finally:
        pool.shutdown()
