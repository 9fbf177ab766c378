"""Glacier restore orchestration against moto's S3 server: plan, request, status, Batch Operations."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dicom_reassembly import errors
from dicom_reassembly.errors import ConfigError, NotRestoredError, StorageError
from dicom_reassembly.io import clients, listing, reads
from dicom_reassembly.io import uris as io_uris
from dicom_reassembly.io.throttle import TokenBucket
from dicom_reassembly.restore.batch import (
    BatchManifest,
    RestoreConfig,
    build_batch_restore_job,
    submit_batch_job,
    write_batch_manifest,
)
from dicom_reassembly.restore.ledger import read_restore_ledger
from dicom_reassembly.restore.plan import (
    STATE_AVAILABLE,
    STATE_NOT_NEEDED,
    STATE_RESTORE,
    STATE_UNKNOWN,
    PlannedObject,
    plan_restore,
)
from dicom_reassembly.restore.requests import (
    OUTCOME_ALREADY_RESTORED,
    OUTCOME_ERROR,
    OUTCOME_NOT_ARCHIVED,
    OUTCOME_REQUESTED,
    request_restores,
)
from dicom_reassembly.restore.status import (
    STATUS_MISSING,
    STATUS_NOT_NEEDED,
    STATUS_NOT_REQUESTED,
    STATUS_PENDING,
    STATUS_RESTORED,
    parse_restore_header,
    restore_status,
    status_one,
)

CRITERIA = [
    {"dicom_tag": ["0008", "0020"], "operation": "GREATER", "reference": "2022-01-01"},
    {"dicom_tag": ["0008", "0060"], "operation": "IN", "reference": ["CT"]},
]


@pytest.fixture()
def bucket(s3) -> str:  # noqa: ANN001
    """A fresh bucket on the moto server, with the library's cached clients reset onto it."""
    clients._clients.clear()  # a client cached before AWS_ENDPOINT_URL was set would miss moto
    name = f"restore-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def put(s3, bucket: str, key: str, storage_class: str = "GLACIER", body: bytes | None = None) -> str:  # noqa: ANN001
    s3.put_object(Bucket=bucket, Key=key, Body=body or key.encode() * 10, StorageClass=storage_class)
    return f"s3://{bucket}/{key}"


def header(uid: str, date: str, modality: str, pixel_ref: str | None = None) -> str:
    h = {
        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00080018": {"vr": "UI", "Value": [uid]},
        "00080020": {"vr": "DA", "Value": [date]},
        "00080060": {"vr": "CS", "Value": [modality]},
    }
    if pixel_ref:
        h["7FE00010"] = {"vr": "OW", "BulkDataURI": pixel_ref}
    return json.dumps(h)


def delivery(s3, bucket: str) -> dict[str, str]:  # noqa: ANN001
    """Two text archives and four pixel archives; p4 is already in STANDARD."""
    uris = {name: put(s3, bucket, f"text/{name}.tar") for name in ("t1", "t2")}
    uris.update({name: put(s3, bucket, f"images/{name}.tar") for name in ("p1", "p2", "p3")})
    uris["p4"] = put(s3, bucket, "images/p4.tar", "STANDARD")
    return uris


