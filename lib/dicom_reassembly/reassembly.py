"""Reassembly at scale, as plain Python that Spark schedules.

Two stages, each a generator:

- ``plan_instance``: one UID's header and pixel members in, its fate out:
  a terminal ledger outcome (orphan, invalid, duplicate copy, conflict,
  filtered out) or one work item that names the pixel member to read.
- ``reassemble_partition``: work items sorted by (pixel archive, offset) in,
  ledger rows out. Each archive is read in one forward pass: one streaming GET
  when most of it is wanted, coalesced ranged GETs when little is. Objects are
  written by a bounded thread pool.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import mmap
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from .dicom.header_rules import MAX_HEADER_BYTES
from .dicom.part10 import Part10, assemble
from .dicom.uids import uid_problem
from .errors import ArchiveError, ReassemblyError
from .io import clients, reads, tar_access, uris, writes
from .ledger import ledger_row
from .output import write_once

log = logging.getLogger(__name__)

# Work items: the fields the executor needs, and nothing heavier than the header JSON.
PLAN_FIELDS: list[tuple[str, str]] = [
    ("sop_instance_uid", "string"), ("status", "string"), ("reason", "string"),
    ("header_archive", "string"), ("header_member", "string"), ("header_json", "string"),
    ("pixel_archive", "string"), ("pixel_archive_size", "long"), ("pixel_member", "string"),
    ("pixel_offset", "long"), ("pixel_size", "long"), ("dup_pixels", "string"),
    ("study_instance_uid", "string"), ("series_instance_uid", "string"), ("modality", "string"),
]
PLAN_NAMES = [n for n, _ in PLAN_FIELDS]
PENDING = "pending"
_MODALITY = re.compile(r"[A-Z0-9_]{1,16}")
# Manifest member errors that say the archive, not the member, is damaged.
ARCHIVE_DAMAGE = ("truncated_archive", "corrupt_header", "read_error")


def plan_schema() -> Any:
    """Spark schema of plan rows."""
    from pyspark.sql import types as T

    kinds = {"string": T.StringType(), "long": T.LongType()}
    return T.StructType([T.StructField(n, kinds[t], True) for n, t in PLAN_FIELDS])


def _plan(uid: str, status: str, reason: str | None, h: dict | None, p: dict | None, **extra: Any) -> tuple:
    values: dict[str, Any] = {"sop_instance_uid": uid, "status": status, "reason": reason}
    if h:
        values.update(header_archive=h["archive_uri"], header_member=h["member_name"],
                      study_instance_uid=h.get("study_instance_uid"), series_instance_uid=h.get("series_instance_uid"),
                      modality=h.get("modality"))
    if p:
        values.update(pixel_archive=p["archive_uri"], pixel_archive_size=p.get("archive_size"),
                      pixel_member=p["member_name"], pixel_offset=p["data_offset"], pixel_size=p["size"])
    values.update(extra)
    return tuple(values.get(n) for n in PLAN_NAMES)


def _loc(m: dict) -> str:
    return f"{m['archive_uri']}:{m['member_name']}"


def _first(members: list[dict]) -> list[dict]:
    """Copies in a stable order: the first one is the primary."""
    return sorted(members, key=lambda m: (m["archive_uri"], m["data_offset"]))


def _why(m: dict) -> str:
    return f"{m['error']}: {m.get('error_detail') or ''}".rstrip(": ")


def plan_instance(uid: str, headers: list[dict], pixels: list[dict],
                  select: Callable[[str], str | None] | None = None,
                  pixels_pending_restore: bool = False, headers_pending_restore: bool = False) -> Iterator[tuple]:
    """Decide one UID's fate from all its header and pixel members.

    The instance's outcome names its primary header and pixel member; every
    other member gets a row of its own, so each member appears in the ledger.
    ``select(header_json)`` returns None to keep the instance or the reason it
    was filtered out. ``pixels_pending_restore`` says some pixel archives are
    not indexed yet (still in Glacier), so a header without pixels is
    ``not_restored`` rather than an orphan; ``headers_pending_restore`` does the
    same for pixels whose header archive may still be in Glacier.
    """
    headers, pixels = _first(headers), _first(pixels)
    good_h = [h for h in headers if not h.get("error")]
    bad_h = [h for h in headers if h.get("error")]
    good_p = [p for p in pixels if not p.get("error")]
    bad_p = [p for p in pixels if p.get("error")]

    def bad_pixel(p: dict, h: dict | None = None) -> tuple:
        status = "unreadable_archive" if p["error"] in ARCHIVE_DAMAGE else "invalid_pixels"
        return _plan(uid, status, _why(p), h, p)

    def rest_of(pixels_named: list[dict], status: str, reason: str) -> Iterator[tuple]:
        """Rows for the pixel members the outcome did not name: bad ones say why, good ones share the outcome."""
        for p in pixels:
            if any(p is q for q in pixels_named):
                continue
            yield bad_pixel(p) if p.get("error") else _plan(uid, status, reason, None, p)

    if not good_h:
        if not headers:
            status, reason = (("not_restored", "no header indexed yet; some text archives are not restored")
                              if headers_pending_restore else ("orphan_pixels", "no header member for this UID"))
            for p in pixels:
                yield bad_pixel(p) if p.get("error") else _plan(uid, status, reason, None, p)
            return
        p0 = (good_p or bad_p or [None])[0]
        yield _plan(uid, "invalid_header", _why(bad_h[0]), bad_h[0], p0)
        for h in bad_h[1:]:
            yield _plan(uid, "invalid_header", _why(h), h, None)
        yield from rest_of([p0] if p0 else [], "invalid_header", "its header is invalid (extra pixel copy)")
        return
    for h in bad_h:
        yield _plan(uid, "invalid_header", _why(h), h, None)
    primary, *extra_h = good_h
    if any(h["header_sha256"] != primary["header_sha256"] for h in extra_h):
        reason = "headers differ: " + ", ".join(_loc(h) for h in good_h)
        named = good_p[: len(good_h)]
        for i, h in enumerate(good_h):
            yield _plan(uid, "conflict", reason, h, named[i] if i < len(named) else None)
        yield from rest_of(named, "conflict", reason)
        return
    for h in extra_h:
        yield _plan(uid, "duplicate", f"identical copy of {_loc(primary)}", h, None)
    reason = select(primary["header_json"]) if select else None
    if reason:
        p0 = (good_p or bad_p or [None])[0]
        yield _plan(uid, "filtered_out", reason, primary, p0)
        yield from rest_of([p0] if p0 else [], "filtered_out", reason)
        return
    if not good_p:
        if bad_p:
            yield bad_pixel(bad_p[0], primary)
            yield from rest_of(bad_p[:1], "invalid_pixels", "")
        elif pixels_pending_restore:
            yield _plan(uid, "not_restored", "no pixel member indexed yet; some image archives are not restored", primary, None)
        else:
            yield _plan(uid, "orphan_header", "no pixel member for this UID", primary, None)
        return
    for p in bad_p:
        yield bad_pixel(p)
    first_p, *extra_p = good_p
    if any(p["size"] != first_p["size"] for p in extra_p):
        reason = "pixel copies differ in size: " + ", ".join(_loc(p) for p in good_p)
        yield _plan(uid, "conflict", reason, primary, first_p)
        for p in extra_p:
            yield _plan(uid, "conflict", reason, None, p)
        return
    dups = json.dumps([[p["archive_uri"], p["member_name"], p["data_offset"], p["size"]] for p in extra_p]) if extra_p else None
    yield _plan(uid, PENDING, None, primary, first_p, header_json=primary["header_json"], dup_pixels=dups)


# ---------------------------------------------------------------- executor


@dataclass(frozen=True)
class WriteContext:
    """What the executors need to write outputs: small and picklable."""

    run_id: str
    out: str | None
    key_template: str = "{sop_instance_uid}.dcm"
    write_options: writes.WriteOptions = writes.WriteOptions()
    skip_existing: bool = True
    upload_threads: int = 8
    stream_fraction: float = 0.5
    coalesce_gap: int = tar_access.DEFAULT_COALESCE_GAP
    large_member_bytes: int = 256 * 1024 * 1024
    max_header_bytes: int = MAX_HEADER_BYTES
    put_rate: float = 0.0  # writes per second per task; 0 = unlimited
    existing_check: str = "conditional"  # S3: conditional PUT, HEAD only when refused; or "head" first
    s3: clients.S3Settings | None = None  # input_s3_parameters: used for the input bucket only
    s3_bucket: str | None = None
    stow: Any = None  # stow.StowSettings when forwarding to DICOMweb
    stow_auth: Any = None  # stow.StowAuth read on the driver: executors on YARN don't inherit its environment


def output_key(template: str, item: dict[str, Any]) -> str:
    """The object key for an instance from the configured template."""
    uid = item["sop_instance_uid"]  # validated when the manifest was built

    def safe_uid(value: str | None, missing: str) -> str:
        return value if value and uid_problem(value) is None else missing

    modality = item.get("modality") or ""
    fields = {
        "sop_instance_uid": uid,
        # Header values reach the key: only well-formed ones, so none can climb out of --out.
        "study_instance_uid": safe_uid(item.get("study_instance_uid"), "unknown_study"),
        "series_instance_uid": safe_uid(item.get("series_instance_uid"), "unknown_series"),
        "modality": modality if _MODALITY.fullmatch(modality) else "OT",
        "uid_hash": hashlib.sha256(uid.encode()).hexdigest()[:4],
    }
    return template.format(**fields)


@dataclass
class _Range:
    start: int
    end: int
    items: Iterable[dict[str, Any]]


# A coalesced range holds at most this many work items, so a task's memory stays
# bounded however many members an archive has.
MAX_RANGE_ITEMS = 1024


def plan_reads(items: Iterable[dict[str, Any]], archive_size: int | None, stream_fraction: float,
               coalesce_gap: int) -> Iterator[_Range]:
    """Group an archive's wanted members (sorted by offset) into the GETs that read them, lazily.

    One range from the first wanted member to the archive's last wanted byte
    when most of the archive is wanted (its items stream through, unbuffered);
    otherwise ranges split wherever the gap between members exceeds
    ``coalesce_gap``. The per-archive totals come with the first item
    (``archive_wanted``, ``archive_end``, computed by Spark); without them the
    items are gathered to compute them.
    """
    it = iter(items)
    first = next(it, None)
    if first is None:
        return
    archive_size = archive_size or first.get("pixel_archive_size")
    wanted, end = first.get("archive_wanted"), first.get("archive_end")
    if wanted is None or end is None:
        rest = list(it)
        everything = [first, *rest]
        wanted = sum(i["pixel_size"] for i in everything)
        end = max(i["pixel_offset"] + i["pixel_size"] for i in everything)
        it = iter(rest)
    if archive_size and wanted >= stream_fraction * archive_size:
        yield _Range(first["pixel_offset"], end, itertools.chain([first], it))
        return
    cur = _Range(first["pixel_offset"], first["pixel_offset"] + first["pixel_size"], [first])
    for item in it:
        start, stop = item["pixel_offset"], item["pixel_offset"] + item["pixel_size"]
        if start - cur.end <= coalesce_gap and len(cur.items) < MAX_RANGE_ITEMS:  # type: ignore[arg-type]
            cur.end = max(cur.end, stop)
            cur.items.append(item)  # type: ignore[union-attr]
        else:
            yield cur
            cur = _Range(start, stop, [item])
    yield cur


class _Payload:
    """A member's bytes: in memory, or spooled to a temp file and mapped when large."""

    def __init__(self, stream: Any, size: int, large: int) -> None:
        self.file = None
        self.map = None
        if size <= large:
            # Copied, even from a local file: with the archive in the page cache, mapping each member
            # (faults, then an unmap that interrupts the other threads' CPUs) measured slower than the copy.
            self.data: Any = reads.read_exact(stream, size)
            return
        if getattr(stream, "maps_in_place", False):
            # A big member of a local archive is mapped where it lies instead of spooled to a temporary copy.
            self.data = stream.read_view(size)
            return
        self.file = tempfile.TemporaryFile(prefix="dcm-member-")  # noqa: SIM115 - closed by close()
        left = size
        while left:
            chunk = stream.read(min(left, 8 << 20))
            if not chunk:
                break
            self.file.write(chunk)
            left -= len(chunk)
        self.file.flush()
        self.map = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ) if size - left else None
        self.data = self.map if self.map is not None else b""

    def __len__(self) -> int:
        return len(self.data)

    def close(self) -> None:
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:  # views of it still alive (a caller kept parts): the GC closes it
                log.debug("member map still referenced; left to the garbage collector")
        if self.file is not None:
            self.file.close()
        # A mapped view unmaps when its last reference goes (the written parts may still hold one).
        self.data = b""


