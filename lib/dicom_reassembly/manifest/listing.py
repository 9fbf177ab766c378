"""What there is to index: both prefixes listed into archives with their role, and which of them are new or changed."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError
from ..io import listing as io_listing
from ..io.clients import ArchiveAccess
from .index import RETRYABLE_ARCHIVE_ERRORS

log = logging.getLogger(__name__)


def list_archives(text: str, images: str, suffixes: tuple[str, ...] = (".tar",),
                  access: ArchiveAccess | None = None) -> list[dict[str, Any]]:
    """List both prefixes (paginated on S3) into archive dicts tagged with their role.

    Every object is listed, not only archives: those whose name ends in one of
    ``suffixes`` (every object when it is empty) have ``is_archive`` and are
    walked as tars; the others, and the entries the listing could not read
    (``error``), each get one archive-level manifest row with a reason. ``access``: the input credentials.
    """
    out = []
    if text.rstrip("/") == images.rstrip("/") or text.startswith(images.rstrip("/") + "/") or images.startswith(text.rstrip("/") + "/"):
        raise ConfigError("overlapping_prefixes", f"--text {text} and --images {images} overlap: each archive needs one role")
    for role, prefix in (("text", text), ("images", images)):
        for obj in io_listing.list_objects(prefix, access=access):
            out.append({"uri": obj.uri, "role": role, "size": obj.size, "etag": obj.etag, "mtime": obj.mtime,
                        "is_archive": not suffixes or obj.uri.endswith(suffixes),
                        "error": obj.error, "error_detail": obj.error_detail})
    return out


def listing_summary(listing: list[dict[str, Any]], todo: list[dict[str, Any]]) -> list[str]:
    """The job summary's lines about the listing: archives by name, other objects, entries it could not read.

    Each of them has a manifest row; the job prints this run's rows by reason after these lines.
    """
    other = sum(1 for a in listing if not a["error"] and not a["is_archive"])
    unreadable = sum(1 for a in listing if a["error"])
    total = sum(a["size"] for a in listing)
    return [f"objects listed: {len(listing)} ({total} bytes): {len(listing) - other - unreadable} archives, "
            f"{other} other objects (not_an_archive or compressed_archive), {unreadable} unreadable while listing; "
            f"indexed this run: {len(todo)}; unchanged and skipped: {len(listing) - len(todo)}"]


def archives_to_index(listing: list[dict[str, Any]], indexed: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The archives that are new, changed (size or ETag) or whose last index failed for a retryable reason."""
    known = {r["archive_uri"]: r for r in indexed}
    todo = []
    for a in listing:
        prev = known.get(a["uri"])
        prev_error = (prev or {}).get("error") or ""
        if (prev is None or prev["archive_size"] != a["size"] or prev["archive_etag"] != a["etag"]
                or prev.get("archive_role") != a["role"] or prev_error in RETRYABLE_ARCHIVE_ERRORS
                or (prev_error == "not_an_archive" and a.get("is_archive"))):  # archive_suffixes now names it
            todo.append(a)
    return todo
