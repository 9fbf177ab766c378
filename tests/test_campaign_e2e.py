"""The campaign flow end to end: a real Prefect server, ``campaign serve``, archives in GLACIER on a moto server
with IAM enforced, the run created through Prefect's REST API with the brief's parameter shape; and a flow
killed midway and started again.

Kept to few spark-submit runs (CI has two cores): the served test runs build_manifest twice (headers, then the
restored pixel archives) and reassemble twice (the second run, through a credentials block, finds everything
written); the kill test runs build_manifest once and reassemble twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.dataset as pads
import pytest
from campaign_servers import BIN, http, iam_moto_server, prefect_server, stop
from helpers import dcmftest_ok

pytestmark = [pytest.mark.e2e]

CLI = os.path.join(BIN, "dicom-reassembly")
REFERENCE_DATE = "2018-12-31"  # the sample's study dates straddle it: some instances selected, some not


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_"))}
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               DICOM_REASSEMBLY_SPARK_MASTER="local[2]", DICOM_REASSEMBLY_LOG="INFO", **extra)
    return env


def _selected(expected: dict) -> set[str]:
    ref = REFERENCE_DATE.replace("-", "")
    return {uid for uid, inst in expected["instances"].items() if inst["study_date"] > ref}


def _ledger_newest(ledger: str) -> dict[str, list[tuple[str, str]]]:
    """Every ledger row per UID as (run_id, status), oldest run first."""
    table = pads.dataset(ledger, format="parquet", partitioning="hive").to_table(
        columns=["run_id", "sop_instance_uid", "status"])
    out: dict[str, list[tuple[str, str]]] = {}
    for run, uid, status in zip(*(table.column(c).to_pylist() for c in ("run_id", "sop_instance_uid", "status"))):
        out.setdefault(uid, []).append((str(run), status))
    return {u: sorted(v) for u, v in out.items()}


def _files_under(*roots: str) -> list[str]:
    found = []
    for root in roots:
        for dirpath, _, files in os.walk(root):
            found.extend(os.path.join(dirpath, f) for f in files)
    return found


def _wait_for_run(api: str, run_id: str, timeout: float) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = http("GET", f"{api}/flow_runs/{run_id}")
        state = (run.get("state") or {}).get("type")
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(2)
    raise TimeoutError(f"flow run {run_id} not finished after {timeout}s")


def _secret_block(api: str, name: str, value: str) -> None:
    """A Prefect Secret block, created through the REST API as a user's client would."""
    block_type = http("GET", f"{api}/block_types/slug/secret")
    schemas = http("POST", f"{api}/block_schemas/filter",
                   {"block_schemas": {"block_type_id": {"any_": [block_type["id"]]}}})
    http("POST", f"{api}/block_documents/", {"name": name, "data": {"value": value}, "is_anonymous": False,
                                             "block_type_id": block_type["id"], "block_schema_id": schemas[0]["id"]})


