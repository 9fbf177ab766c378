"""The manifest laid out for lookups: rows in hash buckets by UID, sorted by UID, in small row groups.

Every file sits at the manifest's root, so Spark, pyarrow and DuckDB read old and new files together:

- ``bucket-m-<N>-<k>-<group>-<seq>.parquet``: member rows (every kind but ``archive``) whose key falls in bucket
  ``k`` of ``N``, sorted by ``sop_instance_uid`` (rows without one first, by archive), in row groups of about
  ``ROW_GROUP_BYTES``. The key is the UID, or the archive's URI for a row without a UID.
- ``bucket-a-<N>-<k>-<group>-<seq>.parquet``: archive-level rows (``kind == 'archive'``), keyed and sorted by
  ``archive_uri``. They decide each archive's newest index, so a lookup reads them for its archives only.
- any other ``.parquet`` (Spark's ``part-*``): unclustered rows, the layout before issue 20; read in full until the
  next build rewrites them (``manifest.spark.compact_manifest``).

``bucket = crc32(UTF-8 key) mod N``: Spark's ``crc32`` and zlib's agree, so Spark writes what Python looks up. A
group is what one write produced (a build's run, or a compaction), with its own ``N``, chosen from its size so
that a bucket file holds about ``TARGET_BUCKET_BYTES``: a lookup then reads one footer and one row group per
group, however large the manifest grows. ``N`` is in the names, so groups of different sizes live side by side.

Why not Hive folders (``bucket=k/``): Spark silently leaves out the files at a root that also has partition
folders, and skips non-partition sub-folders (a root with 10 rows in each layout read as 10 rows), so the old
files and the new could not be read together while a build rewrites them.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, NotFoundError
from ..io import arrow_io, uris
from ..io import listing as io_listing

log = logging.getLogger(__name__)

MEMBERS, ARCHIVES = "m", "a"
PREFIX = "bucket-"
# A lookup reads a bucket file's footer and one row group. Row groups of 1 MB before compression are ~300 KB on
# disk; the footer holds ~140 bytes per column per row group, ~5.6 KB a row group. Bucket files of 8-16 MB (the
# bucket count is a power of two) keep the footer at 150-300 KB, so a lookup reads 0.5-0.6 MB per group whatever
# the manifest's size; larger files would mean fewer files per write and a larger footer (about sqrt(size)).
TARGET_BUCKET_BYTES = 16 << 20
ROW_GROUP_BYTES = 1 << 20
ROW_CHECK_MIN = 100  # Parquet's default: rows written before a row group's size is first checked
MAX_BUCKETS = 1 << 16
# Manifest bytes per archive byte, to size a build's buckets before its rows exist: header JSON compresses to
# about a third of the text archives; a pixel member's row is ~150 bytes for a member of ~100 KB and more.
TEXT_SHARE = 0.35
IMAGE_SHARE = 0.002
ARCHIVE_ROW_BYTES = 300
_NAME = re.compile(r"bucket-([ma])-(\d+)-(\d+)-([^-/]+)-(\d+)\.parquet")
_COMPACTED = re.compile(r"\+c[^+]*$")


@dataclass(frozen=True)
class BucketFile:
    """One clustered file: its URI, size, role (``m`` or ``a``), bucket count, bucket and group."""

    uri: str
    size: int
    role: str
    buckets: int
    bucket: int
    group: str


def key_bytes(key: str) -> bytes:
    """A key's UTF-8 bytes as Spark sees the string (bytes that were not UTF-8 became U+FFFD on the way in)."""
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError:
        return key.encode("utf-8", "surrogateescape").decode("utf-8", "replace").encode("utf-8")


def bucket_of(key: str, buckets: int) -> int:
    """The bucket of ``key`` among ``buckets``: crc32 of its UTF-8 bytes, mod the count (as Spark computes it)."""
    return zlib.crc32(key_bytes(key)) % buckets


def bucket_count(nbytes: float, minimum: int = 1) -> int:
    """Buckets for about ``nbytes`` of manifest: a power of two, at least ``minimum`` (rounded up to one)."""
    want = max(minimum, math.ceil(nbytes / TARGET_BUCKET_BYTES), 1)
    return min(MAX_BUCKETS, 1 << (want - 1).bit_length())


def estimated_bytes(archives: Iterable[dict[str, Any]]) -> tuple[float, float]:
    """(member rows' bytes, archive rows' bytes) a build of ``archives`` will write, from their sizes alone."""
    members = archive_rows = 0.0
    for a in archives:
        members += a["size"] * (TEXT_SHARE if a["role"] == "text" else IMAGE_SHARE)
        archive_rows += ARCHIVE_ROW_BYTES
    return members, archive_rows


def group_of(run_id: str) -> str:
    """The group name of a write from its run id (``run_id.new_run_id``): its ``-`` dropped, as names split on it."""
    return run_id.replace("-", "")


def file_name(role: str, buckets: int, bucket: int, group: str, seq: int) -> str:
    """The name of one clustered file."""
    if "-" in group or "/" in group:
        raise ValueError(f"group {group!r} holds '-' or '/'")
    return f"{PREFIX}{role}-{buckets}-{bucket}-{group}-{seq}.parquet"


