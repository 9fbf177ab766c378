"""The fate of one instance: all its header and pixel members in, one terminal outcome or one work item out.

``plan_instance`` decides orphans, invalid members, duplicate copies, conflicts and filtered-out instances;
every member it is given gets a row, so each appears in the ledger. What is left is a work item (``PENDING``)
naming the pixel member to read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from ..dicom.dicom_json import canonical_sha256, parse_header
from ..errors import HeaderError

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


def same_content(a: dict, b: dict) -> bool:
    """Whether two header members say the same: the same bytes (the manifest's SHA-256 of each member), or the
    same canonical JSON when only key order or white space differ (rare: parsed only then)."""
    if a["header_sha256"] == b["header_sha256"]:
        return True
    try:
        return canonical_sha256(parse_header(a["header_json"])) == canonical_sha256(parse_header(b["header_json"]))
    except HeaderError:
        return False


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
    if not all(same_content(h, primary) for h in extra_h):
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
