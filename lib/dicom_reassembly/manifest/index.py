"""The manifest's rows: its schema, and the generator that indexes one archive (every tar member, its offsets,
UID and key header tags; damage as rows with a reason).

Like ratarmount's index, it makes random access one seek; unlike it, it spans millions of archives and carries
the header JSON, so reassembly never re-reads a text archive. Rows come from a plain generator per archive;
``index_batches`` gathers them into Arrow record batches, which Spark's ``mapInArrow`` takes without a per-row
conversion. Spark only schedules, clusters and writes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from ..dicom.dicom_json import KEY_TAGS, key_tags, parse_header, prepare_header, too_large
from ..dicom.header_rules import MAX_HEADER_BYTES
from ..dicom.uids import member_uid, uid_problem
from ..errors import HeaderError, NotRestoredError, ReassemblyError
from ..io import reads, tar_access
from ..io.clients import ArchiveAccess

log = logging.getLogger(__name__)
HEADER_SUFFIXES = (".json",)
PIXEL_SUFFIXES = (".j2c", ".j2k", ".jp2", ".jph", ".jhc", ".raw", ".bin", ".pixels")
# Names of compressed files (.tar.gz included), for objects whose content cannot be read; content decides otherwise.
COMPRESSED_SUFFIXES = ((".gz", "gzip"), (".tgz", "gzip"), (".bz2", "bzip2"), (".tbz2", "bzip2"), (".xz", "xz"),
                       (".txz", "xz"), (".zst", "zstd"), (".tzst", "zstd"))
# Archive errors worth retrying on the next indexing run.
RETRYABLE_ARCHIVE_ERRORS = ("not_restored", "read_error", "s3_error", "s3_unreachable", "not_found", "access_denied")
_INT_TAGS = [c for c, (_, kind) in KEY_TAGS.items() if kind is int]
_STR_TAGS = [c for c, (_, kind) in KEY_TAGS.items() if kind is not int]
# (name, spark type name); the order is the row order.
MANIFEST_FIELDS: list[tuple[str, str]] = [
    ("archive_uri", "string"), ("archive_role", "string"), ("archive_size", "long"), ("archive_etag", "string"),
    ("archive_mtime", "timestamp"), ("index_run", "string"), ("indexed_at", "timestamp"),
    ("member_name", "string"), ("header_offset", "long"), ("data_offset", "long"), ("size", "long"),
    ("kind", "string"), ("member_type", "string"), ("sop_instance_uid", "string"),
    ("error", "string"), ("error_detail", "string"),
    ("header_json", "string"), ("header_sha256", "string"),
    *[(c, "string") for c in _STR_TAGS], *[(c, "int") for c in _INT_TAGS], ("pixel_ref", "string"),
]
FIELD_NAMES = [n for n, _ in MANIFEST_FIELDS]


# The bucket a row is clustered in (manifest.layout): set when the rows are written, absent from older files.
STORED_FIELDS: list[tuple[str, str]] = [*MANIFEST_FIELDS, ("bucket", "int")]
# Rows per Arrow batch handed to Spark, and a bound on its header JSON: large enough to amortise the batch,
# small enough that a task holds a few megabytes, never a whole archive's headers.
BATCH_ROWS = 4096
BATCH_BYTES = 8 << 20


def manifest_schema(stored: bool = False) -> Any:
    """The manifest's Spark schema: of the rows ``index_archive`` yields, or as stored (with ``bucket``)."""
    from pyspark.sql import types as T

    kinds = {"string": T.StringType(), "long": T.LongType(), "int": T.IntegerType(), "timestamp": T.TimestampType()}
    return T.StructType([T.StructField(n, kinds[t], True) for n, t in (STORED_FIELDS if stored else MANIFEST_FIELDS)])


def arrow_schema(stored: bool = False) -> Any:
    """The manifest's Arrow schema, as Spark exchanges it (timestamps in microseconds, UTC)."""
    import pyarrow as pa

    kinds = {"string": pa.string(), "long": pa.int64(), "int": pa.int32(), "timestamp": pa.timestamp("us", tz="UTC")}
    return pa.schema([pa.field(n, kinds[t]) for n, t in (STORED_FIELDS if stored else MANIFEST_FIELDS)])


