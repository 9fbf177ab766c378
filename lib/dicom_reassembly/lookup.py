"""Find one instance's two members: by scanning the archives, or from the manifest."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import arrow_io, storage, tar_access
from .dicom_json import too_large
from .errors import HeaderError, NotFoundError
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


def _read(uri: str, data_offset: int, size: int, max_bytes: int | None) -> bytes:
    """A member's bytes; a header above ``max_bytes`` is refused before it is read (HeaderError too_large)."""
    if max_bytes is not None and size > max_bytes:
        raise too_large(size, max_bytes)
    return tar_access.read_member(uri, data_offset, size)


def _scan(prefix: str, uid: str, want_header: bool, max_header_bytes: int = MAX_HEADER_BYTES) -> Located | None:
    """Walk archives under ``prefix`` until a member named for ``uid`` of the right kind appears."""
    from .manifest import member_kind

    want = "header" if want_header else "pixels"
    for obj in storage.list_objects(prefix, ARCHIVE_SUFFIXES):
        # Walked by the tar headers alone; only the matching member's data is read.
        for item in tar_access.iter_members(obj.uri, obj.size, with_data=False):
            if isinstance(item, tar_access.Damage):
                log.info("archive %s damaged at %d: %s", obj.uri, item.offset, item.reason)
                continue
            if not item.regular or member_uid(item.name) != uid:
                continue
            if member_kind(item.name) == want:
                limit = max_header_bytes if want_header else None
                return Located(obj.uri, item.name, _read(obj.uri, item.data_offset, item.size, limit))
    return None


def find_by_scan(uid: str, text: str, images: str,
                 max_header_bytes: int = MAX_HEADER_BYTES) -> tuple[Located, Located]:
    """Both halves of ``uid`` by scanning; NotFoundError names the missing half, HeaderError a header too large."""
    header = _scan(text, uid, True, max_header_bytes)
    if header is None:
        raise NotFoundError("header_not_found", f"no header member {uid}.json under {text}")
    pixels = _scan(images, uid, want_header=False)
    if pixels is None:
        raise NotFoundError("pixels_not_found", f"no pixel member for {uid} under {images}")
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
        limit = max_header_bytes if kind == "header" else None
        return Located(r["archive_uri"], r["member_name"], _read(r["archive_uri"], r["data_offset"], r["size"], limit))

    return pick("header", "header_not_found"), pick("pixels", "pixels_not_found")
