"""The campaign's parts alone: parameters, the credentials channel, restore waves on moto, EMR steps, status."""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dicom_reassembly.campaign import channel, status, steps
from dicom_reassembly.campaign.params import SecretText, parse_params, read_params
from dicom_reassembly.errors import ConfigError, CriteriaError
from dicom_reassembly.restore import ledger as restore_ledger
from dicom_reassembly.restore import plan as restore_plan
from dicom_reassembly.selection.spec import load_criteria, parse_criteria

SECRET = "wJalrXUtnFEMI-campaign-secret-0123456789"
CRITERIA = [{"dicom_tag": ["0008", "0020"], "operation": "GREATER", "reference": "2022-01-01"}]


def _params(**extra: object) -> dict:
    base = {"input_s3_parameters": {"endpoint": "http://127.0.0.1:9", "bucket": "partner", "region": "eu-west-3",
                                    "credentials": f"AKIAPARTNER:{SECRET}"},
            "criteria": CRITERIA, "text": "s3://partner/text", "images": "s3://partner/images",
            "out": "s3://ours/dcm", "work": "s3://ours/work"}
    base.update(extra)
    return base


# ------------------------------------------------------------------------------------------ parameters


def test_the_briefs_wrapped_parameters_are_accepted_and_the_secret_never_shows() -> None:
    p = parse_params({"parameters": _params(poll_seconds=30)})
    assert p.input is not None and p.input.bucket == "partner" and p.poll_seconds == 30.0
    assert p.wait_bound == 72 * 3600  # Bulk, from the tier
    assert SECRET not in repr(p) and SECRET not in json.dumps(p.public())
    assert p.public()["input_s3_parameters"]["credentials"] == "***"
    assert p.criteria_document(p.credentials)["input_s3_parameters"]["credentials"] == f"AKIAPARTNER:{SECRET}"
    with pytest.raises(TypeError):
        pickle.dumps(p)
    assert SECRET not in repr(SecretText(SECRET)) and SECRET not in str(SecretText(SECRET))


def test_criteria_accept_the_parameters_wrapper_everywhere(tmp_path) -> None:  # noqa: ANN001
    doc = {"parameters": {"input_s3_parameters": _params()["input_s3_parameters"], "criteria": CRITERIA}}
    assert parse_criteria(doc).sha256() == parse_criteria(CRITERIA).sha256()
    path = tmp_path / "criteria.json"
    path.write_text(json.dumps(doc))
    spec = load_criteria(str(path))
    assert spec.bucket == "partner" and spec.s3 is not None and spec.s3.secret_access_key == SECRET


@pytest.mark.parametrize(("change", "reason"), [
    ({"typo_param": 1}, "unknown_parameter"),
    ({"criteria": [{"dicom_tag": ["0008", "0020"], "operation": "BETWEEN", "reference": "x"}]}, "unknown_operation"),
    ({"text": "s3://elsewhere/text"}, "input_bucket_mismatch"),
    ({"credentials_block": "partner-key"}, "bad_parameter"),  # inline credentials and a block at once
    ({"poll_seconds": 0}, "bad_parameter"),
    ({"restore_tier": "Fast"}, "bad_parameter"),
    ({"emr": {"cluster_id": "j-1", "serverless_app_id": "a"}}, "bad_parameter"),
    ({"work": "/tmp/w", "emr": {"cluster_id": "j-1"}}, "bad_parameter"),
    ({"out": None}, "missing_parameter"),
    ({"stow_url": "http://user:pw@pacs/dicom-web"}, "bad_parameter"),
])
def test_bad_parameters_are_one_line_errors_without_the_secret(change: dict, reason: str) -> None:
    with pytest.raises((ConfigError, CriteriaError)) as info:
        parse_params(_params(**change))
    assert info.value.reason == reason
    assert SECRET not in info.value.one_line()


def test_credentials_block_replaces_inline_credentials() -> None:
    raw = _params(credentials_block="partner-key")
    del raw["input_s3_parameters"]["credentials"]
    p = parse_params(raw)
    assert p.credentials is None and p.credentials_block == "partner-key"
    raw["input_s3_parameters"].pop("credentials", None)
    raw.pop("credentials_block")
    with pytest.raises(CriteriaError, match="credentials"):
        parse_params(raw)


