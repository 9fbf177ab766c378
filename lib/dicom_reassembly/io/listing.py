"""What is stored: listing a folder or prefix, and the size and fingerprint of one object (HEAD)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..errors import NotFoundError, StorageError
from .clients import ArchiveAccess, client_for, s3_call, translate_client_error
from .reads import translate_os_error
from .uris import is_s3, split_s3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its URI, size, and a change fingerprint (and, from ``head``, its user metadata).

    ``error`` is set (with ``error_detail``) for an entry the listing found but
    could not use: a broken link (``broken_link``), a folder it may not read
    (``access_denied``), one that vanished (``not_found``), a linked folder it
    does not follow (``not_an_archive``). Listings report them instead of
    stopping or skipping them.
    """

    uri: str
    size: int
    etag: str
    mtime: datetime | None = None
    storage_class: str | None = None
    error: str | None = None
    error_detail: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False)  # S3 user metadata (HEAD only)


def list_objects(prefix: str, suffixes: tuple[str, ...] = (), access: ArchiveAccess | None = None
                 ) -> Iterator[ObjectInfo]:
    """List the objects under a local folder or S3 prefix, paginated, sorted by key.

    ``suffixes`` filters by name ending; empty means everything. Entries that
    cannot be used come with ``error`` set, never as an exception and never
    dropped: a folder that cannot be read is listed whatever ``suffixes`` says,
    since archives may be inside it. Only a prefix that cannot be listed at all raises.
    """
    if is_s3(prefix):
        yield from _list_s3(prefix, suffixes, access)
        return
    if os.path.isdir(prefix):
        entries = _walk_local(prefix)
    elif os.path.lexists(prefix):
        entries = [(_local_entry(prefix), False)]
    else:
        raise NotFoundError("not_found", "no such folder", uri=prefix)
    for entry, folder in entries:
        if folder or not suffixes or entry.uri.endswith(suffixes):
            yield entry


def _list_s3(prefix: str, suffixes: tuple[str, ...], access: ArchiveAccess | None) -> Iterator[ObjectInfo]:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(prefix)
    if key and not key.endswith("/"):
        key += "/"
    pages = client_for(prefix, access).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
    try:
        for page in pages:
            for obj in page.get("Contents", []):
                name = obj["Key"]
                if (name.endswith("/") and not obj["Size"]) or (suffixes and not name.endswith(suffixes)):
                    continue  # an empty key ending in "/" is a console folder marker, not data
                yield ObjectInfo(uri=f"s3://{bucket}/{name}", size=int(obj["Size"]),
                                 etag=str(obj.get("ETag", "")).strip('"'), mtime=obj.get("LastModified"),
                                 storage_class=obj.get("StorageClass"))
    except ClientError as exc:
        raise translate_client_error(exc, prefix) from exc
    except BotoCoreError as exc:
        raise StorageError("s3_unreachable", type(exc).__name__, uri=prefix) from exc


def _local_entry(path: str) -> ObjectInfo:
    """A listed local file; a broken link, a file that vanished or one we may not stat carries its error."""
    try:
        st = os.stat(path)
    except OSError as exc:
        err = translate_os_error(exc, path)
        try:
            lst = os.lstat(path)
            etag = f"link-{lst.st_mtime_ns:x}"  # changes when the link is replaced, so the next run retries it
        except OSError:
            etag = ""
        return ObjectInfo(os.path.abspath(path), 0, etag, error=err.reason, error_detail=err.detail)
    return ObjectInfo(os.path.abspath(path), st.st_size, f"{st.st_size:x}-{st.st_mtime_ns:x}",
                      datetime.fromtimestamp(st.st_mtime, tz=timezone.utc))


def _walk_local(top: str) -> list[tuple[ObjectInfo, bool]]:
    """(entry, is a folder) for every file under ``top`` in key order, and for each folder it cannot read.

    Linked folders are not followed (a link may loop): each is listed as ``not_an_archive``.
    """
    failures: list[OSError] = []
    entries: list[tuple[ObjectInfo, bool]] = []
    for root, dirs, files in os.walk(top, onerror=failures.append):
        entries.extend((_local_entry(os.path.join(root, f)), False) for f in files)
        for d in dirs:
            path = os.path.join(root, d)
            if os.path.islink(path):
                detail = f"a link to the folder {os.readlink(path)!r}: linked folders are not followed"
                entries.append((ObjectInfo(os.path.abspath(path), 0, "", error="not_an_archive", error_detail=detail),
                                True))
    for exc in failures:
        path = exc.filename or top
        err = translate_os_error(exc, path)
        if os.path.abspath(path) == os.path.abspath(top):
            raise err from exc
        entries.append((ObjectInfo(os.path.abspath(path), 0, "", error=err.reason,
                                   error_detail=f"folder cannot be listed: {err.detail}"), True))
    top = os.path.abspath(top)
    entries.sort(key=lambda e: os.path.relpath(e[0].uri, top))  # key order, as S3 lists
    return entries


def count_objects(prefix: str, suffixes: tuple[str, ...] = (), access: ArchiveAccess | None = None
                  ) -> tuple[int, int]:
    """How many objects are under ``prefix``, and their bytes."""
    n = total = 0
    for obj in list_objects(prefix, suffixes, access):
        n += 1
        total += obj.size
    return n, total