def _prefect_records(api: str, run_id: str) -> str:
    """The flow run (without its parameters), its task runs and its logs, as Prefect's API serves them."""
    run = http("GET", f"{api}/flow_runs/{run_id}")
    run.pop("parameters", None)  # Prefect stores inline parameters: why credentials_block is recommended
    tasks = http("POST", f"{api}/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
    logs = http("POST", f"{api}/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
    return json.dumps([run, tasks, logs])


def test_served_campaign_restores_from_glacier_and_completes_with_split_credentials(sample_delivery, tmp_path):  # noqa: ANN001
    root, expected = sample_delivery
    selected = _selected(expected)
    assert 0 < len(selected) < len(expected["instances"])
    work, home = str(tmp_path / "work"), str(tmp_path / "prefect")
    with iam_moto_server() as moto:
        s3 = moto.admin("s3")
        for bucket in ("partner-archives", "reassembled"):
            s3.create_bucket(Bucket=bucket)
        for sub in ("text", "images"):
            for name in sorted(os.listdir(os.path.join(root, sub))):
                s3.upload_file(os.path.join(root, sub, name), "partner-archives", f"delivery/{sub}/{name}",
                               ExtraArgs={"StorageClass": "GLACIER"})
        partner = moto.add_user("partner", ["partner-archives"], ["s3:ListBucket", "s3:GetObject", "s3:RestoreObject"])
        ours = moto.add_user("ours", ["reassembled"], ["s3:*"])
        block_key = moto.new_key("partner")  # a second key of the partner's, only ever in the Secret block
        moto.restore_takes(2)
        moto.enforce()
        # The split holds before the flow runs: each key reaches its own bucket only.
        from botocore.exceptions import ClientError

        with pytest.raises(ClientError, match="AccessDenied"):
            moto.client("s3", "ours").list_objects_v2(Bucket="partner-archives")
        with pytest.raises(ClientError, match="AccessDenied"):
            moto.client("s3", "partner").put_object(Bucket="reassembled", Key="x", Body=b"x")
        with pytest.raises(ClientError, match="InvalidObjectState"):  # GLACIER: no GET before a restore
            moto.client("s3", "partner").get_object(Bucket="partner-archives", Key="delivery/text/text-000.tar")

        env_aws = {"AWS_ENDPOINT_URL": moto.url, "AWS_ACCESS_KEY_ID": ours[0], "AWS_SECRET_ACCESS_KEY": ours[1],
                   "AWS_DEFAULT_REGION": "us-east-1"}
        with prefect_server(home, str(tmp_path / "prefect-server.log")) as server:
            serve_log = tmp_path / "serve.log"
            with open(serve_log, "wb") as log:
                serve = subprocess.Popen([CLI, "campaign", "serve"], env=_env({**server.env(), **env_aws}),
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                deployment = None
                deadline = time.time() + 120
                while deployment is None and time.time() < deadline:
                    assert serve.poll() is None, serve_log.read_text()[-3000:]
                    try:
                        deployment = http("GET", f"{server.api}/deployments/name/dicom-reassembly-campaign/default")
                    except Exception:  # noqa: BLE001 - 404 until serve has registered it
                        time.sleep(1)
                assert deployment is not None, serve_log.read_text()[-3000:]
                params = {
                    "input_s3_parameters": {"endpoint": moto.url, "bucket": "partner-archives",
                                            "credentials": f"{partner[0]}:{partner[1]}", "region": "us-east-1"},
                    "criteria": [{"dicom_tag": ["0008", "0020"], "operation": "GREATER", "reference": REFERENCE_DATE}],
                    "text": "s3://partner-archives/delivery/text", "images": "s3://partner-archives/delivery/images",
                    "out": "s3://reassembled/dcm", "work": work, "poll_seconds": 1, "max_wait_seconds": 300,
                }
                run = http("POST", f"{server.api}/deployments/{deployment['id']}/create_flow_run",
                           {"parameters": params})
                done = _wait_for_run(server.api, run["id"], 900)
                assert done["state"]["type"] == "COMPLETED", (done["state"], serve_log.read_text()[-4000:])

                out = moto.client("s3", "ours")
                keys = {o["Key"] for o in out.list_objects_v2(Bucket="reassembled", Prefix="dcm/").get("Contents", [])}
                assert keys == {f"dcm/{uid}.dcm" for uid in selected}
                for uid in sorted(selected)[:3]:
                    local = tmp_path / f"{uid}.dcm"
                    out.download_file("reassembled", f"dcm/{uid}.dcm", str(local))
                    assert dcmftest_ok(str(local))
                rows = _ledger_newest(os.path.join(work, "ledger"))
                assert {u for u, r in rows.items() if r[-1][1] == "written"} == selected
                assert {u for u, r in rows.items() if r[-1][1] == "filtered_out"} == set(expected["instances"]) - selected
                restores = pads.dataset(os.path.join(work, "restore_ledger"), format="parquet").to_table()
                assert set(restores.column("role").to_pylist()) == {"text", "images"}  # both waves went to Glacier
                assert set(restores.column("outcome").to_pylist()) <= {"requested", "already_restored"}
                reports = os.listdir(os.path.join(work, "campaign", "reports"))
                assert len(reports) == 1
                with open(os.path.join(work, "campaign", "reports", reports[0])) as f:
                    report = json.load(f)
                for wave in ("wait_headers", "wait_pixels"):  # the restores took a while: the flow waited
                    assert report["steps"][wave]["objects"] == 3 and report["steps"][wave]["polls"] >= 2, report
                assert report["steps"]["build_manifest_pixels"]["ran"] is True  # the restored pixel archives
                records_1 = _prefect_records(server.api, run["id"])
                rows_1 = rows

                # A second run, its credentials from a Secret block: everything is written already.
                _secret_block(server.api, "partner-archives-key", f"{block_key[0]}:{block_key[1]}")
                params2 = dict(params, input_s3_parameters={k: v for k, v in params["input_s3_parameters"].items()
                                                            if k != "credentials"},
                               credentials_block="partner-archives-key")
                run2 = http("POST", f"{server.api}/deployments/{deployment['id']}/create_flow_run",
                            {"parameters": params2})
                done2 = _wait_for_run(server.api, run2["id"], 600)
                assert done2["state"]["type"] == "COMPLETED", (done2["state"], serve_log.read_text()[-4000:])
                # Carried over by the state: not planned, not read, no second row; the filtered-out instances
                # too, as the criteria are the same.
                rows_2 = _ledger_newest(os.path.join(work, "ledger"))
                assert {u: rows_2.get(u) for u in expected["instances"]} == {u: rows_1.get(u) for u in expected["instances"]}
                second = max(os.listdir(os.path.join(work, "campaign", "reports")))
                with open(os.path.join(work, "campaign", "reports", second)) as f:
                    assert json.load(f)["steps"]["reassemble"]["carried_over"] == len(expected["instances"])
                records_2 = _prefect_records(server.api, run2["id"])
            finally:
                stop(serve)
        # No secret anywhere we or Prefect wrote: work folder, outputs, serve and server logs, run records,
        # and, for the block's key, Prefect's whole home (database included).
        inline_secret, block_secret = partner[1].encode(), block_key[1].encode()
        for name, data in (("records of run 1", records_1.encode()), ("records of run 2", records_2.encode())):
            assert inline_secret not in data and block_secret not in data, name
        for path in _files_under(work, str(tmp_path / "prefect-server.log"), str(serve_log)):
            with open(path, "rb") as f:
                blob = f.read()
            assert inline_secret not in blob and block_secret not in blob, path
        for path in _files_under(home):
            with open(path, "rb") as f:
                assert block_secret not in f.read(), path
        for page in moto.client("s3", "ours").get_paginator("list_objects_v2").paginate(Bucket="reassembled"):
            for o in page.get("Contents", []):
                body = moto.client("s3", "ours").get_object(Bucket="reassembled", Key=o["Key"])["Body"].read()
                assert inline_secret not in body and block_secret not in body


def test_flow_killed_during_reassemble_then_run_again_writes_every_instance_once(sample_delivery, tmp_path):  # noqa: ANN001
    root, expected = sample_delivery
    out, work = tmp_path / "dcm", tmp_path / "work"
    # Throttled writes (a product setting, for S3's per-prefix limit) so the kill lands mid-run.
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps({"job": {"upload_threads": 1, "reassemble_partitions": 1, "put_rate": 4}}))
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"parameters": {
        "criteria": [], "text": os.path.join(root, "text"), "images": os.path.join(root, "images"),
        "out": str(out), "work": str(work), "poll_seconds": 1, "config": str(slow)}}))
    env = _env({"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    first_log = tmp_path / "first.log"
    with open(first_log, "wb") as log:
        proc = subprocess.Popen([CLI, "campaign", "run", "--params", str(params)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    total = len(expected["instances"])
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and len([f for f in os.listdir(out) if f.endswith(".dcm")]) >= 3:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the flow, its ephemeral server and spark-submit alike
    proc.wait()
    first = {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out) if f.endswith(".dcm")}
    assert 0 < len(first) < total, first_log.read_text()[-3000:]
    committed = [f for f in _files_under(str(work / "ledger")) if f.endswith(".parquet") and "_temporary" not in f]
    assert not committed, "the kill should land before reassemble committed its ledger"

    r = subprocess.run([CLI, "campaign", "run", "--params", str(params)], env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    report = json.loads(r.stdout)
    assert report["steps"]["build_manifest"]["ran"] is False  # the manifest was complete: no Spark for it
    assert report["status"]["done"] == total and report["status"]["left"] == 0
    rows = _ledger_newest(str(work / "ledger"))
    assert set(rows) == set(expected["instances"])
    assert all(len(r) == 1 for r in rows.values())  # one run wrote the ledger: one outcome per instance
    statuses = {u: r[0][1] for u, r in rows.items()}
    assert {u for u, s in statuses.items() if s == "skipped_existing"} >= {f[:-4] for f in first} - {
        max(first, key=first.get)[:-4]}  # the object in flight at the kill may be written again
    assert set(statuses.values()) <= {"written", "skipped_existing"}
    for f, mtime in first.items():
        assert os.stat(out / f).st_mtime_ns == mtime or f == max(first, key=first.get), f"{f} was written twice"
    assert sorted(f for f in os.listdir(out) if f.endswith(".dcm")) == sorted(f"{u}.dcm" for u in expected["instances"])
    for uid in sorted(expected["instances"])[:3]:
        assert dcmftest_ok(str(out / f"{uid}.dcm"))