def _skip(stream: Any, n: int) -> None:
    while n > 0:
        chunk = stream.read(min(n, 1 << 20))
        if not chunk:
            raise ArchiveError("truncated_archive", "archive ended before a wanted member")
        n -= len(chunk)


def read_archive_members(uri: str, items: Iterable[dict[str, Any]], archive_size: int | None, ctx: WriteContext
                         ) -> Iterator[tuple[dict[str, Any], Any, ReassemblyError | None]]:
    """Yield (item, payload or None, error) for each wanted member, in one forward pass per range."""
    for rng in plan_reads(items, archive_size, ctx.stream_fraction, ctx.coalesce_gap):
        pending = iter(rng.items)
        try:
            stream = reads.open_read(uri, rng.start, rng.end)
        except ReassemblyError as exc:
            for it in pending:
                yield it, None, exc
            continue
        with stream:
            pos = rng.start
            for it in pending:
                try:
                    if it["pixel_offset"] < pos:  # two UIDs naming one member: read it again, separately
                        yield it, _Payload(_ReadOnce(uri, it), it["pixel_size"], ctx.large_member_bytes), None
                        continue
                    _skip(stream, it["pixel_offset"] - pos)
                    payload = _Payload(stream, it["pixel_size"], ctx.large_member_bytes)
                    pos = it["pixel_offset"] + len(payload)
                    if len(payload) < it["pixel_size"]:
                        payload.close()
                        raise ArchiveError("truncated_archive", f"member cut at {len(payload)} of {it['pixel_size']} bytes")
                    yield it, payload, None
                except Exception as exc:  # the rest of this range is lost (a cut archive, a dropped connection), not the run
                    err = exc if isinstance(exc, ReassemblyError) else ArchiveError(
                        "read_error", f"{type(exc).__name__}: {str(exc)[:200]}", uri=uri)
                    yield it, None, err
                    for rest in pending:
                        yield rest, None, err
                    break