def write_manifest(path: str, uris: dict[str, str], *, u3_ref: str | None = None, stale: str | None = None,
                   pixels: bool = True) -> str:
    """A manifest written with pyarrow: t1, t2, p1, p2 indexed (p2 also by an older run); p3, p4 not indexed.

    u1 (CT 2023) is selected, pixels in p1; u2 (MR 2021) is filtered out, pixels in p2; u3 (CT 2023) is
    selected with pixels in the unindexed p3. The older run of p2 claims u1 and u3: it must be ignored.
    """
    infos = {k: listing.head(v) for k, v in uris.items()}
    rows = []

    def archive(name: str, role: str, run: str, error: str | None = None) -> None:
        info = infos[name]
        etag = "stale-etag" if name == stale else info.etag
        rows.append(dict(archive_uri=uris[name], archive_role=role, archive_size=info.size, archive_etag=etag,
                         index_run=run, kind="archive", error=error))

    def member(name: str, role: str, run: str, kind: str, uid: str, hjson: str | None = None) -> None:
        rows.append(dict(archive_uri=uris[name], archive_role=role, archive_size=infos[name].size,
                         archive_etag=infos[name].etag, index_run=run, kind=kind, sop_instance_uid=uid,
                         header_json=hjson, size=1000 if kind == "pixels" else 300,
                         pixel_ref=json.loads(hjson).get("7FE00010", {}).get("BulkDataURI") if hjson else None))

    new, old = "20260102T000000Z", "20250101T000000Z"
    member("t1", "text", new, "header", "1.2.3.1", header("1.2.3.1", "20230105", "CT", "1.2.3.1.j2c"))
    member("t1", "text", new, "header", "1.2.3.2", header("1.2.3.2", "20210105", "MR", "1.2.3.2.j2c"))
    member("t2", "text", new, "header", "1.2.3.3", header("1.2.3.3", "20230301", "CT", u3_ref))
    archive("t1", "text", new)
    archive("t2", "text", new)
    if pixels:
        member("p1", "images", new, "pixels", "1.2.3.1")
        archive("p1", "images", new)
        member("p2", "images", old, "pixels", "1.2.3.1")
        member("p2", "images", old, "pixels", "1.2.3.3")
        archive("p2", "images", old)
        member("p2", "images", new, "pixels", "1.2.3.2")
        archive("p2", "images", new)
    archive("p3", "images", new, error="not_restored")  # tried while in Glacier: not an index
    schema = pa.schema([("archive_uri", pa.string()), ("archive_role", pa.string()), ("archive_size", pa.int64()),
                        ("archive_etag", pa.string()), ("index_run", pa.string()), ("kind", pa.string()),
                        ("sop_instance_uid", pa.string()), ("error", pa.string()), ("header_json", pa.string()),
                        ("pixel_ref", pa.string()), ("size", pa.int64())])
    table = pa.Table.from_pylist([{f: r.get(f) for f in schema.names} for r in rows], schema=schema)
    import os

    os.makedirs(path, exist_ok=True)
    pq.write_table(table.slice(0, 7), os.path.join(path, "part-00000.parquet"))
    pq.write_table(table.slice(7), os.path.join(path, "part-00001.parquet"))
    return path


@pytest.fixture()
def criteria_file(tmp_path) -> str:  # noqa: ANN001
    p = tmp_path / "criteria.json"
    p.write_text(json.dumps(CRITERIA))
    return str(p)


def states(plan) -> dict[str, str]:  # noqa: ANN001
    return {io_uris.basename(o.uri).removesuffix(".tar"): o.state for o in plan.objects}


# ------------------------------------------------------------------------------------------- reads before


def test_reads_before_restore_are_not_restored_and_work_after(s3, bucket) -> None:  # noqa: ANN001
    uri = put(s3, bucket, "images/cold.tar", body=b"0123456789" * 100)
    with pytest.raises(NotRestoredError) as exc:
        reads.open_read(uri)
    assert exc.value.reason == "not_restored" and exc.value.status == "not_restored"
    with pytest.raises(NotRestoredError):
        reads.read_range(uri, 10, 20)
    s3.restore_object(Bucket=bucket, Key="images/cold.tar", RestoreRequest={"Days": 1})
    assert reads.read_range(uri, 10, 5) == b"01234"  # moto restores at once


# ------------------------------------------------------------------------------------------------- plan


def test_plan_without_manifest_needs_everything_headers_first(s3, bucket) -> None:  # noqa: ANN001
    uris = delivery(s3, bucket)
    plan = plan_restore(f"s3://{bucket}/text", f"s3://{bucket}/images")
    assert states(plan) == {"t1": STATE_RESTORE, "t2": STATE_RESTORE, "p1": STATE_RESTORE, "p2": STATE_RESTORE,
                            "p3": STATE_RESTORE, "p4": STATE_AVAILABLE}
    todo = plan.to_restore()
    assert [o.uri for o in todo[:2]] == [uris["t1"], uris["t2"]]
    assert [o.wave for o in todo] == [1, 1, 2, 2, 2]
    s = plan.summary()
    assert s["waves"]["1"][STATE_RESTORE]["count"] == 2
    assert s["waves"]["2"][STATE_AVAILABLE] == {"count": 1, "bytes": listing.head(uris["p4"]).size}
    assert s["to_restore"]["count"] == 5


