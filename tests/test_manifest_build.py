"""The manifest written by Spark in the lookup layout: what the files hold, what a lookup reads, the layout before
issue 20 read and rewritten, appended runs, merged groups and a write cut short.

Row groups are made small here (a few rows) so the sample delivery spans many of them; a lookup's reads are
counted through a wrapped pyarrow filesystem.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from helpers import ROOT, build_manifest

from dicom_reassembly.io import arrow_io
from dicom_reassembly.manifest import index, layout, listing
from dicom_reassembly.manifest import spark as manifest_spark
from dicom_reassembly.manifest.lookup import manifest_members, scan_members
from dicom_reassembly.run_id import new_run_id

sys.path.insert(0, ROOT)  # bench/ is a package at the repository root, not an installed one

from bench.arrowcount import counting_filesystem  # noqa: E402

CONTENT = [n for n in index.FIELD_NAMES if n not in ("index_run", "indexed_at")]


@pytest.fixture()
def small_row_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "ROW_GROUP_BYTES", 4096)
    monkeypatch.setattr(layout, "ROW_CHECK_MIN", 2)


def _delivery_copy(sample_delivery: Any, tmp_path: Any) -> tuple[str, str, dict]:
    root, expected = sample_delivery
    copy = tmp_path / "delivery"
    shutil.copytree(root, copy)
    return str(copy / "text"), str(copy / "images"), expected


def _value(v: Any) -> str:
    """A value as text; an instant as naive UTC (Spark stores timestamps as UTC instants, pyarrow reads them naive)."""
    if isinstance(v, datetime) and v.tzinfo is not None:
        v = v.astimezone(timezone.utc).replace(tzinfo=None)
    return str(v)


def _python_rows(text: str, images: str) -> Counter:
    """The rows indexing gives in Python, without Spark: what the manifest must hold (run columns aside)."""
    at = datetime.now(timezone.utc)
    run = new_run_id(at)
    rows = Counter()
    for a in listing.list_archives(text, images):
        for row in index.index_archive(a, run, at):
            values = dict(zip(index.FIELD_NAMES, row))
            rows[tuple(_value(values[c]) for c in CONTENT)] += 1
    return rows


def _stored_rows(manifest: str) -> Counter:
    table = pads.dataset(manifest, format="parquet").to_table(columns=CONTENT)
    return Counter(tuple(_value(r[c]) for c in CONTENT) for r in table.to_pylist())


def _members(m: Any) -> list[tuple]:
    return sorted((r["kind"], r["archive_uri"], r["data_offset"], r["size"], r.get("header_sha256"), r.get("error"))
                  for r in m.headers + m.pixels)


def test_a_build_writes_every_row_in_its_bucket_sorted_by_uid(spark: Any, sample_delivery: Any, tmp_path: Any,
                                                              small_row_groups: None) -> None:
    text, images, _ = _delivery_copy(sample_delivery, tmp_path)
    manifest = str(tmp_path / "manifest")
    build_manifest(spark, text, images, manifest)
    names = sorted(os.listdir(manifest))
    assert names and all(n.startswith("bucket-") for n in names), names  # nothing staged or unclustered is left
    assert _stored_rows(manifest) == _python_rows(text, images)
    files = layout.clustered_files(manifest)
    assert {f.role for f in files} == {"m", "a"} and len({f.group for f in files}) == 1
    row_groups = 0
    for f in files:
        pf = pq.ParquetFile(f.uri)
        row_groups += pf.metadata.num_row_groups
        rows = pf.read(columns=["kind", "archive_uri", "sop_instance_uid", "bucket"]).to_pylist()
        assert all((r["kind"] == "archive") == (f.role == "a") for r in rows)
        # Spark's crc32 and the lookup's agree: every row sits in the bucket Python computes for its key.
        keys = [r["archive_uri"] if f.role == "a" else r["sop_instance_uid"] or r["archive_uri"] for r in rows]
        assert {r["bucket"] for r in rows} == {f.bucket} == {layout.bucket_of(k, f.buckets) for k in keys}
        uids = [r["sop_instance_uid"] for r in rows]
        with_uid = [u for u in uids if u is not None]
        assert uids == [None] * (len(uids) - len(with_uid)) + sorted(with_uid)  # rows without a UID first
        first = pf.metadata.row_group(0)
        stats = {first.column(i).path_in_schema: first.column(i).is_stats_set for i in range(first.num_columns)}
        assert stats["sop_instance_uid"] and stats["kind"] and stats["archive_uri"]  # what a lookup prunes on
        if int(spark.version.split(".")[0]) >= 4:  # Parquet 1.15 disables a column's statistics, 1.13 cannot
            assert not stats["header_json"]
    assert row_groups > 2 * len(files)  # small row groups: a lookup has some to leave unread


def test_a_lookup_reads_one_bucket_and_few_row_groups(spark: Any, sample_delivery: Any, tmp_path: Any,
                                                     small_row_groups: None, monkeypatch: pytest.MonkeyPatch) -> None:
    text, images, expected = _delivery_copy(sample_delivery, tmp_path)
    manifest = str(tmp_path / "manifest")
    build_manifest(spark, text, images, manifest)
    fs, counter = counting_filesystem()
    monkeypatch.setattr(arrow_io, "arrow_filesystem", lambda uri: (fs, uri))
    for uid in sorted(expected["instances"])[:8]:
        counter.reset()
        got = manifest_members(uid, manifest)
        assert _members(got) == _members(scan_members(uid, text, images)) != []
        member_files = [p for p in counter.opens if "/bucket-m-" in p]
        assert len(member_files) == 1 and layout.bucket_of(uid, int(member_files[0].split("-")[-4])) == int(
            member_files[0].split("-")[-3])
        # Its footer (pyarrow reads the last 64 KB for it), then row groups that can hold the UID: never one whose
        # statistics rule it out, a few at most (pyarrow joins reads across small gaps).
        size = os.path.getsize(member_files[0])
        meta = pq.ParquetFile(member_files[0]).metadata
        uid_column = meta.schema.names.index("sop_instance_uid")
        touched, holding = set(), set()
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            chunks = [rg.column(c) for c in range(rg.num_columns)]
            starts = [c.data_page_offset if c.dictionary_page_offset is None else c.dictionary_page_offset
                      for c in chunks]
            start, end = min(starts), max(s + c.total_compressed_size for s, c in zip(starts, chunks))
            stats = rg.column(uid_column).statistics
            if stats is not None and stats.has_min_max and stats.min <= uid <= stats.max:
                holding.add(i)
            if any(p == member_files[0] and at < size - 65536 and at < end and start < at + n
                   for p, at, n in counter.ranges):
                touched.add(i)
        assert meta.num_row_groups >= 8 and holding and holding <= touched and len(touched) <= len(holding) + 2
        assert all("/bucket-a-" in p for p in counter.opens if p != member_files[0])  # then only archive rows


def _write_old_layout(spark: Any, text: str, images: str, manifest: str) -> None:
    """A manifest as the code before issue 20 wrote it: Python rows through createDataFrame, appended as is."""
    at = datetime.now(timezone.utc)
    run = new_run_id(at)
    todo = listing.list_archives(text, images)
    rdd = spark.sparkContext.parallelize(todo, 2).flatMap(lambda a: index.index_archive(a, run, at))
    spark.createDataFrame(rdd, index.manifest_schema(), verifySchema=False).write.mode("append").parquet(manifest)


def test_an_old_layout_manifest_is_read_then_rewritten_in_buckets_on_the_next_build(
        spark: Any, sample_delivery: Any, tmp_path: Any, small_row_groups: None) -> None:
    text, images, expected = _delivery_copy(sample_delivery, tmp_path)
    manifest = str(tmp_path / "manifest")
    _write_old_layout(spark, text, images, manifest)
    assert layout.unclustered_files(manifest) and not layout.clustered_files(manifest)
    uids = sorted(expected["instances"])[:6]
    before = {u: _members(manifest_members(u, manifest)) for u in uids}
    assert all(before[u] == _members(scan_members(u, text, images)) != [] for u in uids)
    rows = _stored_rows(manifest)
    spark_rows = manifest_spark.read_manifest(spark, manifest).count()

    build_manifest(spark, text, images, manifest)  # nothing new to index: the build only rewrites the layout
    assert not layout.unclustered_files(manifest) and layout.clustered_files(manifest)
    assert {u: _members(manifest_members(u, manifest)) for u in uids} == before
    assert _stored_rows(manifest) == rows and manifest_spark.read_manifest(spark, manifest).count() == spark_rows
    runs = {r["index_run"] for r in pads.dataset(manifest, format="parquet").to_table(columns=["index_run"]).to_pylist()}
    assert len(runs) == 1 and "+c" in runs.pop()  # the copy of the old run, marked as a compaction's


def _rewrite_archive_reordered(text: str) -> str:
    """Rewrite the first text archive with its members in reverse order: same content, new offsets and ETag."""
    import tarfile

    path = os.path.join(text, sorted(os.listdir(text))[0])
    with tarfile.open(path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for m, data in reversed(members):
            tf.addfile(m, __import__("io").BytesIO(data))
    return path


def test_a_second_build_appends_a_group_the_newest_index_wins_and_groups_merge(
        spark: Any, sample_delivery: Any, tmp_path: Any, small_row_groups: None) -> None:
    text, images, expected = _delivery_copy(sample_delivery, tmp_path)
    manifest = str(tmp_path / "manifest")
    build_manifest(spark, text, images, manifest)
    changed = _rewrite_archive_reordered(text)
    build_manifest(spark, text, images, manifest)
    assert len({f.group for f in layout.clustered_files(manifest)}) == 2
    uids = sorted(expected["instances"])
    in_changed = [u for u in uids if any(h["archive_uri"] == changed for h in manifest_members(u, manifest).headers)]
    assert in_changed
    want = {u: _members(scan_members(u, text, images)) for u in uids}
    assert {u: _members(manifest_members(u, manifest)) for u in uids} == want
    newest = manifest_spark.read_manifest(spark, manifest)
    assert newest.count() == sum(_python_rows(text, images).values())

    plan = manifest_spark.merge_small_groups(spark, manifest, max_groups=1)
    assert plan is not None and len({f.group for f in layout.clustered_files(manifest)}) == 1
    assert {u: _members(manifest_members(u, manifest)) for u in uids} == want
    assert _stored_rows(manifest) == _python_rows(text, images)  # the older index of the changed archive is gone


def test_a_write_cut_short_counts_for_nothing_until_the_next_build_finishes_it(
        spark: Any, sample_delivery: Any, tmp_path: Any, small_row_groups: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    text, images, expected = _delivery_copy(sample_delivery, tmp_path)
    manifest = str(tmp_path / "manifest")
    real_move = manifest_spark.writes.move

    def die_at_archive_rows(src: str, dst: str) -> None:
        if "/bucket-a-" in dst:
            raise OSError("the driver died")
        real_move(src, dst)

    monkeypatch.setattr(manifest_spark.writes, "move", die_at_archive_rows)
    with pytest.raises(OSError):
        build_manifest(spark, text, images, manifest)
    monkeypatch.setattr(manifest_spark.writes, "move", real_move)
    uid = sorted(expected["instances"])[0]
    assert [f.role for f in layout.clustered_files(manifest)] == ["m"] * len(layout.clustered_files(manifest))
    assert _members(manifest_members(uid, manifest)) == []  # member rows without their archive rows count for nothing
    assert manifest_spark.read_manifest(spark, manifest).count() == 0
    build_manifest(spark, text, images, manifest)  # finishes the move; nothing is indexed twice
    assert len({f.group for f in layout.clustered_files(manifest)}) == 1
    assert _members(manifest_members(uid, manifest)) == _members(scan_members(uid, text, images))
    assert not [n for n in os.listdir(manifest) if n.startswith("_staging")]