class _ReadOnce:
    """A stream over one member by its own ranged read."""

    def __init__(self, uri: str, it: dict[str, Any]) -> None:
        self.data = reads.read_range(uri, it["pixel_offset"], it["pixel_size"])
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        n = len(self.data) - self.pos if n < 0 else n
        out = self.data[self.pos: self.pos + n]
        self.pos += len(out)
        return out


class _RateLimit:
    """Spaces calls at least 1/rate seconds apart (rate 0: no limit), shared by a task's threads."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.lock = threading.Lock()
        self.next_at = 0.0

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            at = max(now, self.next_at)
            self.next_at = at + self.interval
        if at > now:
            time.sleep(at - now)


class _Writer:
    """Writes objects on a bounded thread pool and keeps the ledger rows in order of completion."""

    def __init__(self, ctx: WriteContext) -> None:
        self.ctx = ctx
        self.pool = ThreadPoolExecutor(max_workers=max(1, ctx.upload_threads), thread_name_prefix="dcm-put")
        self.limit = threading.BoundedSemaphore(2 * max(1, ctx.upload_threads))
        self.rate = _RateLimit(ctx.put_rate)
        self.futures: set[Future] = set()

    def submit(self, fn: Callable[[], list[tuple]]) -> None:
        self.limit.acquire()
        fut = self.pool.submit(fn)
        fut.add_done_callback(lambda _f: self.limit.release())
        self.futures.add(fut)

    def done(self, block: bool = False) -> Iterator[tuple]:
        if not self.futures:
            return
        finished, _ = wait(self.futures, timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for fut in finished:
            self.futures.discard(fut)
            yield from fut.result()

    def drain(self) -> Iterator[tuple]:
        while self.futures:
            yield from self.done(block=True)
        self.pool.shutdown(wait=True)


def _put(item: dict[str, Any], obj: Part10, payload: _Payload, ctx: WriteContext, stow_queue: Any,
         rate: _RateLimit) -> list[tuple]:
    """Write one object (or skip it when it already exists) and return its ledger row."""
    common = _ledger_values(item)
    try:
        reason = None
        if ctx.out:
            uri = uris.join_uri(ctx.out, output_key(ctx.key_template, item))
            status, reason = _write_once(uri, obj, ctx, rate)
            if status == "conflict":  # nothing of ours is at the key: the reason names it and what holds it
                return [ledger_row(ctx.run_id, status, reason, **common)]
            common.update(output_uri=uri, output_bytes=obj.size, output_checksum=f"sha256:{obj.sha256}")
        else:
            status = "written"
            common.update(output_bytes=obj.size, output_checksum=f"sha256:{obj.sha256}")
        common["transfer_syntax"] = obj.transfer_syntax
        # What was accepted as the source had it (e.g. J2K precision other than BitsStored) stays on record.
        notes = "; ".join([*obj.notes, *([reason] if reason else [])]) or None
        row = ledger_row(ctx.run_id, status, notes, **common)
        if stow_queue is not None:
            stow_queue.add(item["sop_instance_uid"], obj, row)
            return []
        return [row]
    except ReassemblyError as exc:
        log.warning("write failed for %s: %s", item["sop_instance_uid"], exc.reason)
        return [ledger_row(ctx.run_id, "failed", exc.one_line(), **common)]
    except Exception as exc:  # a disk error or an SDK fault costs this instance, not the task
        log.warning("write failed for %s: %s", item["sop_instance_uid"], type(exc).__name__)
        return [ledger_row(ctx.run_id, "failed", f"{type(exc).__name__}: {str(exc)[:200]}", **common)]
    finally:
        obj.parts = []  # drop views of the member before its buffer is released (STOW keeps its own copy)
        payload.close()


def _write_once(uri: str, obj: Part10, ctx: WriteContext, rate: _RateLimit) -> tuple[str, str | None]:
    """Write unless the key is taken: (written | skipped_existing | conflict, reason); see ``output.write_once``.

    On S3 the default is a conditional PUT (If-None-Match), so a first run costs one request per instance;
    only a refused PUT is followed by a HEAD. With ``existing_check="head"`` the HEAD comes first, cheaper
    for re-runs over mostly written outputs. ``skip_existing=False`` replaces an object of the same
    instance, never another instance's.
    """
    outcome = write_once(uri, obj, replace_same_instance=not ctx.skip_existing, existing_check=ctx.existing_check,
                         options=ctx.write_options, before_write=rate.wait)
    return outcome.status, outcome.reason


def _ledger_values(item: dict[str, Any]) -> dict[str, Any]:
    return {k: item.get(k) for k in ("sop_instance_uid", "header_archive", "header_member", "pixel_archive",
                                     "pixel_member", "study_instance_uid", "series_instance_uid")}


def _copies(item: dict[str, Any]) -> list[dict[str, Any]]:
    if not item.get("dup_pixels"):
        return []
    return [dict(zip(("archive", "member", "offset", "size"), d)) for d in json.loads(item["dup_pixels"])]


def _outcome_rows(ctx: WriteContext, item: dict[str, Any], status: str, reason: str) -> Iterator[tuple]:
    """The instance's row, and one per extra pixel copy, so every member stays accounted for."""
    yield ledger_row(ctx.run_id, status, reason, **_ledger_values(item))
    for c in _copies(item):
        yield ledger_row(ctx.run_id, status, f"copy of {item['pixel_archive']}:{item['pixel_member']}: {reason}",
                         sop_instance_uid=item["sop_instance_uid"], pixel_archive=c["archive"], pixel_member=c["member"])