def compacted_run(index_run: str, group: str) -> str:
    """The index run of a row a compaction rewrote: the original's, marked ``+c<group>``.

    It sorts after the original and before any later run, so each archive's newest index stays the same rows,
    and while both copies exist (the compaction published, its inputs not yet deleted) the copy wins.
    """
    return _COMPACTED.sub("", index_run) + "+c" + group


def clustered_files(manifest: str) -> list[BucketFile]:
    """Every clustered file of the manifest."""
    out = []
    for obj in io_listing.list_dataset_files(manifest, PREFIX):
        m = _NAME.fullmatch(uris.basename(obj.uri))
        if m:
            out.append(BucketFile(obj.uri, obj.size, m[1], int(m[2]), int(m[3]), m[4]))
    return out


def unclustered_files(manifest: str) -> list[io_listing.ObjectInfo]:
    """The manifest's ``.parquet`` files in no bucket (the layout before issue 20), sub-folders included as
    pyarrow reads them; on S3 the listing skips the clustered files' key range."""
    return [o for o in io_listing.list_dataset_files(manifest, recursive=True, skip=PREFIX)
            if o.uri.endswith(".parquet")]


def bucket_counts(manifest: str, role: str) -> list[int]:
    """The bucket counts the groups of ``role`` files use (one listing request on S3)."""
    return sorted(int(head[len(PREFIX) + 2:-1]) for head in io_listing.name_prefixes(manifest, f"{PREFIX}{role}-", "-"))


def bucket_files(manifest: str, role: str, key: str, counts: Sequence[int] | None = None) -> list[str]:
    """The files of every group that can hold ``key``'s rows of ``role``: one bucket per bucket count present
    (``counts``, listed when not given)."""
    found = []
    for buckets in bucket_counts(manifest, role) if counts is None else counts:
        prefix = f"{PREFIX}{role}-{buckets}-{bucket_of(key, buckets)}-"
        found += [o.uri for o in io_listing.list_dataset_files(manifest, prefix)]
    return found


def read_uid_rows(manifest: str, uid: str, columns: Sequence[str]) -> Any:
    """``uid``'s member rows of each archive's newest index run, with ``columns``, as an Arrow table.

    Reads the UID's bucket in each group, then the archive rows of the archives found (their own buckets), and
    every unclustered file in full. Raises as ``arrow_io.open_manifest`` does for a missing or foreign manifest.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    legacy = [o.uri for o in unclustered_files(manifest)]
    members = bucket_files(manifest, MEMBERS, uid) + legacy
    if not members:  # no file can hold the UID: read one footer, for the schema (and to know there is a manifest)
        first = next(iter(io_listing.list_dataset_files(manifest, PREFIX)), None)
        if first is None:
            raise NotFoundError("manifest_not_found", "no manifest dataset here", uri=manifest)
        members = [first.uri]
    cols = list(dict.fromkeys([*columns, "archive_uri", "index_run"]))
    with arrow_io.manifest_errors(manifest):
        rows = _scan(manifest, members, cols, pads.field("sop_instance_uid") == uid)
        archives = sorted(set(rows.column("archive_uri").drop_null().to_pylist()))
        if not archives:
            return rows.select(list(columns))
        counts = bucket_counts(manifest, ARCHIVES)
        archive_files = sorted({f for a in archives for f in bucket_files(manifest, ARCHIVES, a, counts)}) + legacy
        flt = (pads.field("kind") == "archive") & pads.field("archive_uri").isin(pa.array(archives, pa.string()))
        found = _scan(manifest, archive_files, ["archive_uri", "index_run"], flt).to_pylist() if archive_files else []
    newest: dict[str, str] = {}
    for r in found:  # a run that never wrote its archive row (it died) is nobody's newest
        if r["index_run"] is not None and r["index_run"] > newest.get(r["archive_uri"], ""):
            newest[r["archive_uri"]] = r["index_run"]
    keys = pc.binary_join_element_wise(rows.column("archive_uri"), rows.column("index_run"), "\x00")
    keep = pc.is_in(keys, value_set=pa.array([f"{a}\x00{r}" for a, r in newest.items()], pa.string()))
    return rows.filter(keep).select(list(columns))


def _scan(manifest: str, files: list[str], columns: list[str], flt: Any) -> Any:
    """The rows of ``files`` matching ``flt``: row groups whose statistics rule them out are not read."""
    import pyarrow.dataset as pads

    filesystem, _ = arrow_io.arrow_filesystem(manifest)
    if filesystem is None:
        from pyarrow import fs

        filesystem = fs.LocalFileSystem()
    parquet = pads.ParquetFileFormat()
    fragments = [parquet.make_fragment(f[len(uris.S3_PREFIX):] if uris.is_s3(f) else f, filesystem) for f in files]
    # Each footer is read once, here; the scan reuses it to choose row groups (pads.dataset would read it twice).
    for fragment in fragments:
        fragment.ensure_complete_metadata()
    dataset = pads.FileSystemDataset(fragments, fragments[0].physical_schema, parquet, filesystem)
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise ConfigError("manifest_bad_schema", f"manifest lacks columns {', '.join(missing)}", uri=manifest)
    return dataset.to_table(columns=columns, filter=flt)