def test_plan_with_manifest_and_criteria_restores_only_selected_pixel_archives(s3, bucket, tmp_path,  # noqa: ANN001
                                                                               criteria_file) -> None:
    uris = delivery(s3, bucket)
    manifest = write_manifest(str(tmp_path / "manifest"), uris)
    plan = plan_restore(f"s3://{bucket}/text", f"s3://{bucket}/images", manifest, criteria_file)
    # headers already in the manifest; p2 holds only a filtered-out instance (the older index is ignored);
    # u3 has no known pixel archive, so the unindexed p3 cannot be proven unneeded
    assert states(plan) == {"t1": STATE_NOT_NEEDED, "t2": STATE_NOT_NEEDED, "p1": STATE_RESTORE,
                            "p2": STATE_NOT_NEEDED, "p3": STATE_UNKNOWN, "p4": STATE_AVAILABLE}
    sel = plan.selection
    assert (sel.selected, sel.filtered_out, sel.located_by_manifest, sel.unlocated) == (2, 1, 1, 1)
    assert [o.uri for o in plan.to_restore()] == [uris["p1"], uris["p3"]]
    assert [o.uri for o in plan.to_restore(include_unknown=False)] == [uris["p1"]]
    assert any("unknown" in n for n in plan.notes)


def test_plan_pixel_ref_naming_an_archive_proves_the_rest_unneeded(s3, bucket, tmp_path,  # noqa: ANN001
                                                                   criteria_file) -> None:
    uris = delivery(s3, bucket)
    manifest = write_manifest(str(tmp_path / "manifest"), uris, u3_ref=f"{uris['p3']}/1.2.3.3.j2c")
    plan = plan_restore(f"s3://{bucket}/text", f"s3://{bucket}/images", manifest, criteria_file)
    assert states(plan)["p3"] == STATE_RESTORE
    assert states(plan)["p4"] == STATE_NOT_NEEDED  # every selected instance is located
    assert plan.selection.located_by_ref == 1 and plan.selection.unlocated == 0


def test_plan_stale_index_is_not_trusted(s3, bucket, tmp_path, criteria_file) -> None:  # noqa: ANN001
    uris = delivery(s3, bucket)
    manifest = write_manifest(str(tmp_path / "manifest"), uris, stale="p2")
    plan = plan_restore(f"s3://{bucket}/text", f"s3://{bucket}/images", manifest, criteria_file)
    assert states(plan)["p2"] == STATE_UNKNOWN  # the archive changed since it was indexed


def test_plan_manifest_missing_is_a_clear_error(s3, bucket, tmp_path, criteria_file) -> None:  # noqa: ANN001
    delivery(s3, bucket)
    with pytest.raises(errors.NotFoundError) as exc:
        plan_restore(f"s3://{bucket}/text", f"s3://{bucket}/images", str(tmp_path / "nope"), criteria_file)
    assert exc.value.reason == "manifest_not_found"


# ---------------------------------------------------------------------------------------------- requests