def _identical_copies(copies: list[dict[str, Any]], payload: _Payload) -> bool:
    """Read each same-size pixel copy once and compare it with the primary's bytes."""
    primary = hashlib.sha256(payload.data).digest()
    return all(hashlib.sha256(reads.read_range(c["archive"], c["offset"], c["size"])).digest() == primary
               for c in copies)


def _process(item: dict[str, Any], payload: _Payload, ctx: WriteContext, writer: _Writer, stow_queue: Any) -> Iterator[tuple]:
    uid = item["sop_instance_uid"]
    base = _ledger_values(item)
    if item.get("dup_pixels"):
        copies = _copies(item)
        primary = f"{item['pixel_archive']}:{item['pixel_member']}"
        try:
            identical = _identical_copies(copies, payload)
        except ReassemblyError as exc:
            payload.close()
            yield from _outcome_rows(ctx, item, exc.status, f"reading a duplicate copy: {exc.one_line()}")
            return
        if not identical:
            where = ", ".join([primary, *(f"{c['archive']}:{c['member']}" for c in copies)])
            payload.close()
            yield ledger_row(ctx.run_id, "conflict", f"pixel copies differ: {where}", **base)
            for c in copies:
                yield ledger_row(ctx.run_id, "conflict", f"pixel copies differ: {where}", sop_instance_uid=uid,
                                 pixel_archive=c["archive"], pixel_member=c["member"])
            return
        for c in copies:
            yield ledger_row(ctx.run_id, "duplicate", f"identical copy of {primary}", sop_instance_uid=uid,
                             pixel_archive=c["archive"], pixel_member=c["member"])
    try:
        obj = assemble(item["header_json"], payload.data, uid, item["pixel_member"], max_header_bytes=ctx.max_header_bytes)
    except ReassemblyError as exc:
        payload.close()
        yield ledger_row(ctx.run_id, exc.status, exc.one_line(), **base)
        return
    writer.submit(lambda: _put(item, obj, payload, ctx, stow_queue, writer.rate))


