"""Find one instance's two members: by scanning the archives, or from the manifest."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import arrow_io, storage, tar_access
from .dicom_json import too_large
from .errors import ArchiveError, HeaderError, NotFoundError, ReassemblyError
from .header_rules import MAX_HEADER_BYTES
from .uids import member_uid

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar",)


@dataclass
class Located:
    """One member found: its archive, name and bytes."""

    archive_uri: str
    member_name: str
    data: bytes


def _scan(prefix: str, uid: str, want_header: bool, skipped: list[str] | None = None,
          max_header_bytes: int = MAX_HEADER_BYTES) -> Located | None:
    """Walk archives under ``prefix`` until a member named for ``uid`` of the right kind appears.

    An archive that cannot be read or is damaged never stops the scan: it is
    logged (INFO: a found instance needs no warning), noted in ``skipped`` as
    ``uri: reason: detail``, and passed over. A header member above
    ``max_header_bytes`` is the instance's error (HeaderError ``too_large``),
    raised before its data is read.
    """
    from .manifest import member_kind

    want = "header" if want_header else "pixels"
    notes = skipped if skipped is not None else []
    for obj in storage.list_objects(prefix, ARCHIVE_SUFFIXES):
        oversized: HeaderError | None = None
        try:
            if obj.error:
                raise ArchiveError(obj.error, obj.error_detail or "", uri=obj.uri)
            # Walked by the tar headers alone; only the matching member's data is read.
            for item in tar_access.iter_members(obj.uri, obj.size, with_data=False):
                if isinstance(item, tar_access.Damage):
                    where = f"at offset {item.offset}: " if item.offset else ""
                    raise ArchiveError(item.reason, where + item.detail, uri=obj.uri)
                if not item.regular or item.truncated or member_uid(item.name) != uid:
                    continue
                if member_kind(item.name) == want:
                    if want_header and item.size > max_header_bytes:
                        oversized = too_large(item.size, max_header_bytes)
                        break
                    return Located(obj.uri, item.name, tar_access.read_member(obj.uri, item.data_offset, item.size))
        except ReassemblyError as exc:
            log.info("scan for %s passes over %s: %s", uid, obj.uri, exc.one_line())
            notes.append(f"{obj.uri}: {exc.reason}: {exc.detail}")
        if oversized is not None:
            raise oversized
    return None


def _passed_over(skipped: list[str]) -> str:
    """The note a not-found error carries when archives were passed over: they may hold the member."""
    if not skipped:
        return ""
    shown = "; ".join(skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
    return f" ({len(skipped)} archive{'s' if len(skipped) > 1 else ''} could not be read: {shown})"


def find_by_scan(uid: str, text: str, images: str,
                 max_header_bytes: int = MAX_HEADER_BYTES) -> tuple[Located, Located]:
    """Both halves of ``uid`` by scanning; NotFoundError names the missing half, and the archives passed over;
    HeaderError ``too_large`` a header above ``max_header_bytes``."""
    header_skipped: list[str] = []
    header = _scan(text, uid, want_header=True, skipped=header_skipped, max_header_bytes=max_header_bytes)
    if header is None:
        raise NotFoundError("header_not_found", f"no header member {uid}.json under {text}{_passed_over(header_skipped)}")
    pixels_skipped: list[str] = []
    pixels = _scan(images, uid, want_header=False, skipped=pixels_skipped)
    if pixels is None:
        raise NotFoundError("pixels_not_found", f"no pixel member for {uid} under {images}{_passed_over(pixels_skipped)}")
    return header, pixels


def find_by_manifest(uid: str, manifest: str, max_header_bytes: int = MAX_HEADER_BYTES) -> tuple[Located, Located]:
    """Both halves of ``uid`` from the manifest: one lookup, then two ranged reads.

    A missing, unreadable or foreign manifest raises as ``arrow_io.read_manifest_table`` does.
    """
    import pyarrow.dataset as pads

    # A re-indexed archive appears once per index run: only its newest index counts.
    table = arrow_io.read_manifest_table(manifest, ["archive_uri", "member_name", "data_offset", "size", "kind",
                                                    "error"], filter=pads.field("sop_instance_uid") == uid)
    rows = table.to_pylist()

    def pick(kind: str, missing: str) -> Located:
        hits = [r for r in rows if r["kind"] == kind and not r["error"]]
        bad = [r for r in rows if r["kind"] == "header" and r["error"]] if kind == "header" else []
        if not hits and bad:  # indexed but unusable (too_large, too_deep, ...): say why, not "not found"
            raise HeaderError(bad[0]["error"], "the manifest indexed this header as unusable",
                              uri=f"{bad[0]['archive_uri']}:{bad[0]['member_name']}")
        if not hits:
            raise NotFoundError(missing, f"no {kind} member for {uid} in the manifest {manifest}")
        r = sorted(hits, key=lambda r: (r["archive_uri"], r["data_offset"]))[0]
        if kind == "header" and r["size"] > max_header_bytes:
            raise too_large(r["size"], max_header_bytes)
        return Located(r["archive_uri"], r["member_name"], tar_access.read_member(r["archive_uri"], r["data_offset"], r["size"]))

    return pick("header", "header_not_found"), pick("pixels", "pixels_not_found")