def test_a_params_file_error_names_the_file_not_its_content(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "params.json"
    path.write_text(json.dumps(_params())[:-5])
    with pytest.raises(ConfigError) as info:
        read_params(str(path))
    assert info.value.reason == "params_not_json" and SECRET not in info.value.one_line()


def test_campaign_run_with_bad_params_exits_2_with_one_line(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "params.json"
    path.write_text(json.dumps({"parameters": _params(restore_days=0)}))
    cli = os.path.join(os.path.dirname(sys.executable), "dicom-reassembly")
    r = subprocess.run([cli, "campaign", "run", "--params", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: bad_parameter: restore_days: a whole number of days >= 1, "
                                             f"got 0 ({path})"]


# ----------------------------------------------------------------------------------- credentials channel


def test_criteria_file_is_private_and_removed_after_the_step(tmp_path) -> None:  # noqa: ANN001
    with channel.criteria_file({"criteria": [], "secret": SECRET}, tmp=str(tmp_path)) as path:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        with open(path) as f:
            assert json.load(f)["secret"] == SECRET
    assert not os.path.exists(path) and not os.listdir(tmp_path)


def test_a_killed_steps_criteria_folder_is_swept_by_the_next_step(tmp_path) -> None:  # noqa: ANN001
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{channel.TEMP_PREFIX}{dead.stdout.strip()}-x"
    stale.mkdir()
    (stale / "criteria.json").write_text(SECRET)
    mine = tmp_path / f"{channel.TEMP_PREFIX}{os.getpid()}-y"
    mine.mkdir()
    with channel.criteria_file({"criteria": []}, tmp=str(tmp_path)):
        pass
    assert not stale.exists() and mine.exists()


def test_secrets_manager_carries_the_criteria_to_a_job_by_arn(moto_server: str) -> None:
    import boto3

    client = boto3.client("secretsmanager", region_name="us-east-1")
    doc = {"input_s3_parameters": _params()["input_s3_parameters"], "criteria": CRITERIA}
    name = channel.secret_name("s3://ours/work")
    arn = channel.put_criteria_secret(client, name, doc)
    assert channel.put_criteria_secret(client, name, doc) == arn  # a rerun overwrites the same secret
    assert SECRET not in arn
    spec = load_criteria(arn)  # what the job does with --criteria ARN
    assert spec.s3 is not None and spec.s3.secret_access_key == SECRET and spec.bucket == "partner"
    channel.delete_criteria_secret(client, arn)
    with pytest.raises(CriteriaError, match="criteria_unreadable"):
        load_criteria(arn)


# --------------------------------------------------------------------------------------- restore waves


def _glacier_delivery(s3, bucket: str) -> None:  # noqa: ANN001
    s3.create_bucket(Bucket=bucket)
    for key in ("text/t0.tar", "text/t1.tar", "images/i0.tar"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x" * 1024, StorageClass="GLACIER")


def _local_params(bucket: str, tmp_path, **extra: object):  # noqa: ANN001, ANN202
    return parse_params({"text": f"s3://{bucket}/text", "images": f"s3://{bucket}/images",
                         "out": str(tmp_path / "out"), "work": str(tmp_path / "work"), "poll_seconds": 5, **extra})


@pytest.fixture()
def restore_transition(moto_server: str):  # noqa: ANN201
    """A restore on the shared moto server stays in progress for a while (then the default comes back)."""
    from moto.moto_api import state_manager

    state_manager.set_transition("s3::keyrestore", {"progression": "time", "seconds": 0.5})
    yield
    state_manager.unset_transition("s3::keyrestore")


def test_wave_requests_once_then_waits_until_restored(s3, tmp_path, restore_transition) -> None:  # noqa: ANN001
    _glacier_delivery(s3, "wave-bucket")
    time.sleep(0.6)  # older than the transition: the first look at a restore sees it in progress
    params = _local_params("wave-bucket", tmp_path)
    inputs = steps.Inputs(params, None)
    plan = steps.plan_wave(params, inputs, restore_plan.WAVE_HEADERS)
    assert [o.uri for o in plan.to_restore(wave=1)] == ["s3://wave-bucket/text/t0.tar", "s3://wave-bucket/text/t1.tar"]
    first = steps.request_wave(params, inputs, plan, 1)
    assert first["outcomes"] == {"requested": 2}
    again = steps.request_wave(params, inputs, plan, 1)  # a rerun: the ledger says both are under way
    assert again["already_requested"] == 2 and again["outcomes"] == {}
    sleeps: list[float] = []
    result = steps.wait_wave(params, inputs, plan, 1, sleep=lambda s: (sleeps.append(s), time.sleep(0.6)))
    assert result.objects == 2 and result.polls >= 2 and sleeps and all(s == 5 for s in sleeps)
    assert result.earliest_expiry is not None
    got = s3.get_object(Bucket="wave-bucket", Key="text/t0.tar")["Body"].read()  # readable now
    assert got == b"x" * 1024


def test_wait_is_bounded_and_says_how_to_resume(s3, tmp_path, restore_transition) -> None:  # noqa: ANN001
    _glacier_delivery(s3, "slow-bucket")
    time.sleep(0.6)
    params = _local_params("slow-bucket", tmp_path, max_wait_seconds=12)
    inputs = steps.Inputs(params, None)
    plan = steps.plan_wave(params, inputs, restore_plan.WAVE_HEADERS)
    steps.request_wave(params, inputs, plan, 1)
    now = [0.0]
    with pytest.raises(steps.CampaignError) as info:  # simulated time: the restore is never seen finished
        steps.wait_wave(params, inputs, plan, 1, sleep=lambda s: now.__setitem__(0, now[0] + s),
                        clock=lambda: now[0])
    assert info.value.reason == "restore_wait_timeout" and "start the flow again" in info.value.detail
    assert now[0] <= 12


def test_an_object_never_requested_is_requested_by_the_wait(s3, tmp_path) -> None:  # noqa: ANN001
    _glacier_delivery(s3, "forgotten-bucket")
    params = _local_params("forgotten-bucket", tmp_path)
    inputs = steps.Inputs(params, None)
    plan = steps.plan_wave(params, inputs, restore_plan.WAVE_HEADERS)
    result = steps.wait_wave(params, inputs, plan, 1, sleep=lambda s: None)
    assert result.polls == 2
    ledger = restore_ledger.read_restore_ledger(str(tmp_path / "work" / "restore_ledger"))
    assert sorted(ledger.column("uri").to_pylist()) == [o.uri for o in plan.to_restore(wave=1)]


# ------------------------------------------------------------------------------------------- EMR steps


def test_emr_step_gets_the_secret_arn_never_the_secret(moto_server: str, tmp_path) -> None:  # noqa: ANN001
    import boto3
    from moto.emr.models import emr_backends

    root = tmp_path / "checkout"
    for rel in ("dist/dicom_reassembly.zip", "dist/dicom_reassembly-0.1.0-py3-none-any.whl", "jobs/build_manifest.py",
                "jobs/reassemble.py", "emr/bootstrap.sh"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("# stand-in\n")
    (root / "conf").mkdir()
    with open(os.path.join(os.path.dirname(__file__), "..", "conf", "emr.json")) as f:
        (root / "conf" / "emr.json").write_text(f.read())
    boto3.client("s3").create_bucket(Bucket="emr-work")
    emr = boto3.client("emr", region_name="us-east-1")
    cluster = emr.run_job_flow(Name="c", ReleaseLabel="emr-7.5.0", Instances={
        "MasterInstanceType": "m5.xlarge", "SlaveInstanceType": "m5.xlarge", "InstanceCount": 1,
        "KeepJobFlowAliveWhenNoSteps": True}, JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole")
    cluster_id = cluster["JobFlowId"]
    raw = _params(work="s3://emr-work/w", out="s3://emr-work/out", poll_seconds=1,
                  emr={"cluster_id": cluster_id, "root": str(root), "region": "us-east-1"})
    raw["input_s3_parameters"]["endpoint"] = moto_server
    params = parse_params(raw)
    inputs = steps.Inputs(params, params.credentials)

    def play() -> None:  # moto never runs a step: finish it once it exists
        backend = emr_backends["123456789012"]["us-east-1"]
        for _ in range(200):
            steps_ = backend.clusters[cluster_id].steps
            if steps_:
                steps_[-1].state = "COMPLETED"
                return
            time.sleep(0.05)

    player = threading.Thread(target=play)
    player.start()
    result = steps.run_job(params, inputs, "build_manifest", ["--text", params.text, "--images", params.images])
    player.join()
    assert result.returncode == 0
    step = emr.list_steps(ClusterId=cluster_id)["Steps"][0]
    args = step["Config"]["Args"]
    arn = args[args.index("--criteria") + 1]
    assert arn.startswith("arn:aws:secretsmanager:") and SECRET not in json.dumps(step, default=str)
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    assert not sm.list_secrets()["SecretList"]  # deleted after the step


# ---------------------------------------------------------------------------------------------- status


def _write(table: pa.Table, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path)


def test_status_counts_newest_outcomes_bytes_eta_and_expiring_restores(tmp_path) -> None:  # noqa: ANN001
    work = tmp_path / "work"
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    # Manifest: four instances of 100 + 900 bytes (newest index only).
    uids = ["1.1", "1.2", "1.3", "1.4"]
    rows = []
    for u in uids:
        rows += [{"archive_uri": "t.tar", "index_run": "r1", "kind": "header", "sop_instance_uid": u, "size": 100},
                 {"archive_uri": "i.tar", "index_run": "r1", "kind": "pixels", "sop_instance_uid": u, "size": 900}]
    rows += [{"archive_uri": a, "index_run": "r1", "kind": "archive", "sop_instance_uid": None, "size": None}
             for a in ("t.tar", "i.tar")]
    _write(pa.Table.from_pylist(rows), str(work / "manifest" / "part-0.parquet"))
    # Ledger: run A wrote 1.1 and failed 1.2; run B skipped 1.1, wrote 1.2 (plus a duplicate copy's row); 1.3 is
    # not restored; 1.4 has no row yet.
    ledger = [("A", "1.1", "written", 1100), ("A", "1.2", "failed", None), ("B", "1.1", "skipped_existing", 1100),
              ("B", "1.2", "written", 1050), ("B", "1.2", "duplicate", None), ("B", "1.3", "not_restored", None)]
    for run in ("A", "B"):
        part = [{"sop_instance_uid": u, "status": s, "output_bytes": b} for r, u, s, b in ledger if r == run]
        _write(pa.Table.from_pylist(part), str(work / "ledger" / f"run_id={run}" / "part-0.parquet"))
    runs = [{"run_id": "A", "job": "reassemble", "started_at": t0, "finished_at": t0 + timedelta(seconds=10)},
            {"run_id": "B", "job": "reassemble", "started_at": t0, "finished_at": t0 + timedelta(seconds=10)}]
    _write(pa.Table.from_pylist(runs), str(work / "runs" / "part-0.parquet"))
    now = datetime.now(timezone.utc)
    restore_ledger.write_restore_ledger([
        {"run_id": "x", "uri": "s3://p/a.tar", "role": "text", "wave": 1, "size": 5, "tier": "Bulk", "days": 1,
         "requested_at": now - timedelta(hours=12), "outcome": "requested"},
        {"run_id": "x", "uri": "s3://p/b.tar", "role": "images", "wave": 2, "size": 5, "tier": "Bulk", "days": 7,
         "requested_at": now - timedelta(hours=1), "outcome": "requested"}], str(work / "restore_ledger"), "x", 0)

    s = status.campaign_status(str(work), now=now)
    assert s["states"] == {"not_restored": 1, "pending": 1, "skipped_existing": 1, "written": 1}
    assert (s["done"], s["left"], s["settled"]) == (2, 2, 0)
    assert (s["bytes_done"], s["bytes_left"]) == (2000, 2000)
    assert s["throughput"]["bytes_per_second"] == pytest.approx(2000 / 20)  # 1000 bytes in each 10 s run
    assert s["eta_seconds"] == pytest.approx(20.0)
    assert s["restores"]["waiting"] == 2 and s["restores"]["expiring_soon"] == 1
    assert s["restores"]["expiring_examples"][0]["uri"] == "s3://p/a.tar"

    cli = os.path.join(os.path.dirname(sys.executable), "dicom-reassembly")
    r = subprocess.run([cli, "campaign", "status", "--work", str(work), "--json"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["states"] == s["states"]
    r = subprocess.run([cli, "campaign", "status", "--work", str(work)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "instances done:  50%" in r.stdout and "not_restored" in r.stdout, r.stdout


def test_status_of_a_campaign_that_only_requested_restores(tmp_path) -> None:  # noqa: ANN001
    now = datetime.now(timezone.utc)
    restore_ledger.write_restore_ledger([{"run_id": "x", "uri": "s3://p/a.tar", "role": "text", "wave": 1, "size": 5,
                                   "tier": "Bulk", "days": 7, "requested_at": now, "outcome": "requested"}],
                                 str(tmp_path / "restore_ledger"), "x", 0)
    s = status.campaign_status(str(tmp_path))
    assert s["instances"] == 0 and s["eta_seconds"] == 0.0 and s["restores"]["waiting"] == 1


def test_status_of_a_folder_without_a_campaign_is_one_line_exit_2(tmp_path) -> None:  # noqa: ANN001
    cli = os.path.join(os.path.dirname(sys.executable), "dicom-reassembly")
    r = subprocess.run([cli, "campaign", "status", "--work", str(tmp_path / "typo")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: campaign_not_found") and len(r.stderr.splitlines()) == 1


def test_prefect_retries_faults_not_bad_input_or_a_reached_bound() -> None:
    from prefect.states import Failed

    from dicom_reassembly.campaign.flow import _retryable
    from dicom_reassembly.campaign.jobs import JobError

    def retried(exc: Exception) -> bool:
        return _retryable(None, None, Failed(data=exc))  # the state Prefect's task engine hands the condition

    assert retried(JobError("job_failed", "reassemble exited 1: error: s3_unreachable"))
    assert retried(OSError("connection reset"))
    assert not retried(JobError("job_failed", "reassemble exited 2: error: bad_config", retryable=False))
    assert not retried(steps.CampaignError("restore_wait_timeout", "wave 1"))
    assert not retried(ConfigError("tranche_not_supported"))
    assert not retried(CriteriaError("bad_credentials"))