def rows_to_batch(rows: list[tuple], schema: Any = None) -> Any:
    """One Arrow record batch of manifest rows (tuples in ``FIELD_NAMES`` order)."""
    import pyarrow as pa

    schema = schema or arrow_schema()
    columns = list(zip(*rows)) if rows else [()] * len(schema)
    return pa.RecordBatch.from_arrays([_array(c, f.type) for c, f in zip(columns, schema)], schema=schema)


def _array(values: tuple, kind: Any) -> Any:
    """An Arrow array; a name read with surrogate escapes (bytes that are not UTF-8) keeps U+FFFD in their place."""
    import pyarrow as pa

    try:
        return pa.array(values, type=kind)
    except (UnicodeEncodeError, pa.ArrowInvalid):
        if not pa.types.is_string(kind):
            raise
        return pa.array([v if v is None else v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                         for v in values], type=kind)


def index_batches(archives: Iterable[dict[str, Any]], index_run: str, indexed_at: datetime,
                  coalesce_gap: int = tar_access.DEFAULT_COALESCE_GAP, max_header_bytes: int = MAX_HEADER_BYTES,
                  access: ArchiveAccess | None = None, batch_rows: int = BATCH_ROWS,
                  batch_bytes: int = BATCH_BYTES) -> Iterator[Any]:
    """The rows of ``archives`` (``index_archive`` for each) as Arrow record batches of at most ``batch_rows``
    rows, cut early once their header JSON passes ``batch_bytes``. ``access``: the input credentials."""
    schema = arrow_schema()
    json_at = FIELD_NAMES.index("header_json")
    rows: list[tuple] = []
    held = 0
    for archive in archives:
        for row in index_archive(archive, index_run, indexed_at, coalesce_gap, max_header_bytes, access):
            rows.append(row)
            held += len(row[json_at] or "")
            if len(rows) >= batch_rows or held >= batch_bytes:
                yield rows_to_batch(rows, schema)
                rows, held = [], 0
    if rows:
        yield rows_to_batch(rows, schema)


def member_kind(name: str) -> str:
    """header, pixels or other, from the member's extension."""
    lower = name.lower()
    if lower.endswith(HEADER_SUFFIXES):
        return "header"
    if lower.endswith(PIXEL_SUFFIXES):
        return "pixels"
    return "other"


def _row(**values: Any) -> tuple:
    return tuple(map(values.get, FIELD_NAMES))


def index_archive(archive: dict[str, Any], index_run: str, indexed_at: datetime,
                  coalesce_gap: int = tar_access.DEFAULT_COALESCE_GAP,
                  max_header_bytes: int = MAX_HEADER_BYTES, access: ArchiveAccess | None = None) -> Iterator[tuple]:
    """Manifest rows of one archive: one per member, then one archive-level row.

    ``archive`` has uri, role ('text' streams the data, 'images' reads headers
    only), size, etag and mtime. Errors become rows, never exceptions. A member
    above ``max_header_bytes`` is never read into memory (``too_large``). ``access``: the input credentials.
    """
    base = {
        "archive_uri": archive["uri"], "archive_role": archive["role"], "archive_size": archive["size"],
        "archive_etag": archive.get("etag"), "archive_mtime": archive.get("mtime"),
        "index_run": index_run, "indexed_at": indexed_at,
    }
    if archive.get("error") or not archive.get("is_archive", True):
        # Listed but not indexed as a tar: one archive-level row says why, so nothing in the prefix goes unseen.
        error, detail = (archive["error"], archive.get("error_detail")) if archive.get("error") else read_other_object(archive, access)
        yield _row(**base, kind="archive", member_type="archive", size=archive["size"], error=error, error_detail=detail)
        return
    with_data = archive["role"] == "text"
    error = detail = None
    members = 0
    try:
        for item in tar_access.iter_members(archive["uri"], archive["size"], with_data, coalesce_gap,
                                            max_header_bytes if with_data else None, access):
            if isinstance(item, tar_access.Damage):
                error, detail = item.reason, f"at offset {item.offset}: {item.detail}"
                break
            members += 1
            try:
                yield member_row(base, item, max_header_bytes)
            except Exception as exc:  # one odd member must not fail the job: it becomes a row with a reason
                log.warning("could not index %s in %s: %s", item.name, archive["uri"], type(exc).__name__)
                yield _row(**base, member_name=item.name, header_offset=item.header_offset, data_offset=item.data_offset,
                           size=item.size, kind=member_kind(item.name), member_type=item.type_name,
                           sop_instance_uid=member_uid(item.name), error="index_error",
                           error_detail=f"{type(exc).__name__}: {str(exc)[:200]}")
    except NotRestoredError as exc:
        error, detail = "not_restored", exc.detail
    yield _row(**base, kind="archive", member_type="archive", size=archive["size"], error=error,
               error_detail=detail if error else f"{members} members")


