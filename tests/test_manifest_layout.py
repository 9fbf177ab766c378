"""The manifest's lookup layout without Spark: bucket files, what a lookup reads, moving a write in; local and S3.

Files are written here with pyarrow in the layout's names (the Spark writer is tested in test_manifest_build.py),
so a test can make a file unreadable and prove the lookup never opened it.
"""

from __future__ import annotations

import io
import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicom_reassembly.io import clients
from dicom_reassembly.io import listing as io_listing
from dicom_reassembly.manifest import layout
from dicom_reassembly.manifest import spark as manifest_spark
from dicom_reassembly.manifest.lookup import manifest_members

COLUMNS = [("archive_uri", pa.string()), ("archive_size", pa.int64()), ("index_run", pa.string()),
           ("member_name", pa.string()), ("data_offset", pa.int64()), ("size", pa.int64()), ("kind", pa.string()),
           ("sop_instance_uid", pa.string()), ("error", pa.string()), ("error_detail", pa.string()),
           ("header_json", pa.string()), ("header_sha256", pa.string()), ("study_instance_uid", pa.string()),
           ("series_instance_uid", pa.string()), ("modality", pa.string()), ("bucket", pa.int32())]
SCHEMA = pa.schema(COLUMNS)
UIDS = [f"1.2.826.0.1.3680043.10.{i}" for i in range(40)]


def _rows(archive: str, run: str, kind: str, uids: list[str]) -> list[dict[str, Any]]:
    return [{"archive_uri": archive, "index_run": run, "kind": kind, "member_name": f"{u}.{kind}",
             "data_offset": 512 * (i + 1), "size": 100 + i, "sop_instance_uid": u} for i, u in enumerate(uids)]


def _archive_row(archive: str, run: str) -> dict[str, Any]:
    return {"archive_uri": archive, "index_run": run, "kind": "archive"}


def _parquet(rows: list[dict[str, Any]], sort: str) -> bytes:
    table = pa.Table.from_pylist(rows, schema=SCHEMA).sort_by([(sort, "ascending")])
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=4)  # many row groups, so the lookup has some to leave unread
    return buf.getvalue()


def _group_files(group: str, members: list[dict[str, Any]], archives: list[dict[str, Any]],
                 buckets: int = 4) -> dict[str, bytes]:
    """One group in the layout: member rows by UID bucket, archive rows by archive bucket (one bucket)."""
    files = {}
    for k in range(buckets):
        mine = [dict(r, bucket=k) for r in members if layout.bucket_of(r["sop_instance_uid"], buckets) == k]
        if mine:
            files[layout.file_name("m", buckets, k, group, 0)] = _parquet(mine, "sop_instance_uid")
    files[layout.file_name("a", 1, 0, group, 0)] = _parquet([dict(r, bucket=0) for r in archives], "archive_uri")
    return files


def _manifest_files() -> dict[str, bytes]:
    """Three writes over archives t (headers) and i (pixels), and a file in the layout before issue 20.

    w9 indexed t and i (run r1); w1 indexed t again (r2; its headers moved by 7 bytes); w5 died after writing i's
    member rows (r3, no archive row), so r1's rows of i still count. Group names do not follow run order, as
    nothing says they must. The unclustered part-file holds archive u, alone.
    """
    files = {}
    files.update(_group_files("w9", _rows("t", "r1", "header", UIDS) + _rows("i", "r1", "pixels", UIDS),
                              [_archive_row("t", "r1"), _archive_row("i", "r1")]))
    moved = [dict(r, data_offset=r["data_offset"] + 7) for r in _rows("t", "r2", "header", UIDS)]
    files.update(_group_files("w1", moved, [_archive_row("t", "r2")]))
    files.update({k: v for k, v in _group_files("w5", _rows("i", "r3", "pixels", UIDS), []).items() if "-m-" in k})
    legacy = pa.Table.from_pylist(_rows("u", "r0", "pixels", UIDS[:3]) + [_archive_row("u", "r0")],
                                  schema=SCHEMA.remove(SCHEMA.get_field_index("bucket")))
    buf = io.BytesIO()
    pq.write_table(legacy, buf)
    files["part-00000-legacy.c000.snappy.parquet"] = buf.getvalue()
    return files


def _corrupt_other_buckets(files: dict[str, bytes], uid: str) -> dict[str, bytes]:
    """The files no lookup of ``uid`` may open, made unreadable: member files of other buckets."""
    out = {}
    for name, data in files.items():
        f = layout._NAME.fullmatch(name)
        other = f and f[1] == "m" and int(f[3]) != layout.bucket_of(uid, int(f[2]))
        out[name] = b"not parquet" if other else data
    return out


