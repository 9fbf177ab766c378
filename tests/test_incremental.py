"""Incremental runs over the instance state: a grown delivery, tranches and expired restores, on real Spark.

The acceptance test counts requests at the S3 endpoint (bench/s3count.py's moto server, per object): a second pass
over a delivery grown by a tranche makes no request at all on the first tranche's archives.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ROOT, build_manifest, dcmftest_ok

from dicom_reassembly.config import Config
from dicom_reassembly.io.clients import ArchiveAccess
from dicom_reassembly.manifest import listing as manifest_listing
from dicom_reassembly.manifest import spark as manifest_spark
from dicom_reassembly.reassembly.run import ReassembleRun
from dicom_reassembly.records import state as state_mod
from dicom_reassembly.restore import expiry
from dicom_reassembly.restore.ledger import restore_ledger_schema
from dicom_reassembly.run_id import new_run_id
from dicom_reassembly.selection.spec import parse_criteria
from dicom_reassembly.selection.tranche import parse_tranche

sys.path.insert(0, ROOT)  # bench/ is a package at the repository root
from bench.s3count import FAKE_CREDENTIALS, CountingS3Server  # noqa: E402

pytestmark = pytest.mark.spark

FIRST = ["text/text-000.tar", "images/images-001.tar"]  # the sample's instances n % 3 == 0: a whole tranche
SECOND = ["text/text-001.tar", "text/text-002.tar", "images/images-000.tar", "images/images-002.tar"]


def _uids_in(expected: dict, image_archives: list[str]) -> set[str]:
    return {u for u, e in expected["instances"].items() if e["pixels"] and e["pixels"][0] in image_archives}


def _run(spark, base: str, out: str, **kw) -> dict:  # noqa: ANN001, ANN003
    ledger = os.path.join(base, "ledger")
    run = ReassembleRun(spark=spark, manifest_uri=kw.pop("manifest", os.path.join(base, "manifest")), out=out,
                        ledger_uri=ledger, runs_uri=os.path.join(base, "runs"),
                        computations_uri=os.path.join(base, "computations"), cfg=Config(upload_threads=2),
                        argv=["--manifest", "m"], state_uri=state_mod.state_uri_for(ledger), **kw)
    summary = run.execute()
    print(run.report(summary))
    return summary


def _ledger(spark, base: str, run_id: str) -> list[dict]:  # noqa: ANN001
    from pyspark.sql import functions as F

    return [r.asDict() for r in spark.read.parquet(os.path.join(base, "ledger")).filter(F.col("run_id") == run_id).collect()]


def _index(spark, text: str, images: str, manifest: str, access: ArchiveAccess | None) -> list[str]:  # noqa: ANN001
    todo = manifest_listing.archives_to_index(manifest_listing.list_archives(text, images, access=access),
                                              manifest_spark.indexed_archives(spark, manifest))
    if todo:
        at = datetime.now(timezone.utc)
        run = new_run_id(at)
        manifest_spark.build_manifest_df(spark, todo, run, at, 4, 64 * 1024, access=access).write.mode(
            "append").parquet(manifest)
    return sorted(a["uri"] for a in todo)


def test_a_pass_over_a_grown_delivery_reads_nothing_of_the_first_tranche(spark, sample_delivery, tmp_path) -> None:  # noqa: ANN001
    root, expected = sample_delivery
    first_uids, second_uids = _uids_in(expected, FIRST), _uids_in(expected, SECOND)
    assert first_uids and second_uids and len(first_uids | second_uids) == len(expected["instances"])
    base, out = str(tmp_path), str(tmp_path / "dcm")
    with CountingS3Server() as server:
        s3 = server.client()
        s3.create_bucket(Bucket="partner")
        # The partner's bucket on the counting server, reached through input_s3_parameters (the brief's form).
        spec = parse_criteria({"criteria": [], "input_s3_parameters": {
            "endpoint": server.url, "bucket": "partner", "region": FAKE_CREDENTIALS["AWS_DEFAULT_REGION"],
            "credentials": f"{FAKE_CREDENTIALS['AWS_ACCESS_KEY_ID']}:{FAKE_CREDENTIALS['AWS_SECRET_ACCESS_KEY']}"}})
        access = spec.access
        text, images = "s3://partner/delivery/text", "s3://partner/delivery/images"
        manifest = os.path.join(base, "manifest")

        def upload(rels: list[str]) -> None:
            for rel in rels:
                s3.upload_file(os.path.join(root, rel), "partner", f"delivery/{rel}")

        upload(FIRST)
        assert len(_index(spark, text, images, manifest, access)) == len(FIRST)
        one = _run(spark, base, out, spec=spec)
        assert one["status_counts"] == {"written": len(first_uids)} and one["unaccounted_members"] == 0
        written_first = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out)}

        upload(SECOND)  # the delivery grows by a tranche
        before = server.snapshot()
        indexed = _index(spark, text, images, manifest, access)  # build_manifest is incremental
        assert indexed == sorted(f"s3://partner/delivery/{rel}" for rel in SECOND)
        between = server.snapshot()
        two = _run(spark, base, out, spec=spec)
        during = server.snapshot().minus(between)
        for rel in FIRST:  # neither the indexing nor the reassembly touched the first tranche's archives
            key = f"delivery/{rel}"
            assert between.minus(before).on_object("partner", key) == 0, key
            assert during.on_object("partner", key) == 0, (key, during.objects)
        for rel in SECOND:
            gets = during.on_object("partner", f"delivery/{rel}", "GET", "GET_RANGE")
            assert gets == (1 if rel.startswith("images/") else 0), (rel, during.objects)
    # Exactly the new instances written; the old ones carried over from the state, not recorded again.
    assert two["status_counts"] == {"written": len(second_uids)}
    assert two["carried_over"] == len(first_uids) and two["unaccounted_members"] == 0
    rows = _ledger(spark, base, two["run_id"])
    assert {r["sop_instance_uid"] for r in rows} == second_uids
    assert {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in written_first} == written_first
    assert sorted(os.listdir(out)) == sorted(f"{u}.dcm" for u in first_uids | second_uids)
    for uid in sorted(second_uids)[:3]:
        assert dcmftest_ok(os.path.join(out, f"{uid}.dcm"))
    assert f"carried over: {len(first_uids)} instances" in ReassembleRun.report(two)


# ------------------------------------------------------------------------------- tranches, expiry, changes


@pytest.fixture(scope="module")
def local_manifest(spark, sample_delivery, tmp_path_factory) -> str:  # noqa: ANN001
    root, _ = sample_delivery
    manifest = str(tmp_path_factory.mktemp("manifest") / "manifest")
    build_manifest(spark, os.path.join(root, "text"), os.path.join(root, "images"), manifest)
    return manifest


def _restore_ledger(path: str, rows: list[dict]) -> str:
    os.makedirs(path, exist_ok=True)
    table = pa.Table.from_pylist([{**{n: None for n in restore_ledger_schema().names}, **r} for r in rows],
                                 schema=restore_ledger_schema())
    pq.write_table(table, os.path.join(path, f"restore-{len(os.listdir(path)):05d}.parquet"))
    return path


def test_tranches_then_an_expired_restore_then_the_rest(spark, sample_delivery, local_manifest, tmp_path) -> None:  # noqa: ANN001
    root, expected = sample_delivery
    base, out = str(tmp_path), str(tmp_path / "dcm")
    images = {rel: os.path.join(root, rel) for rel in ("images/images-000.tar", "images/images-001.tar",
                                                        "images/images-002.tar")}
    by_archive = {rel: _uids_in(expected, [rel]) for rel in images}
    total = len(expected["instances"])

    # A prefix tranche: only the instances whose pixels are in images-001.
    one = _run(spark, base, out, manifest=local_manifest, tranche=parse_tranche(f"prefix:{images['images/images-001.tar']}"))
    assert one["status_counts"] == {"written": len(by_archive["images/images-001.tar"])}
    assert one["outside_tranche"] == total - len(by_archive["images/images-001.tar"])
    assert one["unaccounted_members"] == 0

    # images-000's restored copy expired (restore ledger): its instances are not_restored, never read.
    now = datetime.now(timezone.utc)
    ledger = _restore_ledger(str(tmp_path / "restore_ledger"), [
        {"uri": images["images/images-000.tar"], "outcome": "requested", "days": 7, "role": "images", "wave": 2,
         "requested_at": now - timedelta(days=9)},
        {"uri": images["images/images-002.tar"], "outcome": "requested", "days": 7, "role": "images", "wave": 2,
         "requested_at": now - timedelta(days=1)}])
    two = _run(spark, base, out, manifest=local_manifest, archive_check=expiry.ledger_check(ledger, now))
    assert two["carried_over"] == len(by_archive["images/images-001.tar"])
    assert two["status_counts"] == {"written": len(by_archive["images/images-002.tar"]),
                                    "not_restored": len(by_archive["images/images-000.tar"])}
    assert two["unaccounted_members"] == 0
    rows = [r for r in _ledger(spark, base, two["run_id"]) if r["status"] == "not_restored"]
    assert {r["sop_instance_uid"] for r in rows} == by_archive["images/images-000.tar"]
    assert all(r["reason"].startswith("restore_expired: the restored copy expired about") for r in rows)
    assert not any(os.path.exists(os.path.join(out, f"{u}.dcm")) for u in by_archive["images/images-000.tar"])

    # Restored again (a newer request): limit:2 takes two of them, then a run without tranche the rest.
    _restore_ledger(ledger, [{"uri": images["images/images-000.tar"], "outcome": "requested", "days": 7,
                              "role": "images", "wave": 2, "requested_at": now}])
    three = _run(spark, base, out, manifest=local_manifest, tranche=parse_tranche("limit:2"),
                 archive_check=expiry.ledger_check(ledger, now))
    assert three["status_counts"] == {"written": 2} and three["planned_instances"] == 2
    assert three["outside_tranche"] == len(by_archive["images/images-000.tar"]) - 2
    four = _run(spark, base, out, manifest=local_manifest, archive_check=expiry.ledger_check(ledger, now))
    assert four["status_counts"] == {"written": len(by_archive["images/images-000.tar"]) - 2}
    assert four["carried_over"] == total - four["status_counts"]["written"]
    assert sorted(os.listdir(out)) == sorted(f"{u}.dcm" for u in expected["instances"])
    # The state: one row per instance, all final, the newest runs' commits kept.
    table, committed = state_mod.read_state_table(os.path.join(base, "ledger"), ["sop_instance_uid", "status"])
    assert committed == four["run_id"] and table.num_rows == total
    assert set(table.column("status").to_pylist()) == {"written"}
    commits = os.listdir(os.path.join(base, "ledger_state", "_commits"))
    assert sorted(commits) == sorted(f"{r['run_id']}.json" for r in (three, four))
    assert sorted(os.listdir(os.path.join(base, "ledger_state", "snapshots"))) == sorted(r["run_id"] for r in (three, four))


def test_state_commit_is_what_counts(spark, tmp_path) -> None:  # noqa: ANN001
    """A snapshot without its commit (a run that died writing it) is never read; the newest commit wins."""
    state_uri = str(tmp_path / "ledger_state")
    rows = [("1.1", "out/{sop_instance_uid}.dcm", "fp1", "written", "20260101T000000Z-aaaaaaaa", "out/1.1.dcm", 10,
             "sha256:x", None, None, None)]
    df = spark.createDataFrame(rows, state_mod.state_schema())
    assert state_mod.write_state(spark, state_uri, df, "20260101T000000Z-aaaaaaaa") == 1
    dead = os.path.join(state_uri, "snapshots", "20260102T000000Z-bbbbbbbb")
    spark.createDataFrame([("9.9", "x", "f", "written", "20260102T000000Z-bbbbbbbb", None, None, None, None, None, None)],
                          state_mod.state_schema()).write.parquet(dead)
    final = state_mod.read_final_instances(spark, state_uri, "out/{sop_instance_uid}.dcm")
    assert [tuple(r) for r in final.collect()] == [("1.1", "fp1")]
    newer = spark.createDataFrame([("1.1", "out/{sop_instance_uid}.dcm", "fp2", "failed", "20260103T000000Z-cccccccc",
                                    None, None, None, None, None, None)], state_mod.state_schema())
    assert state_mod.write_state(spark, state_uri, newer, "20260103T000000Z-cccccccc") == 1
    assert state_mod.read_final_instances(spark, state_uri, "out/{sop_instance_uid}.dcm").count() == 0
    commit = state_mod.read_state_commit(state_uri)
    assert commit["run_id"] == "20260103T000000Z-cccccccc"
    with open(os.path.join(state_uri, "_commits", "20260103T000000Z-cccccccc.json")) as f:
        assert json.load(f)["rows"] == 1


def test_outcomes_a_rerun_cannot_change_are_settled_for_the_same_source_and_criteria(spark, tmp_path) -> None:  # noqa: ANN001
    """filtered_out, orphans, invalid members and spare copies are final like written; failures are retried."""
    from dicom_reassembly.reassembly.scope import RunScope, with_run_scope

    state_uri, out = str(tmp_path / "ledger_state"), "out/{sop_instance_uid}.dcm"
    statuses = ["written", "skipped_existing", "filtered_out", "duplicate", "orphan_header", "orphan_pixels",
                "invalid_header", "invalid_pixels", "failed", "not_restored", "unreadable_archive", "conflict"]
    ledger = spark.createDataFrame([(f"1.{i}", s, None) for i, s in enumerate(statuses)]
                                   + [("1.99", "invalid_pixels", None), ("1.99", "failed", None)],  # a bad copy, a failure
                                   "sop_instance_uid string, status string, output_uri string")
    ledger = ledger.select(*[ledger[n] if n in ledger.columns else pa_null(n) for n in state_mod.STATE_NAMES
                             if n not in ("output", "source_fingerprint", "criteria_sha256")])
    sources = spark.createDataFrame([(f"1.{i}", f"fp{i}") for i in [*range(len(statuses)), 99]],
                                    "sop_instance_uid string, source_fingerprint string")
    rows = ledger.transform(state_mod.with_instance_states(sources, out, "crit-a"))
    state_mod.write_state(spark, state_uri, rows, "20260101T000000000000Z-aaaaaaaa")

    def final(criteria: str | None) -> set[str]:
        got = state_mod.read_final_instances(spark, state_uri, out, criteria).collect()
        return {statuses[int(r["sop_instance_uid"][2:])] for r in got if r["sop_instance_uid"] != "1.99"} | (
            {"1.99"} & {r["sop_instance_uid"] for r in got})

    settled = {"written", "skipped_existing", "duplicate", "orphan_header", "orphan_pixels", "invalid_header",
               "invalid_pixels"}
    assert final("crit-a") == settled | {"filtered_out"}  # 1.99 failed beside its invalid copy: retried
    assert final("crit-b") == settled and final(None) == settled  # other criteria re-evaluate the filtered ones

    # limit:2 takes sources the state does not know before the retries, even when the retries come first.
    manifest_rows = [(f"1.{i}", f"fp{i}", "s3://b/a.tar", i) for i in range(len(statuses))]
    manifest_rows += [("2.1", "new1", "s3://b/z.tar", 1), ("2.2", "new2", "s3://b/z.tar", 2),
                      ("2.3", "new3", "s3://b/z.tar", 3)]
    fingerprinted = spark.createDataFrame(manifest_rows, "sop_instance_uid string, source_fingerprint string, "
                                          "scope_archive string, scope_offset long")
    states = state_mod.read_instance_states(spark, state_uri, out, "crit-a")
    scope = RunScope.of(fingerprinted.transform(with_run_scope(parse_tranche("limit:2"), states)).cache(),
                        parse_tranche("limit:2"), narrowed=True)
    assert scope.counts == {"planned_instances": 2, "carried_over": 8, "outside_tranche": 5}
    assert {r["sop_instance_uid"] for r in scope.todo.collect()} == {"2.1", "2.2"}
    scope = RunScope.of(fingerprinted.transform(with_run_scope(parse_tranche("limit:5"), states)).cache(),
                        parse_tranche("limit:5"), narrowed=True)
    assert {r["sop_instance_uid"] for r in scope.todo.collect()} == {"2.1", "2.2", "2.3", "1.8", "1.9"}


def test_a_failed_stow_forward_is_not_final_for_a_run_that_forwards(spark, tmp_path) -> None:  # noqa: ANN001
    """Before the state a rerun with --stow-url re-sent skipped_existing instances: it still retries the forward."""
    from dicom_reassembly.stow.client import FAILED, SENT

    state_uri, out = str(tmp_path / "ledger_state"), "out/{sop_instance_uid}.dcm"
    forwarded = {"1.1": ("written", SENT), "1.2": ("written", FAILED), "1.3": ("skipped_existing", FAILED),
                 "1.4": ("written", None), "1.5": ("orphan_header", None)}
    ledger = spark.createDataFrame([(u, s, f) for u, (s, f) in forwarded.items()],
                                   "sop_instance_uid string, status string, stow_status string")
    ledger = ledger.select(*[ledger[n] if n in ledger.columns else pa_null(n) for n in state_mod.STATE_NAMES
                             if n not in ("output", "source_fingerprint", "criteria_sha256")])
    sources = spark.createDataFrame([(u, "fp") for u in forwarded], "sop_instance_uid string, source_fingerprint string")
    state_mod.write_state(spark, state_uri, ledger.transform(state_mod.with_instance_states(sources, out)),
                          "20260101T000000000000Z-aaaaaaaa")

    def final(forwarding: bool) -> set[str]:
        return {r["sop_instance_uid"] for r in
                state_mod.read_final_instances(spark, state_uri, out, forwarding=forwarding).collect()}

    assert final(forwarding=True) == {"1.1", "1.5"}
    assert final(forwarding=False) == set(forwarded)


def test_a_relative_out_names_the_folder_it_resolves_to(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    template = "{sop_instance_uid}.dcm"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    here = state_mod.output_identity("dcm", template)
    assert here == os.path.join(str(tmp_path / "a" / "dcm"), template)
    assert state_mod.output_identity(str(tmp_path / "a" / "dcm"), template) == here
    monkeypatch.chdir(tmp_path / "b")
    assert state_mod.output_identity("dcm", template) != here
    assert state_mod.output_identity("s3://bucket/dcm", template) == "s3://bucket/dcm/" + template


def test_pruning_keeps_the_newest_commits_and_drops_week_old_uncommitted_snapshots(spark, tmp_path) -> None:  # noqa: ANN001
    state_uri, now = str(tmp_path / "ledger_state"), datetime.now(timezone.utc)
    row = [("1.1", "o", "fp", "written", None, None, None, None, None, None, None)]
    runs = [new_run_id(now - timedelta(days=d)) for d in (3, 2, 1)]
    for run in runs:
        state_mod.write_state(spark, state_uri, spark.createDataFrame(row, state_mod.state_schema()), run, now=now)
    dead_old, dead_new = new_run_id(now - timedelta(days=8)), new_run_id(now - timedelta(days=6))
    for dead in (dead_old, dead_new):  # runs that died before their commit
        os.makedirs(os.path.join(state_uri, "snapshots", dead))
        open(os.path.join(state_uri, "snapshots", dead, "part-0.parquet"), "wb").close()
    state_mod.prune_state(state_uri, now)
    assert sorted(os.listdir(os.path.join(state_uri, "snapshots"))) == sorted([dead_new, *runs[1:]])
    assert sorted(os.listdir(os.path.join(state_uri, "_commits"))) == [f"{r}.json" for r in runs[1:]]


def test_pruning_on_s3_deletes_whole_snapshot_prefixes(s3) -> None:  # noqa: ANN001
    now = datetime.now(timezone.utc)
    s3.create_bucket(Bucket="state-prune")
    runs = [new_run_id(now - timedelta(days=d)) for d in (3, 2, 1)]
    dead = new_run_id(now - timedelta(days=8))
    for run in [*runs, dead]:
        for part in ("part-0.parquet", "part-1.parquet"):
            s3.put_object(Bucket="state-prune", Key=f"ls/snapshots/{run}/{part}", Body=b"x")
    for run in runs:
        s3.put_object(Bucket="state-prune", Key=f"ls/_commits/{run}.json", Body=b"{}")
    state_mod.prune_state("s3://state-prune/ls", now)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="state-prune")["Contents"])
    assert keys == sorted([f"ls/_commits/{r}.json" for r in runs[1:]]
                          + [f"ls/snapshots/{r}/{p}" for r in runs[1:] for p in ("part-0.parquet", "part-1.parquet")])


def test_run_id_time_reads_what_new_run_id_writes() -> None:
    from dicom_reassembly.run_id import run_id_time

    at = datetime(2026, 12, 5, 0, 59, 29, 988395, tzinfo=timezone.utc)
    assert run_id_time(new_run_id(at)) == at
    assert run_id_time("not-a-run") is None


def test_a_run_without_state_rows_leaves_the_state_as_it_is(spark, tmp_path) -> None:  # noqa: ANN001
    state_uri = str(tmp_path / "ledger_state")
    empty = spark.createDataFrame([], state_mod.state_schema())
    assert state_mod.write_state(spark, state_uri, empty, new_run_id()) == 0 and not os.path.exists(state_uri)
    first = new_run_id()
    rows = [("1.1", "o", "fp", "written", first, None, None, None, None, None, None),
            ("1.2", "o", "fp", "failed", first, None, None, None, None, None, None)]
    assert state_mod.write_state(spark, state_uri, spark.createDataFrame(rows, state_mod.state_schema()), first) == 2
    assert state_mod.write_state(spark, state_uri, empty, new_run_id()) == 2
    assert os.listdir(os.path.join(state_uri, "_commits")) == [f"{first}.json"]
    assert os.listdir(os.path.join(state_uri, "snapshots")) == [first]


def test_a_run_without_out_or_tranche_fingerprints_nothing(spark, sample_delivery, local_manifest, monkeypatch,  # noqa: ANN001
                                                           tmp_path) -> None:
    """No state to read or write and no tranche: the fingerprint pass (a shuffle of every member) is skipped."""
    _, expected = sample_delivery
    from dicom_reassembly.reassembly import run as run_mod

    def refuse(manifest):  # noqa: ANN001, ANN202
        raise AssertionError("fingerprinted without a state or a tranche")

    monkeypatch.setattr(run_mod, "with_source_fingerprints", refuse)
    manifest = manifest_spark.read_manifest(spark, local_manifest)
    ledger = str(tmp_path / "ledger")
    run = ReassembleRun(spark=spark, manifest_uri=local_manifest, out=None, ledger_uri=ledger,
                        runs_uri=str(tmp_path / "runs"), computations_uri=str(tmp_path / "c"), cfg=Config(),
                        state_uri=state_mod.state_uri_for(ledger))
    scope = run.read_scope(manifest)
    assert scope.counts == {"carried_over": 0, "outside_tranche": 0} and not scope.narrowed
    assert scope.members(manifest) is manifest and scope.expected_members(manifest) is manifest
    scope.release()
    summary = run.execute()  # end to end without --out: every instance planned, every member accounted for
    assert summary["unaccounted_members"] == 0 and summary["state_rows"] is None
    assert summary["status_counts"] == {"written": len(expected["instances"])}
    run.tranche = parse_tranche("limit:1")
    with pytest.raises(AssertionError, match="fingerprinted"):
        run.read_scope(manifest)


def pa_null(name: str):  # noqa: ANN201
    from pyspark.sql import functions as F

    kind = dict(state_mod.STATE_FIELDS)[name]
    return F.lit(None).cast(kind).alias(name)


# ------------------------------------------------------------------------------------------ the transforms


def _manifest(spark, rows: list[dict]):  # noqa: ANN001, ANN202
    from dicom_reassembly.manifest import index

    base = {"index_run": "1", "archive_size": 100}
    return spark.createDataFrame([tuple({**base, **r}.get(n) for n in index.FIELD_NAMES) for r in rows],
                                 index.manifest_schema())


def _member(uid: str, kind: str, archive: str, **kw) -> dict:  # noqa: ANN003
    name = f"{uid}.json" if kind == "header" else f"{uid}.j2c"
    return {"sop_instance_uid": uid, "kind": kind, "archive_uri": archive, "member_name": name, "data_offset": 512,
            "size": 1000, "archive_etag": "e-" + archive, "header_sha256": "h-" + uid if kind == "header" else None,
            "archive_role": "text" if kind == "header" else "images", **kw}


def test_only_an_unchanged_source_is_final(spark) -> None:  # noqa: ANN001
    from pyspark.sql import functions as F

    from dicom_reassembly.reassembly.scope import FINAL, with_run_scope, with_source_fingerprints

    text, img, img2 = "s3://b/t.tar", "s3://b/i.tar", "s3://b/j.tar"
    uids = ["1.1", "1.2", "1.3", "1.4", "1.5"]
    before = [m for u in uids for m in (_member(u, "header", text), _member(u, "pixels", img))]
    final = (_manifest(spark, before).transform(with_source_fingerprints)
             .select("sop_instance_uid", "source_fingerprint", F.lit(True).alias("final")))
    after = [m for m in before if m["sop_instance_uid"] not in ("1.2", "1.3", "1.4")]
    after += [_member("1.2", "header", text, header_sha256="h-changed"), _member("1.2", "pixels", img),
              _member("1.3", "header", text), _member("1.3", "pixels", img, archive_etag="e-reuploaded"),
              _member("1.4", "header", text), _member("1.4", "pixels", img),
              _member("1.4", "pixels", img2),  # a copy that came with a later tranche
              _member("1.6", "header", text)]  # new, and an orphan: its header archive places it
    got = {r["sop_instance_uid"]: r for r in _manifest(spark, after).transform(with_source_fingerprints)
           .transform(with_run_scope(parse_tranche(f"prefix:{img}"), final)).collect()}
    assert {u: r[FINAL] for u, r in got.items()} == {"1.1": True, "1.2": False, "1.3": False, "1.4": False,
                                                     "1.5": True, "1.6": False}
    assert got["1.6"]["scope_archive"] == text and got["1.4"]["scope_archive"] == img
    assert [u for u, r in sorted(got.items()) if r["in_tranche"]] == ["1.1", "1.2", "1.3", "1.4", "1.5"]


def test_spark_and_python_agree_on_hash_tranches(spark) -> None:  # noqa: ANN001
    from pyspark.sql import functions as F

    uris = [f"s3://bucket/images/{i:04d}-é.tar" for i in range(300)] + ["/data/images/x.tar"]
    tranche = parse_tranche("hash:10-99/256;prefix:s3://bucket/")
    df = spark.createDataFrame([(u,) for u in uris], "uri string")
    in_spark = {r["uri"] for r in df.filter(tranche.archive_condition(F.col("uri"))).collect()}
    assert in_spark == {u for u in uris if tranche.matches_archive(u)} and 50 < len(in_spark) < 150


def test_an_unavailable_archive_makes_its_work_and_every_copy_not_restored(spark) -> None:  # noqa: ANN001
    from dicom_reassembly.reassembly.plan import PENDING, plan_schema
    from dicom_reassembly.reassembly.scope import with_unavailable_archives

    def row(uid: str, status: str, archive: str, dups: str | None = None) -> tuple:
        values = {"sop_instance_uid": uid, "status": status, "pixel_archive": archive, "pixel_member": f"{uid}.j2c",
                  "dup_pixels": dups}
        return tuple(values.get(f.name) for f in plan_schema().fields)

    copies = json.dumps([["s3://b/y.tar", "1.1.j2c", 10, 5], ["s3://b/z.tar", "1.1.j2c", 10, 5]])
    plan = spark.createDataFrame([row("1.1", PENDING, "s3://b/x.tar", copies), row("1.2", PENDING, "s3://b/y.tar"),
                                  row("1.3", "filtered_out", "s3://b/x.tar")], plan_schema())
    unavailable = spark.createDataFrame([("s3://b/x.tar", "restore_expired: gone")], "pixel_archive string, reason string")
    got = sorted((r["sop_instance_uid"], r["status"], r["reason"], r["pixel_archive"], r["dup_pixels"])
                 for r in plan.transform(with_unavailable_archives(unavailable)).collect())
    assert got == [
        ("1.1", "not_restored", "copy of s3://b/x.tar:1.1.j2c: restore_expired: gone", "s3://b/y.tar", None),
        ("1.1", "not_restored", "copy of s3://b/x.tar:1.1.j2c: restore_expired: gone", "s3://b/z.tar", None),
        ("1.1", "not_restored", "restore_expired: gone", "s3://b/x.tar", None),
        ("1.2", PENDING, None, "s3://b/y.tar", None),
        ("1.3", "filtered_out", None, "s3://b/x.tar", None),
    ]


def test_head_check_runs_on_the_executors_and_names_what_to_keep_out(spark, s3) -> None:  # noqa: ANN001
    import uuid

    from dicom_reassembly.io import clients

    clients._clients.clear()
    bucket = f"heads-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for key, cls in (("cold.tar", "GLACIER"), ("warm.tar", "GLACIER"), ("std.tar", "STANDARD")):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x", StorageClass=cls)
    s3.restore_object(Bucket=bucket, Key="warm.tar", RestoreRequest={"Days": 3})
    archives = spark.createDataFrame([(f"s3://{bucket}/{k}",) for k in ("cold.tar", "warm.tar", "std.tar")],
                                     "pixel_archive string")
    got = expiry.head_check(None, datetime.now(timezone.utc))(spark, archives).collect()
    assert [(r["pixel_archive"], r["reason"].split(":")[0]) for r in got] == [(f"s3://{bucket}/cold.tar",
                                                                              "restore_expired")]