def head(uri: str, access: ArchiveAccess | None = None) -> ObjectInfo | None:
    """Size, fingerprint and (S3) user metadata of one object, or None when it does not exist.

    Locally, a broken link or a refusal is not "absent": it raises with its cause.
    """
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            r = s3_call(uri, client_for(uri, access).head_object, Bucket=bucket, Key=key)
        except NotFoundError:
            return None
        return ObjectInfo(uri, int(r["ContentLength"]), str(r.get("ETag", "")).strip('"'),
                          r.get("LastModified"), r.get("StorageClass"), metadata=r.get("Metadata", {}))
    try:
        st = os.stat(uri)
    except OSError as exc:
        err = translate_os_error(exc, uri)
        if err.reason == "not_found":
            return None
        raise err from exc
    if not stat.S_ISREG(st.st_mode):
        return None
    return ObjectInfo(uri, st.st_size, f"{st.st_size:x}-{st.st_mtime_ns:x}",
                      datetime.fromtimestamp(st.st_mtime, tz=timezone.utc))


def _hidden(relative: str) -> bool:
    """A path Spark and pyarrow leave out of a dataset: one of its parts starts with ``_`` or ``.``."""
    return any(part.startswith(("_", ".")) for part in relative.split("/"))


def list_dataset_files(folder: str, prefix: str = "", *, recursive: bool = False,
                       skip: str = "") -> Iterator[ObjectInfo]:
    """The data files of a dataset folder whose name starts with ``prefix``, in key order, without the
    ``_``/``.`` files and folders readers leave out; with ``recursive``, those in sub-folders too.

    Names starting with ``skip`` (at the folder's top) are not listed: on S3 the listing jumps over their key
    range, so a folder of many such files costs no requests for them. A missing folder lists nothing.
    """
    if is_s3(folder):
        yield from _list_s3_names(folder, prefix, recursive, skip)
        return
    if not os.path.isdir(folder):
        return
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if _hidden(entry.name) or not entry.name.startswith(prefix) or (skip and entry.name.startswith(skip)):
            continue
        if entry.is_dir(follow_symlinks=False):
            if recursive:
                yield from (o for o in list_objects(entry.path) if not o.error
                            and not _hidden(os.path.relpath(o.uri, os.path.abspath(folder)).replace(os.sep, "/")))
        elif entry.is_file():
            yield _local_entry(entry.path)


def _list_s3_names(folder: str, prefix: str, recursive: bool, skip: str) -> Iterator[ObjectInfo]:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(folder)
    base = key.rstrip("/") + "/" if key.strip("/") else ""
    # Keys starting with base + skip sort together: list up to them, then on from just past them.
    ranges = [("", base + skip), (base + skip[:-1] + chr(ord(skip[-1]) + 1), None)] if skip else [("", None)]
    client = client_for(folder)
    try:
        for start_after, stop in ranges:
            for obj in _s3_contents(client, bucket, base + prefix, "" if recursive else "/", start_after):
                name = obj["Key"]
                if stop is not None and name >= stop:
                    break  # the generator is dropped: no further page is requested
                if not _hidden(name[len(base):]) and not (name.endswith("/") and not obj["Size"]):
                    yield ObjectInfo(uri=f"s3://{bucket}/{name}", size=int(obj["Size"]),
                                     etag=str(obj.get("ETag", "")).strip('"'), mtime=obj.get("LastModified"))
    except ClientError as exc:
        raise translate_client_error(exc, folder) from exc
    except BotoCoreError as exc:
        raise StorageError("s3_unreachable", type(exc).__name__, uri=folder) from exc


def _s3_contents(client: Any, bucket: str, prefix: str, delimiter: str, start_after: str) -> Iterator[dict[str, Any]]:
    """The listed objects of one ListObjectsV2 walk, page by page as they are consumed."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if delimiter:
        kwargs["Delimiter"] = delimiter
    if start_after:
        kwargs["StartAfter"] = start_after
    for page in client.get_paginator("list_objects_v2").paginate(**kwargs):
        yield from page.get("Contents", [])


def name_prefixes(folder: str, prefix: str, delimiter: str) -> list[str]:
    """The distinct beginnings of the names in ``folder`` that start with ``prefix``: each cut just after the
    first ``delimiter`` past the prefix (S3's common prefixes), in order. One request on S3 for a few of them."""
    if is_s3(folder):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(folder)
        base = key.rstrip("/") + "/" if key.strip("/") else ""
        found: list[str] = []
        try:
            pages = client_for(folder).get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=base + prefix, Delimiter=delimiter)
            for page in pages:
                found += [p["Prefix"][len(base):] for p in page.get("CommonPrefixes", [])]
        except ClientError as exc:
            raise translate_client_error(exc, folder) from exc
        except BotoCoreError as exc:
            raise StorageError("s3_unreachable", type(exc).__name__, uri=folder) from exc
        return sorted(found)
    if not os.path.isdir(folder):
        return []
    cut = set()
    for name in os.listdir(folder):
        at = name.find(delimiter, len(prefix))
        if name.startswith(prefix) and at >= 0:
            cut.add(name[: at + len(delimiter)])
    return sorted(cut)