def _found(manifest: str, uid: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    got = manifest_members(uid, manifest)
    return (sorted((h["archive_uri"], h["data_offset"]) for h in got.headers),
            sorted((p["archive_uri"], p["data_offset"]) for p in got.pixels))


def _want(uid: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    at = 512 * (UIDS.index(uid) + 1)
    return [("t", at + 7)], sorted([("i", at)] + ([("u", at)] if uid in UIDS[:3] else []))


@pytest.mark.parametrize("uid", [UIDS[0], UIDS[2], UIDS[17], UIDS[39]])
def test_a_lookup_reads_only_its_buckets_and_each_archives_newest_index(tmp_path: Any, uid: str) -> None:
    for name, data in _corrupt_other_buckets(_manifest_files(), uid).items():
        (tmp_path / name).write_bytes(data)
    assert _found(str(tmp_path), uid) == _want(uid)


def test_a_lookup_on_s3_lists_by_name_and_reads_the_same(s3: Any) -> None:
    clients._clients.clear()
    bucket = f"layout-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    uid = UIDS[1]
    for name, data in _corrupt_other_buckets(_manifest_files(), uid).items():
        s3.put_object(Bucket=bucket, Key=f"m/{name}", Body=data)
    s3.put_object(Bucket=bucket, Key="m/_staging-g9/_role=m/_b=0/part-00000-x.c000.snappy.parquet", Body=b"junk")
    assert _found(f"s3://{bucket}/m", uid) == _want(uid)
    legacy = [o.uri for o in layout.unclustered_files(f"s3://{bucket}/m")]
    assert legacy == [f"s3://{bucket}/m/part-00000-legacy.c000.snappy.parquet"]


def test_an_unknown_uid_reads_no_row_and_a_missing_manifest_is_an_error(tmp_path: Any) -> None:
    from dicom_reassembly.errors import NotFoundError

    for name, data in _manifest_files().items():
        (tmp_path / name).write_bytes(data)
    none = manifest_members("1.2.3.404", str(tmp_path))
    assert (none.headers, none.pixels) == ([], [])
    with pytest.raises(NotFoundError) as err:
        manifest_members(UIDS[0], str(tmp_path / "nothing"))
    assert err.value.reason == "manifest_not_found"


def test_dataset_listing_skips_hidden_names_and_the_skipped_range_locally_and_on_s3(tmp_path: Any, s3: Any) -> None:
    clients._clients.clear()
    bucket = f"layout-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    names = ["a.parquet", "bucket-m-2-0-g-0.parquet", "bucket-m-2-1-g-0.parquet", "bucket-m-16-3-h-0.parquet",
             "bucket-a-1-0-g-0.parquet", "bucket.parquet", "part-0.parquet", "sub/part-1.parquet", "_SUCCESS",
             "_staging-g/_role=m/x.parquet", ".hidden.parquet", "_staging-g.json"]
    for name in names:
        os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
        s3.put_object(Bucket=bucket, Key=f"m/{name}", Body=b"x")
    for root in (str(tmp_path), f"s3://{bucket}/m"):
        def names_of(objs: Any, root: str = root) -> list[str]:
            return [(o if isinstance(o, str) else o.uri)[len(root) + 1:].replace(os.sep, "/") for o in objs]

        assert names_of(io_listing.list_dataset_files(root, recursive=True, skip="bucket-")) == [
            "a.parquet", "bucket.parquet", "part-0.parquet", "sub/part-1.parquet"]
        assert names_of(io_listing.list_dataset_files(root, "bucket-m-2-")) == [
            "bucket-m-2-0-g-0.parquet", "bucket-m-2-1-g-0.parquet"]
        assert io_listing.name_prefixes(root, "bucket-m-", "-") == ["bucket-m-16-", "bucket-m-2-"]
        assert io_listing.name_prefixes(root, "_staging-", ".json") == ["_staging-g.json"]
        key = next(k for k in map(str, range(1000)) if layout.bucket_of(k, 16) == 3)
        assert layout.bucket_counts(root, "m") == [2, 16] and layout.bucket_counts(root, "a") == [1]
        assert names_of(layout.bucket_files(root, "m", key)) == [
            f"bucket-m-2-{layout.bucket_of(key, 2)}-g-0.parquet", "bucket-m-16-3-h-0.parquet"]


def test_bucket_counts_are_powers_of_two_sized_by_bytes() -> None:
    t = layout.TARGET_BUCKET_BYTES
    assert [layout.bucket_count(b) for b in (0, 1, t, t + 1, 3 * t, 4 * t, 5 * t)] == [1, 1, 1, 2, 4, 4, 8]
    assert layout.bucket_count(10, minimum=3) == 4
    assert layout.bucket_count(10**30) == layout.MAX_BUCKETS


def test_the_bucket_of_a_key_is_crc32_of_its_utf8_bytes_mod_the_count() -> None:
    import zlib

    assert layout.bucket_of("1.2.3", 16) == zlib.crc32(b"1.2.3") % 16
    assert layout.bucket_of("s3://b/\u00e9.tar", 7) == zlib.crc32("s3://b/\u00e9.tar".encode()) % 7
    assert layout.bucket_of("bad\udcff", 8) == zlib.crc32("bad\ufffd".encode()) % 8  # as Spark received it


RUNS = st.from_regex(r"20[0-9]{2}[01][0-9][0-3][0-9]T[0-9]{12}Z", fullmatch=True)


@given(RUNS, RUNS, RUNS, RUNS)
def test_a_compacted_run_sorts_after_its_original_and_before_any_later_run(a: str, b: str, g: str, h: str) -> None:
    first, later = sorted((a, b))
    once = layout.compacted_run(first, g)
    assert first < once
    if later != first:
        assert once < later and layout.compacted_run(once, h) < later
    assert layout.compacted_run(once, h) == layout.compacted_run(first, h)  # a second compaction replaces the mark


def test_a_staged_write_is_moved_in_members_first_and_its_inputs_deleted(tmp_path: Any, s3: Any) -> None:
    clients._clients.clear()
    bucket = f"layout-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    staged = {"_role=a/_b=0/part-00003-1f2c9e4d.c000.snappy.parquet": b"A",
              "_role=m/_b=1/part-00001-1f2c9e4d.c000.snappy.parquet": b"M1",
              "_role=m/_b=0/part-00000-1f2c9e4d.c000.snappy.parquet": b"M0",
              "_role=m/_b=0/part-00000-1f2c9e4d.c001.snappy.parquet": b"M0b", "_SUCCESS": b""}
    plan = {"group": "g7", "member_buckets": 2, "archive_buckets": 1, "inputs": []}
    for root, put in ((str(tmp_path), lambda k, v: (os.makedirs(os.path.dirname(tmp_path / k), exist_ok=True),
                                                    (tmp_path / k).write_bytes(v))),
                      (f"s3://{bucket}/m", lambda k, v: s3.put_object(Bucket=bucket, Key=f"m/{k}", Body=v))):
        put("part-00000-old.c000.snappy.parquet", b"old")
        plan["inputs"] = [f"{root}/part-00000-old.c000.snappy.parquet"]
        for name, data in staged.items():
            put(f"_staging-g7/{name}", data)
        put("_staging-g7.json", __import__("json").dumps(plan).encode())
        moves: list[str] = []
        real_move = manifest_spark.writes.move

        def record(src: str, dst: str, moves: list[str] = moves, real_move: Any = real_move) -> None:
            moves.append(dst.rsplit("/", 1)[-1])
            real_move(src, dst)

        manifest_spark.writes.move = record
        try:
            manifest_spark.finish_pending(root)
        finally:
            manifest_spark.writes.move = real_move
        assert moves == ["bucket-m-2-0-g7-0.parquet", "bucket-m-2-0-g7-1.parquet", "bucket-m-2-1-g7-1000.parquet",
                         "bucket-a-1-0-g7-3000.parquet"]
        left = sorted(o.uri[len(root) + 1:] for o in io_listing.list_objects(root))
        assert left == sorted(moves)  # the input, the staging folder and the plan are gone


