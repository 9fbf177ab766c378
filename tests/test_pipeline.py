"""The Spark pipeline in-process on the shared session: transforms (chispa) and whole runs."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import numpy as np
import pytest
from chispa import assert_df_equality
from helpers import ROOT, build_manifest, dcmftest_ok
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicom_reassembly.config import Config
from dicom_reassembly.manifest import index
from dicom_reassembly.manifest import listing as manifest_listing
from dicom_reassembly.manifest import spark as manifest_spark
from dicom_reassembly.manifest.spark import indexed_archives
from dicom_reassembly.reassembly.run import ReassembleRun
from dicom_reassembly.reassembly.tasks import partition_keys, plan_reassembly_tasks
from dicom_reassembly.reassembly.transforms import with_archive_locality, with_manifest_damage, with_members_by_uid
from dicom_reassembly.records.ledger import STATUSES

pytestmark = pytest.mark.spark

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _manifest_rows(spark, rows: list[dict]):  # noqa: ANN001, ANN202
    return spark.createDataFrame([tuple(r.get(n) for n in index.FIELD_NAMES) for r in rows], index.manifest_schema())


def test_with_latest_index_keeps_only_the_newest_index_of_each_archive(spark) -> None:  # noqa: ANN001
    rows = [
        {"archive_uri": "a", "index_run": "1", "kind": "archive"},
        {"archive_uri": "a", "index_run": "1", "kind": "pixels", "member_name": "old.j2c"},
        {"archive_uri": "a", "index_run": "2", "kind": "archive"},
        {"archive_uri": "a", "index_run": "2", "kind": "pixels", "member_name": "new.j2c"},
        {"archive_uri": "b", "index_run": "1", "kind": "archive"},
        {"archive_uri": "b", "index_run": "1", "kind": "header", "member_name": "h.json"},
    ]
    got = _manifest_rows(spark, rows).transform(manifest_spark.with_latest_index).select("archive_uri", "index_run", "member_name")
    expected = spark.createDataFrame(
        [("a", "2", None), ("a", "2", "new.j2c"), ("b", "1", None), ("b", "1", "h.json")],
        "archive_uri string, index_run string, member_name string")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_with_manifest_damage_maps_archives_and_odd_members_to_statuses(spark) -> None:  # noqa: ANN001
    rows = [
        {"archive_uri": "t.tar", "archive_role": "text", "kind": "archive", "error": "not_a_tar", "error_detail": "x"},
        {"archive_uri": "i.tar", "archive_role": "images", "kind": "archive", "error": "not_restored", "error_detail": "g"},
        {"archive_uri": "ok.tar", "archive_role": "images", "kind": "archive"},
        {"archive_uri": "t2.tar", "archive_role": "text", "kind": "other", "member_name": "d",
         "error": "non_regular_member", "error_detail": "directory member skipped"},
        {"archive_uri": "i2.tar", "archive_role": "images", "kind": "pixels", "member_name": "1.02.j2c",
         "sop_instance_uid": "1.02", "error": "invalid_uid", "error_detail": "bad"},
        {"archive_uri": "i2.tar", "archive_role": "images", "kind": "pixels", "member_name": "1.2.j2c", "sop_instance_uid": "1.2"},
    ]
    got = _manifest_rows(spark, rows).transform(with_manifest_damage).select(
        "status", "header_archive", "header_member", "pixel_archive", "pixel_member")
    expected = spark.createDataFrame([
        ("unreadable_archive", "t.tar", None, None, None),
        ("not_restored", None, None, "i.tar", None),
        ("invalid_header", "t2.tar", "d", None, None),
        ("invalid_pixels", None, None, "i2.tar", "1.02.j2c"),
    ], "status string, header_archive string, header_member string, pixel_archive string, pixel_member string")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_with_members_by_uid_groups_both_halves_and_keeps_orphans(spark) -> None:  # noqa: ANN001
    rows = [
        {"archive_uri": "t", "kind": "header", "member_name": "1.2.json", "sop_instance_uid": "1.2"},
        {"archive_uri": "i", "kind": "pixels", "member_name": "1.2.j2c", "sop_instance_uid": "1.2"},
        {"archive_uri": "j", "kind": "pixels", "member_name": "1.2.j2c", "sop_instance_uid": "1.2"},
        {"archive_uri": "t", "kind": "header", "member_name": "1.3.json", "sop_instance_uid": "1.3"},
        {"archive_uri": "i", "kind": "pixels", "member_name": "1.4.j2c", "sop_instance_uid": "1.4"},
    ]
    got = _manifest_rows(spark, rows).transform(with_members_by_uid)
    counts = {r["sop_instance_uid"]: (len(r["headers"] or []), len(r["pixels"] or [])) for r in got.collect()}
    assert counts == {"1.2": (1, 2), "1.3": (1, 0), "1.4": (0, 1)}


def test_with_archive_locality_puts_each_archive_in_one_partition_in_offset_order(spark) -> None:  # noqa: ANN001
    data = [(f"a{i % 5}", (i * 7919) % 1000, 10 + i) for i in range(60)]
    df = (spark.createDataFrame(data, "pixel_archive string, pixel_offset long, pixel_size long")
          .transform(with_archive_locality(3)))
    assert "Exchange" not in df._jdf.queryExecution().executedPlan().toString().split("Exchange", 1)[1], \
        "the per-archive window must reuse the archive partitioning, not shuffle again"
    parts = df.rdd.glom().collect()
    seen: dict[str, int] = {}
    for p, rows in enumerate(parts):
        for archive, group in _runs(rows):
            assert archive not in seen, "an archive was split across partitions or runs"
            seen[archive] = p
            offsets = [r["pixel_offset"] for r in group]
            assert offsets == sorted(offsets)
            mine = [d for d in data if d[0] == archive]
            assert {r["archive_wanted"] for r in group} == {sum(d[2] for d in mine)}
            assert {r["archive_end"] for r in group} == {max(d[1] + d[2] for d in mine)}
    assert set(seen) == {f"a{i}" for i in range(5)}


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_partition_keys_land_in_the_partition_they_were_found_for(spark, n: int) -> None:  # noqa: ANN001
    keys = partition_keys(spark, n)
    parts = spark.createDataFrame([(k,) for k in keys], "k long").repartition(n, "k").rdd.glom().collect()
    assert [[r["k"] for r in part] for part in parts] == [[k] for k in keys]


def test_archives_are_spread_over_tasks_by_bytes_and_stay_whole(spark) -> None:  # noqa: ANN001
    # Two big archives and many small ones: each task should get one big archive and half the small ones.
    sizes = {"big-a": 1000, "big-b": 950, **{f"small-{i:02d}": 40 for i in range(24)}}
    data = [("pending", a, off * 100, size // 4) for a, size in sizes.items() for off in range(4)]
    plan = spark.createDataFrame(data, "status string, pixel_archive string, pixel_offset long, pixel_size long")
    tasks, keys = plan_reassembly_tasks(plan, configured=2, task_bytes=1 << 30)
    assert tasks == 2 and keys is not None
    work = plan.transform(with_archive_locality(tasks, keys))
    shuffles = work._jdf.queryExecution().executedPlan().toString().count("Exchange hashpartitioning")
    assert shuffles == 1, "the per-archive window must reuse the task partitioning, not shuffle again"
    assert "task_key" not in work.columns
    loads, seen = [], set()
    for rows in work.rdd.glom().collect():
        archives = _runs(rows)
        assert not {a for a, _ in archives} & seen, "an archive was split across tasks"
        seen |= {a for a, _ in archives}
        for _, group in archives:
            assert [r["pixel_offset"] for r in group] == sorted(r["pixel_offset"] for r in group)
        loads.append(sum(r["pixel_size"] for r in rows))
    assert seen == set(sizes)
    assert sorted(loads) == [1440, 1468], loads  # hashed, both big archives share a task half the time


def test_too_many_archives_to_balance_fall_back_to_hashing(spark) -> None:  # noqa: ANN001
    data = [("pending", f"a{i}", 0, 10) for i in range(6)]
    plan = spark.createDataFrame(data, "status string, pixel_archive string, pixel_offset long, pixel_size long")
    assert plan_reassembly_tasks(plan, configured=3, task_bytes=1 << 30, max_balanced=5) == (3, None)
    assert plan_reassembly_tasks(plan, configured=1, task_bytes=1 << 30) == (1, None)
    # Derived: at least two tasks per core, never more than archives.
    tasks, keys = plan_reassembly_tasks(plan, configured=0, task_bytes=1 << 30)
    assert tasks == min(6, 2 * spark.sparkContext.defaultParallelism) and keys is not None


def _runs(rows: list) -> list[tuple[str, list]]:  # noqa: ANN001
    from itertools import groupby

    return [(k, list(g)) for k, g in groupby(rows, key=lambda r: r["pixel_archive"])]


# ---------------------------------------------------------------- whole runs, in-process


def _build_manifest(spark, root: str, manifest_uri: str) -> None:  # noqa: ANN001
    build_manifest(spark, os.path.join(root, "text"), os.path.join(root, "images"), manifest_uri)


def _run(spark, base: str, out: str, **kw) -> dict:  # noqa: ANN001, ANN003
    run = ReassembleRun(spark=spark, manifest_uri=os.path.join(base, "manifest"), out=out,
                        ledger_uri=os.path.join(base, "ledger"), runs_uri=os.path.join(base, "runs"),
                        computations_uri=os.path.join(base, "computations"), cfg=kw.pop("cfg", Config(upload_threads=2)),
                        argv=["--manifest", "m"], **kw)
    return run.execute()


def _ledger(spark, base: str, run_id: str) -> list[dict]:  # noqa: ANN001
    from pyspark.sql import functions as F

    return [r.asDict() for r in spark.read.parquet(os.path.join(base, "ledger")).filter(F.col("run_id") == run_id).collect()]


@pytest.fixture(scope="module")
def sample_run(spark, sample_delivery, tmp_path_factory):  # noqa: ANN001, ANN201
    root, expected = sample_delivery
    base = str(tmp_path_factory.mktemp("run"))
    _build_manifest(spark, root, os.path.join(base, "manifest"))
    out = os.path.join(base, "dcm")
    summary = _run(spark, base, out)
    return base, out, expected, summary


def test_sample_run_writes_every_instance_and_accounts_for_every_member(sample_run, spark) -> None:  # noqa: ANN001
    base, out, expected, summary = sample_run
    n = len(expected["instances"])
    assert summary["status_counts"] == {"written": n}
    assert summary["unaccounted_members"] == 0
    rows = _ledger(spark, base, summary["run_id"])
    assert {r["sop_instance_uid"] for r in rows} == set(expected["instances"])
    for r in rows:
        assert r["output_uri"] == os.path.join(out, f"{r['sop_instance_uid']}.dcm")
        assert os.path.getsize(r["output_uri"]) == r["output_bytes"]
        assert r["output_checksum"].startswith("sha256:")


def test_sample_run_outputs_pass_dcmtk_and_decode_to_source_pixels(sample_run) -> None:  # noqa: ANN001
    _, out, expected, _ = sample_run
    for uid, inst in expected["instances"].items():
        path = os.path.join(out, f"{uid}.dcm")
        assert dcmftest_ok(path), inst["variant"]
        source = dcmread(get_testdata_file(inst["source"], download=False))
        np.testing.assert_array_equal(dcmread(path).pixel_array, source.pixel_array, err_msg=inst["variant"])


def test_rerun_rewrites_nothing(sample_run, spark) -> None:  # noqa: ANN001
    base, out, expected, _ = sample_run
    before = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out)}
    summary = _run(spark, base, out)
    assert summary["status_counts"] == {"skipped_existing": len(expected["instances"])}
    after = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out) if not f.startswith("_")}
    assert {k: v for k, v in before.items() if not k.startswith("_")} == after


def test_rebuilding_the_manifest_indexes_only_new_or_changed_archives(sample_run, spark, sample_delivery, tmp_path) -> None:  # noqa: ANN001
    import shutil

    root, _ = sample_delivery
    base = sample_run[0]
    manifest_uri = os.path.join(base, "manifest")
    listing = manifest_listing.list_archives(os.path.join(root, "text"), os.path.join(root, "images"))
    assert manifest_listing.archives_to_index(listing, indexed_archives(spark, manifest_uri)) == []
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    with open(copy / "images" / "images-000.tar", "ab") as f:
        f.write(b"\0" * 1024)
    changed = manifest_listing.list_archives(str(copy / "text"), str(copy / "images"))
    # Same names, different URIs: all new. Then the original listing with one archive grown.
    assert len(manifest_listing.archives_to_index(changed, indexed_archives(spark, manifest_uri))) == len(changed)
    grown = [dict(a, size=a["size"] + 1024) if a["uri"].endswith("images-000.tar") else a for a in listing]
    assert [a["uri"] for a in manifest_listing.archives_to_index(grown, indexed_archives(spark, manifest_uri))] == [
        a["uri"] for a in listing if a["uri"].endswith("images-000.tar")]


@pytest.fixture(scope="module")
def damaged_run(spark, damaged_delivery, tmp_path_factory):  # noqa: ANN001, ANN201
    root, expected = damaged_delivery
    base = str(tmp_path_factory.mktemp("damaged-run"))
    _build_manifest(spark, root, os.path.join(base, "manifest"))
    out = os.path.join(base, "dcm")
    summary = _run(spark, base, out)
    return root, base, out, expected, summary


def test_damaged_run_writes_every_good_instance(damaged_run, spark) -> None:  # noqa: ANN001
    root, base, out, expected, summary = damaged_run
    good = {uid for uid, i in expected["instances"].items() if i["status"] == "written"}
    rows = _ledger(spark, base, summary["run_id"])
    written = {r["sop_instance_uid"] for r in rows if r["status"] == "written"}
    assert written == good
    for uid in good:
        assert dcmftest_ok(os.path.join(out, f"{uid}.dcm"))


def test_damaged_run_explains_every_member(damaged_run, spark) -> None:  # noqa: ANN001
    root, base, out, expected, summary = damaged_run
    assert summary["unaccounted_members"] == 0
    rows = _ledger(spark, base, summary["run_id"])
    assert {r["status"] for r in rows} <= set(STATUSES)
    by_member: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        for a, m in ((r["header_archive"], r["header_member"]), (r["pixel_archive"], r["pixel_member"])):
            if m is not None:
                by_member.setdefault((os.path.relpath(a, root), m), set()).add(r["status"])
    wrong = {}
    for m in expected["members"]:
        key = (m["archive"], m["member"].rstrip("/"))
        got = by_member.get(key) or by_member.get((m["archive"], m["member"]))
        if got is None or m["status"] not in got:
            wrong[key] = (m["status"], m.get("reason"), got)
    assert not wrong, wrong


def test_damaged_archives_get_their_own_rows(damaged_run, spark) -> None:  # noqa: ANN001
    root, base, out, expected, summary = damaged_run
    rows = _ledger(spark, base, summary["run_id"])
    archive_rows = {os.path.relpath(r["header_archive"] or r["pixel_archive"], root): r for r in rows
                    if r["header_member"] is None and r["pixel_member"] is None}
    for archive, info in expected["archives"].items():
        if info["status"] == "unreadable_archive":
            assert archive_rows[archive]["status"] == "unreadable_archive"
            assert archive_rows[archive]["reason"].startswith(info["reason"]), archive_rows[archive]["reason"]


def test_every_ledger_reason_is_one_line(damaged_run, spark) -> None:  # noqa: ANN001
    _, base, _, _, summary = damaged_run
    for r in _ledger(spark, base, summary["run_id"]):
        if r["status"] != "written":
            assert r["reason"] and "\n" not in r["reason"] and "Traceback" not in r["reason"]


def test_the_jvm_plan_for_clean_pairs_equals_the_python_plan(spark) -> None:  # noqa: ANN001
    from dicom_reassembly.reassembly.transforms import with_instance_plan

    def header(uid: str, archive: str = "t.tar", sha: str = "s") -> dict:
        return {"archive_uri": archive, "archive_size": 10240, "kind": "header", "member_name": f"{uid}.json",
                "data_offset": 512, "size": 10, "sop_instance_uid": uid, "header_json": '{"a": 1}',
                "header_sha256": sha, "study_instance_uid": "1.2", "series_instance_uid": "1.2.3", "modality": "CT"}

    def pixels(uid: str, archive: str = "i.tar", offset: int = 512) -> dict:
        return {"archive_uri": archive, "archive_size": 20480, "kind": "pixels", "member_name": f"{uid}.j2c",
                "data_offset": offset, "size": 100, "sop_instance_uid": uid}

    rows = [header("1.1"), pixels("1.1"), header("1.2"), pixels("1.2", offset=2048),
            header("1.3"), header("1.3", "t2.tar"), pixels("1.3", offset=4096),  # a duplicate: Python path
            header("1.4"),  # an orphan
            header("1.5"), pixels("1.5", offset=8192), {**pixels("1.5", "j.tar"), "error": "truncated_archive"}]
    by_uid = _manifest_rows(spark, rows).transform(with_members_by_uid)
    jvm = by_uid.transform(with_instance_plan(None, {}))
    python = by_uid.transform(with_instance_plan(lambda _header_json: None, {}))  # a selection forces Python for all
    assert_df_equality(jvm, python, ignore_row_order=True, ignore_nullable=True)
    assert jvm.filter("status = 'pending'").count() == 4


def test_local_runs_use_the_c1_only_jit_everywhere_they_start_a_jvm(spark) -> None:  # noqa: ANN001
    """conf/spark-defaults.conf defines the local JVM options once: the shared session gets them from it (the fixture
    names none), make and a hand run through the venv's spark-submit, which points SPARK_CONF_DIR at conf/
    (tests/test_readme.py checks its launch command); the benchmark names the same options."""
    from helpers import JAVA_OPTIONS, read_spark_defaults

    from bench.measure import JAVA_OPTIONS as BENCH_JAVA_OPTIONS
    from dicom_reassembly.session import LOCAL_JIT_OPTIONS

    assert read_spark_defaults()["spark.driver.extraJavaOptions"] == LOCAL_JIT_OPTIONS == JAVA_OPTIONS
    jvm_args = list(spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert LOCAL_JIT_OPTIONS in jvm_args
    assert BENCH_JAVA_OPTIONS.startswith(LOCAL_JIT_OPTIONS + " ")
    with open(os.path.join(ROOT, "Makefile")) as f:
        makefile = f.read()
    assert "SPARK_SUBMIT := $(VENV)/bin/spark-submit\n" in makefile and "--driver-java-options" not in makefile
    assert "install -m 755 conf/venv-spark-submit $(VENV)/bin/spark-submit" in makefile


# ---------------------------------------------------------------- what the walk or the listing cannot index


def test_objects_that_are_not_indexed_reach_the_ledger_and_conservation_holds(spark, sample_delivery, tmp_path) -> None:  # noqa: ANN001
    import gzip
    import io
    import json
    import tarfile

    from helpers import permissions_enforced, read_tar_member

    root, expected = sample_delivery
    uid0, inst = next((u, i) for u, i in sorted(expected["instances"].items()) if i["payload"] == "j2k")
    header = json.loads(read_tar_member(os.path.join(root, inst["header"][0]), inst["header"][1]))
    pixels = read_tar_member(os.path.join(root, inst["pixels"][0]), inst["pixels"][1])
    uid = "2.25.1600000000000000000000000000000001"  # a new instance: the sample's header and pixels under a new UID
    header["00080018"]["Value"] = [uid]

    def tar(path: os.PathLike | None, members: list[tuple[str, bytes | None]]) -> bytearray:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            for name, data in members:
                info = tarfile.TarInfo(name)
                if data is None:
                    info.type, info.linkname = tarfile.SYMTYPE, "elsewhere"
                    tf.addfile(info)
                else:
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        raw = bytearray(buf.getvalue())
        if path is not None:
            path.write_bytes(raw)
        return raw

    def set_size(raw: bytearray, at: int, field: bytes) -> bytes:
        raw[at + 124: at + 136] = field
        raw[at + 148: at + 156] = b" " * 8
        raw[at + 148: at + 156] = b"%06o\0 " % sum(raw[at: at + 512])
        return bytes(raw)

    text, images = tmp_path / "text", tmp_path / "images"
    (text / "locked").mkdir(parents=True)
    images.mkdir()
    tar(text / "t.tar", [(f"{uid}.json", json.dumps(header).encode())])
    (text / "README.txt").write_bytes(b"notes")
    (text / "more.tar.gz").write_bytes(gzip.compress(tar(None, [("1.2.3.4.json", b"{}")]), mtime=0))
    tar(text / "locked" / "hidden.tar", [("1.2.3.5.json", b"{}")])
    os.chmod(text / "locked", 0)
    # The "Why" cases: a symlink whose ustar size field claims 1 MiB ahead of the instance's pixels; a base-256 size.
    (images / "i.tar").write_bytes(set_size(tar(None, [("odd-link", None), (f"{uid}.j2c", pixels)]), 0,
                                            b"%011o\0" % (1 << 20)))
    (images / "b256.tar").write_bytes(set_size(tar(None, [("1.2.3.6.j2c", b"x" * 600)]), 0, b"\x80" + b"\xff" * 11))
    os.symlink(tmp_path / "gone.tar", images / "broken.tar")
    base = str(tmp_path / "run")
    with permissions_enforced():  # the listing runs here, on the driver: root may not read the locked folder either
        build_manifest(spark, str(text), str(images), os.path.join(base, "manifest"))
    summary = _run(spark, base, os.path.join(base, "dcm"))
    assert summary["unaccounted_members"] == 0
    rows = _ledger(spark, base, summary["run_id"])
    assert [r["status"] for r in rows if r["sop_instance_uid"] == uid] == ["written"]
    assert dcmftest_ok(os.path.join(base, "dcm", f"{uid}.dcm"))
    archive_rows = {os.path.basename(r["header_archive"] or r["pixel_archive"]): (r["status"], r["reason"].split(":")[0])
                    for r in rows if r["header_member"] is None and r["pixel_member"] is None}
    assert archive_rows == {
        "README.txt": ("unreadable_archive", "not_an_archive"), "more.tar.gz": ("unreadable_archive", "compressed_archive"),
        "locked": ("unreadable_archive", "access_denied"), "b256.tar": ("unreadable_archive", "corrupt_header"),
        "broken.tar": ("unreadable_archive", "broken_link")}
    assert {r["pixel_member"]: r["status"] for r in rows if r["pixel_member"]} == {
        "odd-link": "invalid_pixels", f"{uid}.j2c": "written"}