class FakeClock:
    """A simulated clock whose sleep advances time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, dt: float) -> None:
        self.now += dt
        self.slept += dt


def test_token_bucket_honours_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=20, burst=5, clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(105):
        bucket.acquire()
        times.append(clock.now)
    # 5 at once from the burst, then one every 1/20 s: 100 more take 5 simulated seconds
    assert times[4] == pytest.approx(1000.0)
    assert times[-1] - times[0] == pytest.approx(5.0, abs=1e-6)
    for i in range(len(times)):  # no 1-second window holds more than rate + burst acquisitions
        assert sum(1 for t in times[i:] if t < times[i] + 1.0) <= 25
    with pytest.raises(ConfigError):
        TokenBucket(rate=0)


def test_request_bulk_is_idempotent_and_recorded(s3, bucket, tmp_path) -> None:  # noqa: ANN001
    delivery(s3, bucket)
    plan = plan_restore(f"s3://{bucket}/text", f"s3://{bucket}/images")
    ledger = f"s3://{bucket}/restore-ledger"
    clock = FakeClock()
    limiter = TokenBucket(rate=2, burst=1, clock=clock, sleep=clock.sleep)
    first = request_restores(plan, "Bulk", 3, ledger_uri=ledger, bucket=limiter, workers=2)
    assert first.outcomes == {OUTCOME_REQUESTED: 5}
    assert clock.slept == pytest.approx(2.0)  # 5 requests at 2/s with a burst of 1: the limiter was used
    head = s3.head_object(Bucket=bucket, Key="images/p1.tar")
    assert 'ongoing-request="false"' in head["Restore"]
    second = request_restores(plan, "Bulk", 3, ledger_uri=ledger, workers=2)
    assert second.outcomes == {OUTCOME_ALREADY_RESTORED: 5} and not second.error_codes
    rows = read_restore_ledger(ledger).to_pylist()
    assert len(rows) == 10
    assert {r["tier"] for r in rows} == {"Bulk"} and {r["days"] for r in rows} == {3}
    assert all(r["error_code"] is None for r in rows)
    assert {r["run_id"] for r in rows} == {first.run_id, second.run_id}
    assert sorted(r["wave"] for r in rows if r["run_id"] == first.run_id) == [1, 1, 2, 2, 2]
    assert all(isinstance(r["requested_at"], datetime) for r in rows)


def test_request_errors_become_rows(s3, bucket, tmp_path) -> None:  # noqa: ANN001
    ok = put(s3, bucket, "images/ok.tar")
    std = put(s3, bucket, "images/std.tar", "STANDARD")
    objs = [PlannedObject(ok, 10, "images", 2, STATE_RESTORE, "x", "GLACIER"),
            PlannedObject(f"s3://{bucket}/images/gone.tar", 10, "images", 2, STATE_RESTORE, "x", "GLACIER"),
            PlannedObject(std, 10, "images", 2, STATE_RESTORE, "x", "GLACIER"),
            PlannedObject(f"s3://{bucket}/images/deep.tar", 10, "images", 2, STATE_RESTORE, "x", "DEEP_ARCHIVE")]
    ledger = str(tmp_path / "ledger")
    report = request_restores(objs, "Expedited", 1, rate=1000, ledger_uri=ledger)
    by_uri = {r["uri"]: r for r in read_restore_ledger(ledger).to_pylist()}
    assert by_uri[ok]["outcome"] == OUTCOME_REQUESTED
    assert by_uri[f"s3://{bucket}/images/gone.tar"]["outcome"] == OUTCOME_ERROR
    assert by_uri[f"s3://{bucket}/images/gone.tar"]["error_code"] == "NoSuchKey"
    assert by_uri[std]["outcome"] == OUTCOME_NOT_ARCHIVED and by_uri[std]["error_code"] == "InvalidObjectState"
    assert by_uri[f"s3://{bucket}/images/deep.tar"]["error_code"] == "tier_not_supported"
    assert report.error_codes == {"NoSuchKey": 1, "tier_not_supported": 1}
    with pytest.raises(ConfigError):
        request_restores(objs, "Fast", 1)
    with pytest.raises(ConfigError):
        request_restores(objs, "Bulk", 0)


# ------------------------------------------------------------------------------------------------ status


def test_parse_restore_header_real_strings() -> None:
    assert parse_restore_header('ongoing-request="true"') == (True, None)
    ongoing, expiry = parse_restore_header('ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"')
    assert ongoing is False and expiry == datetime(2012, 12, 21, tzinfo=timezone.utc)
    assert parse_restore_header(None) == (None, None)
    assert parse_restore_header("") == (None, None)


def test_status_pending_restored_and_not_needed(s3, bucket, capsys) -> None:  # noqa: ANN001
    uris = delivery(s3, bucket)
    plan = plan_restore(f"s3://{bucket}/text", f"s3://{bucket}/images")
    s3.delete_object(Bucket=bucket, Key="text/t2.tar")  # deleted after planning
    before = {io_uris.basename(s.uri): s.state for s in restore_status(plan).objects}
    assert before["p1.tar"] == STATUS_NOT_REQUESTED and before["p4.tar"] == STATUS_NOT_NEEDED
    s3.restore_object(Bucket=bucket, Key="images/p1.tar", RestoreRequest={"Days": 2})
    report = restore_status(plan, progress=True)
    by = {io_uris.basename(s.uri): s for s in report.objects}
    assert by["p1.tar"].state == STATUS_RESTORED
    assert timedelta(days=1) < by["p1.tar"].expiry - datetime.now(timezone.utc) <= timedelta(days=3)
    assert by["t2.tar"].state == STATUS_MISSING
    summary = report.summary()
    assert summary["states"][STATUS_RESTORED]["count"] == 1 and not summary["complete"]
    assert summary["earliest_expiry"] == by["p1.tar"].expiry.isoformat()
    assert "restore status" in capsys.readouterr().err  # the progress bar goes to stderr

    class Pending:  # moto restores at once; real S3 answers like this for hours
        def head_object(self, **kw: str) -> dict:
            return {"StorageClass": "GLACIER", "Restore": 'ongoing-request="true"'}

    st = status_one(Pending(), PlannedObject(uris["p2"], 1, "images", 2, STATE_RESTORE, "x", "GLACIER"))
    assert st.state == STATUS_PENDING and st.expiry is None


# ------------------------------------------------------------------------------------- Batch Operations


def test_batch_manifest_is_url_encoded_csv_without_header(s3, bucket) -> None:  # noqa: ANN001
    keys = ["images/plain.tar", "images/with space.tar", "images/é ü 東京.tar", "images/a,b+c%d.tar"]
    out = f"s3://{bucket}/batch/manifest.csv"
    m = write_batch_manifest([f"s3://{bucket}/{k}" for k in keys], out)
    body = s3.get_object(Bucket=bucket, Key="batch/manifest.csv")
    text = body["Body"].read().decode("utf-8")
    assert m.count == 4 and m.etag == body["ETag"].strip('"')
    lines = text.splitlines()
    assert len(lines) == 4 and not lines[0].lower().startswith("bucket")
    rows = list(csv.reader(io.StringIO(text)))
    assert all(len(r) == 2 and r[0] == bucket for r in rows)
    assert [unquote(r[1]) for r in rows] == keys
    assert all(" " not in r[1] and r[1].isascii() for r in rows)
    assert rows[1][1] == "images%2Fwith%20space.tar"
    with pytest.raises(ConfigError):
        write_batch_manifest(["/local/file.tar"], out)


def test_create_job_request_shape_and_submit() -> None:
    import boto3
    from botocore.stub import Stubber

    cfg = RestoreConfig(account_id="123456789012", role_arn="arn:aws:iam::123456789012:role/batch-restore",
                        report_bucket="reports-bucket")
    manifest = BatchManifest("s3://ops-bucket/batch/manifest.csv", "0123abcd", 42)
    req = build_batch_restore_job(cfg, manifest, tier="Bulk", days=5)
    assert req["Operation"] == {"S3InitiateRestoreObject": {"ExpirationInDays": 5, "GlacierJobTier": "BULK"}}
    assert req["Manifest"]["Location"] == {"ObjectArn": "arn:aws:s3:::ops-bucket/batch/manifest.csv",
                                           "ETag": "0123abcd"}
    assert req["Manifest"]["Spec"] == {"Format": "S3BatchOperations_CSV_20180820", "Fields": ["Bucket", "Key"]}
    assert req["Report"]["Bucket"] == "arn:aws:s3:::reports-bucket"
    assert req["RoleArn"] == cfg.role_arn and req["AccountId"] == "123456789012"
    assert build_batch_restore_job(cfg, manifest, days=5)["ClientRequestToken"] == req["ClientRequestToken"]
    assert build_batch_restore_job(cfg, manifest, days=6)["ClientRequestToken"] != req["ClientRequestToken"]

    client = boto3.client("s3control", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:  # moto has no s3control CreateJob; the Stubber validates against the API model
        stub.add_response("create_job", {"JobId": "job-0001"}, expected_params=req)
        assert submit_batch_job(client, req) == "job-0001"
        stub.add_client_error("create_job", "AccessDenied", http_status_code=403)
        with pytest.raises(StorageError) as exc:
            submit_batch_job(client, req)
        assert exc.value.reason == "batch_create_failed"
    with pytest.raises(ConfigError):
        build_batch_restore_job(cfg, manifest, tier="Expedited")
    with pytest.raises(ConfigError) as missing:
        build_batch_restore_job(RestoreConfig(account_id="1"), manifest)
    assert "role_arn" in missing.value.detail


# ---------------------------------------------------------------------------------------------------- CLI


def run_cli(argv: list[str]) -> int:
    """The real console entry point, as a user runs it."""
    from dicom_reassembly.cli.main import main

    return main(argv)


def test_cli_plan_request_status(s3, bucket, tmp_path, criteria_file, capsys) -> None:  # noqa: ANN001
    uris = delivery(s3, bucket)
    manifest = write_manifest(str(tmp_path / "manifest"), uris)
    base = ["--text", f"s3://{bucket}/text", "--images", f"s3://{bucket}/images", "--manifest", manifest,
            "--criteria", criteria_file]
    assert run_cli(["restore", "plan", *base, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["to_restore"]["count"] == 2 and plan["selection"]["selected"] == 2
    assert run_cli(["restore", "plan", *base, "--exclude-unknown", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["to_restore"]["count"] == 1
    ledger = str(tmp_path / "ledger")
    assert run_cli(["restore", "request", *base, "--ledger", ledger, "--days", "2", "--rate", "500"]) == 0
    assert "requested" in capsys.readouterr().out
    assert sorted(r["uri"] for r in read_restore_ledger(ledger).to_pylist()) == [uris["p1"], uris["p3"]]
    assert run_cli(["restore", "status", *base, "--json", "--no-progress"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["states"][STATUS_RESTORED]["count"] == 2


def test_cli_batch_prints_request(s3, bucket, tmp_path, capsys) -> None:  # noqa: ANN001
    delivery(s3, bucket)
    cfg = tmp_path / "restore.json"
    cfg.write_text(json.dumps({"restore": {"account_id": "123456789012", "report_bucket": "reports",
                                           "role_arn": "arn:aws:iam::123456789012:role/r"}}))
    rc = run_cli(["restore", "request", "--text", f"s3://{bucket}/text", "--images", f"s3://{bucket}/images",
                  "--batch-threshold", "3", "--batch-manifest", f"s3://{bucket}/batch/m.csv", "--config", str(cfg),
                  "--ledger", str(tmp_path / "ledger")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["job_id"] is None and out["batch_manifest"]["count"] == 5
    assert out["create_job_request"]["Manifest"]["Location"]["ETag"] == out["batch_manifest"]["etag"]
    assert {r["outcome"] for r in read_restore_ledger(str(tmp_path / "ledger")).to_pylist()} == {"batch"}
    head = s3.head_object(Bucket=bucket, Key="images/p1.tar")
    assert "Restore" not in head  # printing the request restores nothing


def test_cli_errors_are_one_line(s3, bucket, tmp_path, capsys) -> None:  # noqa: ANN001
    delivery(s3, bucket)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"dicom_tag": ["0008", "0020"], "operation": "MAYBE", "reference": "x"}]))
    base = ["--text", f"s3://{bucket}/text", "--images", f"s3://{bucket}/images"]
    assert run_cli(["restore", "plan", *base, "--manifest", str(tmp_path), "--criteria", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "MAYBE" in err
    assert run_cli(["restore", "plan", *base, "--criteria", str(bad)]) == 2
    assert "criteria_needs_manifest" in capsys.readouterr().err
    assert run_cli(["restore", "request", *base]) == 2
    assert "ledger_required" in capsys.readouterr().err
    assert run_cli(["restore", "plan", "--text", "s3://no-such-bucket-xyz/t", "--images", "s3://no-such-bucket-xyz/i"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_bucket" in err


def test_plan_damaged_manifest_is_a_typed_error(s3, bucket, tmp_path, criteria_file) -> None:  # noqa: ANN001
    delivery(s3, bucket)
    damaged = tmp_path / "manifest"
    damaged.mkdir()
    (damaged / "part-00000.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(StorageError) as exc:
        plan_restore(f"s3://{bucket}/text", f"s3://{bucket}/images", str(damaged), criteria_file)
    assert exc.value.reason == "manifest_unreadable"


def test_plan_only_counts_archive_suffixes(s3, bucket) -> None:  # noqa: ANN001
    delivery(s3, bucket)
    put(s3, bucket, "images/checksums.md5")
    plan = plan_restore(f"s3://{bucket}/text", f"s3://{bucket}/images")
    assert "checksums.md5" not in {io_uris.basename(o.uri) for o in plan.objects}
    everything = plan_restore(f"s3://{bucket}/text", f"s3://{bucket}/images", suffixes=())
    assert "checksums.md5" in {io_uris.basename(o.uri) for o in everything.objects}


def test_plan_first_campaign_skips_header_parsing_when_nothing_can_be_located(s3, bucket, tmp_path,  # noqa: ANN001
                                                                             criteria_file) -> None:
    uris = delivery(s3, bucket)
    manifest = write_manifest(str(tmp_path / "manifest"), uris, pixels=False)  # only wave 1 is indexed
    plan = plan_restore(f"s3://{bucket}/text", f"s3://{bucket}/images", manifest, criteria_file)
    assert plan.selection.evaluated is False and plan.selection.header_rows == 0
    assert states(plan) == {"t1": STATE_NOT_NEEDED, "t2": STATE_NOT_NEEDED, "p1": STATE_UNKNOWN,
                            "p2": STATE_UNKNOWN, "p3": STATE_UNKNOWN, "p4": STATE_AVAILABLE}
    # a header that names its pixel archive makes the evaluation worth it
    named = write_manifest(str(tmp_path / "named"), uris, pixels=False, u3_ref=f"{uris['p3']}/1.2.3.3.j2c")
    plan = plan_restore(f"s3://{bucket}/text", f"s3://{bucket}/images", named, criteria_file)
    assert plan.selection.evaluated and states(plan)["p3"] == STATE_RESTORE and states(plan)["p1"] == STATE_UNKNOWN
    # forced evaluation: criteria that select nothing prove every pixel archive unneeded
    none = tmp_path / "none.json"
    none.write_text(json.dumps([{"dicom_tag": ["0008", "0060"], "operation": "IN", "reference": ["XA"]}]))
    plan = plan_restore(f"s3://{bucket}/text", f"s3://{bucket}/images", manifest, str(none), always_evaluate=True)
    assert plan.selection.selected == 0 and plan.to_restore() == []


def test_plan_goes_on_past_what_the_listing_cannot_read(tmp_path) -> None:  # noqa: ANN001
    import os

    (tmp_path / "text").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "text" / "t1.tar").write_bytes(b"x" * 10)
    (tmp_path / "images" / "p1.tar").write_bytes(b"x" * 20)
    os.symlink(tmp_path / "gone.tar", tmp_path / "images" / "p0.tar")
    plan = plan_restore(str(tmp_path / "text"), str(tmp_path / "images"))
    assert [(io_uris.basename(o.uri), o.size) for o in plan.objects] == [("t1.tar", 10), ("p1.tar", 20)]
    assert any("p0.tar: broken_link" in n for n in plan.notes), plan.notes