def member_row(base: dict[str, Any], m: tar_access.Member, max_header_bytes: int = MAX_HEADER_BYTES) -> tuple:
    kind = member_kind(m.name) if m.regular else "other"
    row: dict[str, Any] = dict(base, member_name=m.name, header_offset=m.header_offset, data_offset=m.data_offset,
                               size=m.size, kind=kind, member_type=m.type_name)
    if not m.regular:
        why = "its data is stored in pieces" if m.type_name == "sparse" else "no data follows its header"
        return _row(**row, error="non_regular_member", error_detail=f"{m.type_name} member skipped ({why})")
    if m.truncated:
        row["sop_instance_uid"] = member_uid(m.name)
        return _row(**row, error="truncated_archive", error_detail="the archive ends inside this member's data")
    if kind == "other":
        return _row(**row, error="unexpected_member", error_detail="neither .json header nor pixel member")
    uid = member_uid(m.name)
    row["sop_instance_uid"] = uid
    problem = uid_problem(uid)
    if problem:
        return _row(**row, error="invalid_uid", error_detail=f"member UID {uid!r} is {problem}")
    if kind == "header":
        if m.too_large:  # its data was stepped over, never read
            exc = too_large(m.size, max_header_bytes)
            return _row(**row, error=exc.reason, error_detail=exc.detail)
        if m.data is None:  # a header inside an image archive: indexed without data, so unusable
            return _row(**row, error="header_in_image_archive", error_detail="a .json member in an image archive")
        row.update(header_columns(m.data, uid, max_header_bytes))
    return _row(**row)


def header_columns(data: bytes, uid: str, max_header_bytes: int = MAX_HEADER_BYTES) -> dict[str, Any]:
    """Header JSON, the SHA-256 of its bytes and typed key tags; an error code when it is unusable (the header
    rules included). The hash is of the member as stored: copies that differ only in formatting are told apart
    where they meet (``reassembly.plan``), not here, so indexing never serialises a header again."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return {"error": "malformed_json", "error_detail": f"not UTF-8: {exc}"}
    try:
        header = parse_header(text, max_header_bytes)
        cols = key_tags(header)
        cols.pop("header_sop_instance_uid", None)
        cols.update(header_json=text, header_sha256=hashlib.sha256(data).hexdigest())
        prepare_header(header, uid, data)
    except HeaderError as exc:
        partial = locals().get("cols") or {}
        return {**partial, "error": exc.reason, "error_detail": exc.detail}
    return cols


def read_other_object(archive: dict[str, Any], access: ArchiveAccess | None = None) -> tuple[str, str]:
    """(reason, detail) for a listed object whose name is not an archive's: decided by its first bytes.

    ``compressed_archive`` when it starts with a compression format's magic
    number, ``not_an_archive`` otherwise; a read that fails keeps its cause
    (``access_denied``, ``broken_link``, ``not_found``, ...).
    """
    uri = archive["uri"]
    named = "its name is not in archive_suffixes, so it is not indexed"
    by_name = next((f for s, f in COMPRESSED_SUFFIXES if uri.lower().endswith(s)), None)
    try:
        head = reads.read_range(uri, 0, min(archive["size"], tar_access.BLOCK), access)
    except NotRestoredError:  # not worth a restore: its name already says it is no archive of ours
        if by_name:
            return "compressed_archive", f"{by_name} by its name, in Glacier and not read ({named})"
        return "not_an_archive", f"in Glacier and not read ({named})"
    except ReassemblyError as exc:
        return exc.reason, exc.detail
    except Exception as exc:  # a dropped connection costs this row's detail, not the job
        return "read_error", f"{type(exc).__name__}: {str(exc)[:200]}"
    compression = tar_access.compression_of(head)
    if compression:
        return "compressed_archive", f"{compression} data: decompress it to a .tar to have it indexed ({named})"
    if not head:
        return "not_an_archive", f"an empty object ({named})"
    if tar_access.is_tar_header(head):
        return "not_an_archive", f"a tar by its content, but {named}: rename it or add its suffix to archive_suffixes"
    return "not_an_archive", f"not a tar ({archive['size']} bytes; {named})"
