"""Every copy of one instance's members: by scanning the archives, from the manifest, or a loose pair of files.

The members come back as manifest rows (location, size, error, and for headers the JSON and its key tags), so
``reassembly.plan_instance`` decides on them exactly as the pipeline does: duplicates, conflicts, orphans and
invalid members alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..dicom.header_rules import MAX_HEADER_BYTES
from ..dicom.uids import member_uid
from ..errors import ArchiveError, HeaderError, NotFoundError, ReassemblyError
from ..io import listing, reads, tar_access, uris

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar",)
# The manifest columns plan_instance reads.
MEMBER_COLUMNS = ["archive_uri", "archive_size", "member_name", "data_offset", "size", "kind", "error",
                  "error_detail", "header_json", "header_sha256", "study_instance_uid", "series_instance_uid",
                  "modality"]


@dataclass
class Members:
    """One UID's header and pixel members, and where they were looked for (for messages)."""

    headers: list[dict[str, Any]] = field(default_factory=list)
    pixels: list[dict[str, Any]] = field(default_factory=list)
    headers_where: str = ""
    pixels_where: str = ""


def _scan(prefix: str, uid: str, role: str, skipped: list[str],
          max_header_bytes: int = MAX_HEADER_BYTES) -> list[dict[str, Any]]:
    """Every member named for ``uid`` in the archives under ``prefix``, as the manifest indexes it.

    An archive that cannot be read or is damaged never stops the scan: it is logged (INFO: a found
    instance needs no warning), noted in ``skipped`` as ``uri: reason: detail``, and passed over; the
    members before the damage still count. A header above ``max_header_bytes`` is not read: its row
    says ``too_large``, as the manifest's would.
    """
    from .index import FIELD_NAMES, member_kind, member_row

    found = []
    for obj in listing.list_objects(prefix, ARCHIVE_SUFFIXES):
        base = {"archive_uri": obj.uri, "archive_role": role, "archive_size": obj.size}
        try:
            if obj.error:
                raise ArchiveError(obj.error, obj.error_detail or "", uri=obj.uri)
            # Walked by the tar headers alone; only the matching members' data is read.
            for item in tar_access.iter_members(obj.uri, obj.size, with_data=False):
                if isinstance(item, tar_access.Damage):
                    where = f"at offset {item.offset}: " if item.offset else ""
                    raise ArchiveError(item.reason, where + item.detail, uri=obj.uri)
                if not item.regular or member_uid(item.name) != uid:
                    continue
                kind = member_kind(item.name)
                if kind == "other":
                    continue
                if kind == "header" and role == "text" and not item.truncated:  # a text archive's headers are read
                    if item.size > max_header_bytes:
                        item.too_large = True
                    else:
                        item.data = tar_access.read_member(obj.uri, item.data_offset, item.size)
                found.append(dict(zip(FIELD_NAMES, member_row(base, item, max_header_bytes))))
        except ReassemblyError as exc:
            log.info("scan for %s passes over %s: %s", uid, obj.uri, exc.one_line())
            skipped.append(f"{obj.uri}: {exc.reason}: {exc.detail}")
    return found


def _passed_over(skipped: list[str]) -> str:
    """The note a not-found message carries when archives were passed over: they may hold the member."""
    if not skipped:
        return ""
    shown = "; ".join(skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
    return f" ({len(skipped)} archive{'s' if len(skipped) > 1 else ''} could not be read: {shown})"


def _split(rows: list[dict[str, Any]], headers_where: str, pixels_where: str) -> Members:
    seen: set[tuple[str, int]] = set()
    members = Members(headers_where=headers_where, pixels_where=pixels_where)
    for r in rows:
        at = (r["archive_uri"], r["data_offset"])
        if at in seen or r.get("error") == "invalid_uid":  # one folder given as both prefixes; unjoinable rows
            continue
        seen.add(at)
        if r["kind"] == "header":
            members.headers.append(r)
        elif r["kind"] == "pixels":
            members.pixels.append(r)
    return members


def scan_members(uid: str, text: str, images: str) -> Members:
    """Every copy of ``uid``'s members under both prefixes (each archive's tar headers are walked)."""
    text_skipped: list[str] = []
    image_skipped: list[str] = []
    rows = _scan(text, uid, "text", text_skipped) + _scan(images, uid, "images", image_skipped)
    return _split(rows, f"under {text}{_passed_over(text_skipped)}", f"under {images}{_passed_over(image_skipped)}")


def manifest_members(uid: str, manifest: str) -> Members:
    """Every copy of ``uid``'s members in the manifest (each archive's newest index); no archive is read.

    Only the UID's bucket and the row groups that can hold it are read (``layout.read_uid_rows``), and the
    unclustered files of a manifest not yet rewritten in buckets. A missing, unreadable or foreign manifest
    raises as ``arrow_io.read_manifest_table`` does.
    """
    from .layout import read_uid_rows

    table = read_uid_rows(manifest, uid, MEMBER_COLUMNS)
    where = f"in the manifest {manifest}"
    return _split(table.to_pylist(), where, where)


def pair_members(header_uri: str, pixels_uri: str) -> tuple[str, Members]:
    """A loose header file and pixel file as one instance's members; the UID is the header's SOPInstanceUID.

    File names do not matter: the pair is what the caller says it is. A header that cannot give a valid
    UID raises HeaderError, with the reason code the manifest would record.
    """
    from ..dicom.dicom_json import SOP_INSTANCE_UID, first_value, parse_header, too_large
    from ..dicom.uids import uid_problem
    from .index import header_columns

    pixels = listing.head(pixels_uri)
    if pixels is None:
        raise NotFoundError("not_found", "no such pixel file", uri=pixels_uri)
    header_info = listing.head(header_uri)
    if header_info is not None and header_info.size > MAX_HEADER_BYTES:  # refused before it is read
        exc = too_large(header_info.size, MAX_HEADER_BYTES)
        raise HeaderError(exc.reason, exc.detail, uri=header_uri)
    data = reads.read_bytes(header_uri)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HeaderError("malformed_json", f"not UTF-8: {exc}", uri=header_uri) from None
    try:
        uid = str(first_value(parse_header(text), SOP_INSTANCE_UID) or "").strip()
    except HeaderError as exc:
        raise HeaderError(exc.reason, exc.detail, uri=header_uri) from None
    if not uid:
        raise HeaderError("missing_sop_instance_uid", "SOPInstanceUID (0008,0018) is missing", uri=header_uri)
    problem = uid_problem(uid)
    if problem:
        raise HeaderError("invalid_uid", f"SOPInstanceUID {uid!r} is {problem}", uri=header_uri)
    header = {"archive_uri": header_uri, "archive_size": len(data), "member_name": uris.basename(header_uri),
              "data_offset": 0, "size": len(data), "kind": "header", "error": None, "error_detail": None,
              **header_columns(data, uid)}
    pixel = {"archive_uri": pixels_uri, "archive_size": pixels.size, "member_name": uris.basename(pixels_uri),
             "data_offset": 0, "size": pixels.size, "kind": "pixels", "error": None, "error_detail": None}
    return uid, Members([header], [pixel], header_uri, pixels_uri)