def test_a_staged_write_that_never_committed_is_removed_and_its_inputs_kept(tmp_path: Any) -> None:
    (tmp_path / "_staging-g8" / "_role=m" / "_b=0").mkdir(parents=True)
    (tmp_path / "_staging-g8" / "_role=m" / "_b=0" / "part-00000-x.c000.snappy.parquet").write_bytes(b"half")
    (tmp_path / "part-0.parquet").write_bytes(b"input")
    (tmp_path / "_staging-g8.json").write_text(
        '{"group": "g8", "member_buckets": 1, "archive_buckets": 1, "inputs": ["%s"]}' % (tmp_path / "part-0.parquet"))
    manifest_spark.finish_pending(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["part-0.parquet"]


def test_a_staged_file_named_otherwise_stops_the_move_and_nothing_is_deleted(tmp_path: Any) -> None:
    from dicom_reassembly.errors import StorageError

    odd = tmp_path / "_staging-g9" / "_role=m" / "_b=0" / "rows-from-another-committer.parquet"
    odd.parent.mkdir(parents=True)
    odd.write_bytes(b"rows")
    (tmp_path / "part-0.parquet").write_bytes(b"input")
    (tmp_path / "_staging-g9" / "_SUCCESS").write_bytes(b"")
    (tmp_path / "_staging-g9.json").write_text(
        '{"group": "g9", "member_buckets": 1, "archive_buckets": 1, "inputs": ["%s"]}' % (tmp_path / "part-0.parquet"))
    with pytest.raises(StorageError) as err:
        manifest_spark.move_in(str(tmp_path), {"group": "g9", "member_buckets": 1, "archive_buckets": 1,
                                               "inputs": [str(tmp_path / "part-0.parquet")]})
    assert err.value.reason == "unexpected_staged_file"
    assert odd.read_bytes() == b"rows" and (tmp_path / "part-0.parquet").read_bytes() == b"input"