def reassemble_partition(rows: Iterable[Any], ctx: WriteContext) -> Iterator[tuple]:
    """Executor side: work items sorted by (pixel_archive, pixel_offset) in, ledger rows out."""
    if ctx.s3 is not None:
        clients.set_archive_s3_settings(ctx.s3, ctx.s3_bucket)
    writer = _Writer(ctx)
    stow_queue = _StowQueue(ctx) if ctx.stow is not None else None
    try:
        items = (r.asDict() if hasattr(r, "asDict") else dict(r) for r in rows)
        for archive, group in groupby(items, key=lambda r: r["pixel_archive"]):
            # Items stream through: only a coalesced range's worth is ever held.
            for item, payload, err in read_archive_members(archive, group, None, ctx):
                if err is not None:
                    yield from _outcome_rows(ctx, item, err.status, err.one_line())
                    continue
                emitted = 0
                try:
                    for row in _process(item, payload, ctx, writer, stow_queue):
                        emitted += 1
                        yield row
                except Exception as exc:  # a bug or an unforeseen input costs one instance, never the run
                    log.exception("unexpected failure on %s", item["sop_instance_uid"])
                    payload.close()
                    if not emitted:
                        yield from _outcome_rows(ctx, item, "failed", f"{type(exc).__name__}: {str(exc)[:200]}")
                yield from writer.done()
                if stow_queue is not None:
                    yield from stow_queue.ready()
        yield from writer.drain()
        if stow_queue is not None:
            yield from stow_queue.flush()
    finally:
        writer.pool.shutdown(wait=True)


class _StowQueue:
    """Batches written instances for STOW-RS and completes their ledger rows with the result.

    Writer threads only queue; the task's own thread sends, so the HTTP session
    is never shared between threads.
    """

    def __init__(self, ctx: WriteContext) -> None:
        from .stow import StowClient

        self.ctx = ctx
        self.client = StowClient(ctx.stow, auth=ctx.stow_auth)
        self.lock = threading.Lock()
        self.batch: list[tuple[str, bytes, tuple]] = []
        self.batch_bytes = 0

    def add(self, uid: str, obj: Part10, row: tuple) -> None:
        with self.lock:
            self.batch.append((uid, obj.tobytes(), row))
            self.batch_bytes += obj.size

    def _full(self) -> bool:
        with self.lock:
            return len(self.batch) >= self.ctx.stow.batch_count or self.batch_bytes >= self.ctx.stow.batch_bytes

    def _send(self) -> Iterator[tuple]:
        from .ledger import LEDGER_NAMES

        with self.lock:
            take, size = 0, 0
            while take < len(self.batch) and take < self.ctx.stow.batch_count and (
                    take == 0 or size + len(self.batch[take][1]) <= self.ctx.stow.batch_bytes):
                size += len(self.batch[take][1])
                take += 1
            batch, self.batch = self.batch[:take], self.batch[take:]
            self.batch_bytes -= size
        if not batch:
            return
        results = {r.key: r for r in self.client.send([(uid, data) for uid, data, _ in batch])}
        i_status, i_reason = LEDGER_NAMES.index("stow_status"), LEDGER_NAMES.index("stow_reason")
        for uid, _data, row in batch:
            r = results.get(uid)
            values = list(row)
            values[i_status] = r.status if r else "failed"
            values[i_reason] = (r.reason if r else "no result") or None
            yield tuple(values)

    def ready(self) -> Iterator[tuple]:
        """Send when a batch is full; rows of sent batches come back completed."""
        while self._full():
            yield from self._send()

    def flush(self) -> Iterator[tuple]:
        while self.batch:
            yield from self._send()
