"""EMR submission: pure builders checked against botocore's model (Stubber), the
waiter on success and failure, the CLI's dry-run and errors, the bootstrap, and
end-to-end submissions to moto's EMR / EMR Serverless / S3 server."""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from dicom_reassembly import errors
from dicom_reassembly.emr import config as emr_config
from dicom_reassembly.emr import layout as emr_layout
from dicom_reassembly.emr import plan as emr_plan
from dicom_reassembly.emr import requests
from dicom_reassembly.emr import submit as emr_submit
from dicom_reassembly.errors import ConfigError, CriteriaError, StorageError
from dicom_reassembly.reassembly import tasks

ROOT = Path(__file__).resolve().parents[1]
SUBMIT = ROOT / "emr" / "submit.py"
BOOTSTRAP = ROOT / "emr" / "bootstrap.sh"
CONF = ROOT / "conf" / "emr.json"
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRETKEY"
ACCOUNT = "123456789012"  # moto's default account
ROLE = f"arn:aws:iam::{ACCOUNT}:role/emr-serverless-job"
RUN_ARN = f"arn:aws:emr-serverless:us-east-1:{ACCOUNT}:/applications/app-1/jobruns/jr-1"
WORK = "s3://work-bucket/runs/r1"
TEXT, IMAGES, OUT = "s3://in-bucket/text/", "s3://in-bucket/images/", "s3://out-bucket/dicom out/"


# --------------------------------------------------------------------------- fixtures


def _conf_dict() -> dict[str, Any]:
    return json.loads(CONF.read_text())


@pytest.fixture()
def config() -> emr_config.EmrConfig:
    return emr_config.read_emr_config(str(CONF))


@pytest.fixture()
def layout() -> emr_layout.WorkLayout:
    return emr_layout.work_layout(WORK)


def _client(service: str) -> Any:
    return boto3.client(service, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s")


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A fake `make dist` output, and a config pointing at it (fast polling)."""
    dist = tmp_path / "dist"
    (dist / "wheelhouse").mkdir(parents=True)
    (dist / "dicom_reassembly-0.1.0-py3-none-any.whl").write_bytes(b"project wheel")
    (dist / "dicom_reassembly.zip").write_bytes(b"py-files zip")
    (dist / "wheelhouse" / "numpy-2.0.0-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"n" * 1000)
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "build_manifest.py").write_text("# manifest job\n")
    (jobs / "reassemble.py").write_text("# reassemble job\n")
    data = _conf_dict()
    data["artifacts"] = {"dist_dir": str(dist), "jobs_dir": str(jobs), "bootstrap": str(BOOTSTRAP),
                         "wheelhouse_dir": str(dist / "wheelhouse"), "py_files": "dicom_reassembly.zip"}
    data["wait"] = {"poll_seconds": 0.2, "timeout_hours": 0.05}
    data["serverless"]["execution_role_arn"] = ROLE
    (tmp_path / "emr.json").write_text(json.dumps(data))
    crit = {"criteria": [{"dicom_tag": "Modality", "operation": "EQUALS", "reference": "CT"}],
            "input_s3_parameters": {"bucket": "in-bucket", "region": "eu-west-3", "credentials": f"AKIATEST:{SECRET}"}}
    (tmp_path / "criteria.json").write_text(json.dumps(crit))
    return tmp_path


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SUBMIT), *args], capture_output=True, text=True,
                          env=env or dict(os.environ), timeout=timeout, cwd=str(ROOT))


def _args(step: dict[str, Any]) -> list[str]:
    return step["HadoopJarStep"]["Args"]


def _conf_pairs(args: list[str]) -> dict[str, str]:
    return dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--conf")


# --------------------------------------------------------------------------- pure builders


def test_spark_step_is_command_runner_with_an_argument_list() -> None:
    step = requests.build_spark_step("n", "s3://c/job.py", ["--out", "s3://b/with space/", "--x", "a=b"],
                                {"spark.executor.cores": 4, "spark.speculation": False}, ["s3://c/lib.zip"])
    assert step["HadoopJarStep"]["Jar"] == "command-runner.jar"
    assert _args(step) == ["spark-submit", "--deploy-mode", "cluster", "--py-files", "s3://c/lib.zip",
                           "--conf", "spark.executor.cores=4", "--conf", "spark.speculation=false",
                           "s3://c/job.py", "--out", "s3://b/with space/", "--x", "a=b"]


def test_spark_step_refuses_a_string_to_split() -> None:
    with pytest.raises(ConfigError) as exc:
        requests.build_spark_step("n", "s3://c/job.py", "--out s3://b/o", {}, [])  # type: ignore[arg-type]
    assert exc.value.reason == "bad_step_args"


@pytest.mark.parametrize("key", ["spark.hadoop.fs.s3a.secret.key", "spark.hadoop.fs.s3a.access.key",
                                 "spark.executorEnv.AWS_SESSION_TOKEN"])
def test_secrets_never_go_into_spark_conf(key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        requests.build_spark_step("n", "s3://c/job.py", [], {key: "AKIAVALUE"}, [])
    assert exc.value.reason == "secret_in_spark_conf"
    assert "AKIAVALUE" not in str(exc.value)


def test_pipeline_steps_chain_manifest_into_reassemble(config: emr_config.EmrConfig, layout: emr_layout.WorkLayout) -> None:
    job_args = requests.build_job_args(layout, text=TEXT, images=IMAGES, out=OUT, criteria_uri=layout.criteria)
    conf = requests.build_spark_conf(config, target="cluster", region="eu-west-1")
    conf2 = requests.build_spark_conf(config, target="cluster", region="eu-west-1", shuffle_partitions=4242)
    steps = requests.build_pipeline_steps(layout, job_args, conf, reassemble_conf=conf2, py_files=["s3://c/z.zip"])
    manifest, reassemble = (_args(s) for s in steps)
    assert [s["Name"] for s in steps] == ["dicom-reassembly: build_manifest", "dicom-reassembly: reassemble"]
    assert manifest[manifest.index(f"{WORK}/code/build_manifest.py"):] == [
        f"{WORK}/code/build_manifest.py", "--text", TEXT, "--images", IMAGES, "--manifest", f"{WORK}/manifest"]
    assert reassemble[reassemble.index(f"{WORK}/code/reassemble.py"):] == [
        f"{WORK}/code/reassemble.py", "--manifest", f"{WORK}/manifest", "--out", OUT, "--ledger", f"{WORK}/ledger",
        "--runs", f"{WORK}/runs", "--criteria", f"{WORK}/code/criteria.json"]
    assert _conf_pairs(reassemble)["spark.sql.shuffle.partitions"] == "4242"
    assert "spark.sql.shuffle.partitions" not in _conf_pairs(manifest)
    pairs = _conf_pairs(manifest)
    assert pairs["spark.pyspark.python"] == "/usr/bin/python3.11"
    assert pairs["spark.dynamicAllocation.enabled"] == "true"
    assert pairs["spark.hadoop.fs.s3.maxRetries"] == "30"
    assert pairs["spark.executorEnv.AWS_DEFAULT_REGION"] == "eu-west-1"
    assert all(s["ActionOnFailure"] == "CANCEL_AND_WAIT" for s in steps)


def test_job_args_refuse_local_paths(layout: emr_layout.WorkLayout) -> None:
    with pytest.raises(ConfigError):
        requests.build_job_args(layout, text="/data/text", images=IMAGES, out=OUT)
    with pytest.raises(ConfigError):
        emr_layout.work_layout("/tmp/work")


def test_cluster_request_follows_the_config(layout: emr_layout.WorkLayout) -> None:
    data = _conf_dict()
    data["cluster"]["release_label"] = "emr-7.1.0"
    data["cluster"]["ec2_subnet_ids"] = ["subnet-1", "subnet-2"]
    config = emr_config.emr_config_from_dict(data)
    steps = requests.build_pipeline_steps(layout, requests.build_job_args(layout, text=TEXT, images=IMAGES, out=OUT), {})
    request = requests.build_cluster_request(config, layout, steps)
    client = _client("emr")
    with Stubber(client) as stub:  # botocore validates the request against the EMR model before the stub answers
        stub.add_response("run_job_flow", {"JobFlowId": "j-NEW"}, request)
        assert emr_submit.submit_cluster(client, request) == "j-NEW"
        stub.assert_no_pending_responses()
    assert request["ReleaseLabel"] == "emr-7.1.0"
    fleets = {f["InstanceFleetType"]: f for f in request["Instances"]["InstanceFleets"]}
    assert fleets["MASTER"]["TargetSpotCapacity"] == 0 and fleets["MASTER"]["TargetOnDemandCapacity"] == 1
    assert fleets["CORE"]["TargetSpotCapacity"] == 0 and fleets["CORE"]["TargetOnDemandCapacity"] >= 1
    assert fleets["TASK"]["TargetSpotCapacity"] > 0 and fleets["TASK"]["TargetOnDemandCapacity"] == 0
    assert "SpotSpecification" in fleets["TASK"]["LaunchSpecifications"]
    assert request["Instances"]["Ec2SubnetIds"] == ["subnet-1", "subnet-2"]
    assert request["AutoTerminationPolicy"] == {"IdleTimeout": 1800}
    assert request["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True
    assert request["LogUri"] == f"{WORK}/logs/emr/"
    assert request["BootstrapActions"][0]["ScriptBootstrapAction"] == {
        "Path": f"{WORK}/code/bootstrap.sh", "Args": [f"{WORK}/code/wheelhouse/", "/usr/bin/python3.11"]}
    assert request["Applications"] == [{"Name": "Spark"}]
    spark_env = next(c for c in request["Configurations"] if c["Classification"] == "spark-env")
    assert spark_env["Configurations"][0]["Properties"]["PYSPARK_PYTHON"] == "/usr/bin/python3.11"
    assert request["Steps"] == steps


def test_cluster_without_idle_timeout_ends_with_its_last_step(layout: emr_layout.WorkLayout) -> None:
    data = _conf_dict()
    data["cluster"]["idle_timeout_seconds"] = None
    request = requests.build_cluster_request(emr_config.emr_config_from_dict(data), layout, [])
    assert request["Instances"]["KeepJobFlowAliveWhenNoSteps"] is False
    assert "AutoTerminationPolicy" not in request


def test_core_nodes_on_spot_are_refused(layout: emr_layout.WorkLayout) -> None:
    data = _conf_dict()
    data["cluster"]["fleets"]["core"]["spot"] = 3
    with pytest.raises(ConfigError, match="core must be on-demand"):
        requests.build_cluster_request(emr_config.emr_config_from_dict(data), layout, [])


def test_missing_release_label_is_a_config_error(layout: emr_layout.WorkLayout) -> None:
    data = _conf_dict()
    del data["cluster"]["release_label"]
    with pytest.raises(ConfigError, match="release_label"):
        requests.build_cluster_request(emr_config.emr_config_from_dict(data), layout, [])


def test_release_label_is_not_written_in_the_logic() -> None:
    for path in (*sorted((ROOT / "lib" / "dicom_reassembly" / "emr").glob("*.py")), SUBMIT):
        assert not re.search(r"emr-\d", path.read_text()), path


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown keys"):
        emr_config.emr_config_from_dict({"sparks": {}})
    with pytest.raises(ConfigError, match="minimum"):
        emr_config.emr_config_from_dict({"partitions": {"minimum": 10, "maximum": 5}})


def test_security_kms_key_id_is_read_and_checked() -> None:
    assert emr_config.emr_config_from_dict({}).kms_key_id is None
    assert emr_config.emr_config_from_dict({"security": {"kms_key_id": None}}).kms_key_id is None
    assert emr_config.emr_config_from_dict({"security": {"kms_key_id": "alias/dicom"}}).kms_key_id == "alias/dicom"
    for bad in ({"kms_key_id": ""}, {"kms_key_id": 7}, {"kms_key": "alias/typo"}):
        with pytest.raises(ConfigError) as err:
            emr_config.emr_config_from_dict({"security": bad})
        assert err.value.reason == "bad_config" and "security" in str(err.value)
    with pytest.raises(ConfigError):
        emr_config.emr_config_from_dict({"security": "alias/dicom"})


def test_unreadable_config_files_are_one_line_config_errors(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"region": "caf\xe9"}')
    cases = {str(tmp_path): "cannot be read", str(latin1): "not UTF-8"}
    for path, needle in cases.items():
        with pytest.raises(ConfigError) as err:
            emr_config.read_emr_config(path)
        assert err.value.reason == "bad_config" and needle in str(err.value) and "\n" not in str(err.value)
        r = run_cli("--cluster-id", "j-1", "--text", TEXT, "--images", IMAGES, "--out", OUT, "--work", WORK,
                    "--config", path, "--dry-run")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr


def test_criteria_upload_is_encrypted_with_sse_s3_or_the_configured_kms_key(layout: emr_layout.WorkLayout) -> None:
    artifacts = emr_layout.Artifacts("w.whl", "z.zip", {j: f"{j}.py" for j in emr_layout.JOB_NAMES}, "b.sh", ())
    for kms, expected in ((None, {"ServerSideEncryption": "AES256"}),
                          ("alias/dicom", {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/dicom"})):
        uploads = emr_layout.build_uploads(layout, artifacts, with_cluster_bootstrap=True, criteria_path="c.json",
                                    job_config_path="job.json", kms_key_id=kms)
        assert [dict(u.extra_args) for u in uploads if u.kind == "criteria"] == [expected]
        assert all(not u.extra_args for u in uploads if u.kind != "criteria")


# --------------------------------------------------------------------------- shuffle partitions


def test_shuffle_partitions_follow_manifest_size() -> None:
    policy = tasks.PartitionPolicy(bytes_per_partition=128 * emr_config.MIB, rows_per_partition=100_000, minimum=1,
                                 maximum=100_000, default=2000)
    assert tasks.shuffle_partitions_for(policy=policy) == 2000
    assert tasks.shuffle_partitions_for(10 * 1024 * emr_config.MIB, policy=policy) == 80
    assert tasks.shuffle_partitions_for(10 * 1024 * emr_config.MIB + 1, policy=policy) == 81
    assert tasks.shuffle_partitions_for(manifest_rows=1_000_000_000, policy=policy) == 10_000
    # both measures: the larger estimate wins
    assert tasks.shuffle_partitions_for(10 * 1024 * emr_config.MIB, 1_000_000_000, policy=policy) == 10_000
    sizes = [0, 1, 10**6, 10**9, 10**12, 10**15]
    values = [tasks.shuffle_partitions_for(s, policy=policy) for s in sizes]
    assert values == sorted(values)


def test_shuffle_partitions_are_clamped() -> None:
    policy = tasks.PartitionPolicy(minimum=200, maximum=50_000)
    assert tasks.shuffle_partitions_for(1024, policy=policy) == 200
    assert tasks.shuffle_partitions_for(5 * 10**15, policy=policy) == 50_000  # 5 PB of manifest
    with pytest.raises(ConfigError):
        tasks.shuffle_partitions_for(-1, policy=policy)


# --------------------------------------------------------------------------- submit and wait (Stubber)


def test_submit_steps_success(config: emr_config.EmrConfig, layout: emr_layout.WorkLayout) -> None:
    steps = requests.build_pipeline_steps(layout, requests.build_job_args(layout, text=TEXT, images=IMAGES, out=OUT),
                                     requests.build_spark_conf(config, target="cluster"))
    client = _client("emr")
    with Stubber(client) as stub:
        stub.add_response("add_job_flow_steps", {"StepIds": ["s-1", "s-2"]}, {"JobFlowId": "j-1", "Steps": steps})
        assert emr_submit.submit_steps(client, "j-1", steps) == ["s-1", "s-2"]
        stub.assert_no_pending_responses()


def test_submit_steps_client_error_is_logged_and_typed(caplog: pytest.LogCaptureFixture) -> None:
    client = _client("emr")
    step = requests.build_spark_step("n", "s3://c/j.py", [], {})
    with Stubber(client) as stub:
        stub.add_client_error("add_job_flow_steps", "ValidationException", "Cluster j-GONE is terminated")
        with pytest.raises(errors.EmrError) as exc:
            emr_submit.submit_steps(client, "j-GONE", [step])
    assert exc.value.reason == "aws_error"
    assert "ValidationException" in str(exc.value) and "j-GONE" in str(exc.value)
    assert any("j-GONE" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


def _step(state: str, name: str = "dicom-reassembly: build_manifest", **status: Any) -> dict[str, Any]:
    return {"Step": {"Id": "s-1", "Name": name, "Status": {"State": state, **status}}}


def test_wait_for_steps_reports_progress_until_completed() -> None:
    client = _client("emr")
    seen: list[tuple[str, str, int]] = []
    with Stubber(client) as stub:
        for state in ("PENDING", "RUNNING", "RUNNING", "COMPLETED"):
            stub.add_response("describe_step", _step(state), {"ClusterId": "j-1", "StepId": "s-1"})
        stub.add_response("describe_step", _step("COMPLETED", "dicom-reassembly: reassemble"),
                          {"ClusterId": "j-1", "StepId": "s-2"})
        emr_submit.wait_for_steps(client, "j-1", ["s-1", "s-2"], lambda p: seen.append((p.name, p.state, p.index)),
                           names=["manifest", "reassemble"], poll_seconds=0)
        stub.assert_no_pending_responses()
    assert seen == [("dicom-reassembly: build_manifest", "RUNNING", 0),
                    ("dicom-reassembly: build_manifest", "COMPLETED", 0), ("reassemble", "COMPLETED", 1)]


def test_wait_for_steps_stops_on_failure_with_the_reason() -> None:
    client = _client("emr")
    details = {"Reason": "Unknown error.", "Message": "Exception in thread main: java.io.IOException",
               "LogFile": "s3://logs/j-1/steps/s-1/stderr.gz"}
    with Stubber(client) as stub:
        stub.add_response("describe_step", _step("RUNNING"), {"ClusterId": "j-1", "StepId": "s-1"})
        stub.add_response("describe_step", _step("FAILED", FailureDetails=details),
                          {"ClusterId": "j-1", "StepId": "s-1"})
        with pytest.raises(errors.EmrError) as exc:
            emr_submit.wait_for_steps(client, "j-1", ["s-1", "s-2"], poll_seconds=0)
        stub.assert_no_pending_responses()  # s-2 was never polled
    assert exc.value.reason == "step_failed"
    text = str(exc.value)
    assert "java.io.IOException" in text and "stderr.gz" in text and "build_manifest" in text


def test_wait_for_steps_stops_on_cancel() -> None:
    client = _client("emr")
    with Stubber(client) as stub:
        stub.add_response("describe_step", _step("CANCELLED", StateChangeReason={"Message": "cancelled by user"}),
                          {"ClusterId": "j-1", "StepId": "s-1"})
        with pytest.raises(errors.EmrError) as exc:
            emr_submit.wait_for_steps(client, "j-1", ["s-1"], poll_seconds=0)
    assert exc.value.reason == "step_cancelled" and "cancelled by user" in str(exc.value)


def test_wait_for_steps_client_error() -> None:
    client = _client("emr")
    with Stubber(client) as stub:
        stub.add_client_error("describe_step", "InvalidRequestException", "Step s-9 not found")
        with pytest.raises(errors.EmrError) as exc:
            emr_submit.wait_for_steps(client, "j-1", ["s-9"], poll_seconds=0)
    assert exc.value.reason == "aws_error" and "InvalidRequestException" in str(exc.value)


def test_wait_for_steps_times_out_instead_of_spinning() -> None:
    client = _client("emr")
    ticks = iter(range(0, 10_000, 100))
    with Stubber(client) as stub:
        for _ in range(8):
            stub.add_response("describe_step", _step("RUNNING"), {"ClusterId": "j-1", "StepId": "s-1"})
        with pytest.raises(errors.EmrError) as exc:
            emr_submit.wait_for_steps(client, "j-1", ["s-1"], poll_seconds=0, timeout_seconds=250,
                               clock=lambda: float(next(ticks)))
    assert exc.value.reason == "wait_timeout"


def test_serverless_request_and_failure(config: emr_config.EmrConfig, layout: emr_layout.WorkLayout) -> None:
    data = _conf_dict()
    data["serverless"]["execution_role_arn"] = ROLE
    config = emr_config.emr_config_from_dict(data)
    job_args = requests.build_job_args(layout, text=TEXT, images=IMAGES, out="s3://out-bucket/dcm/")
    conf = requests.build_spark_conf(config, target="serverless", region="us-east-1")
    runs = requests.build_serverless_runs(config, layout, "app-1", job_args, conf, None, ["s3://c/z.zip"], "tok")
    driver = runs[1]["jobDriver"]["sparkSubmit"]
    assert driver["entryPoint"] == f"{WORK}/code/reassemble.py"
    assert driver["entryPointArguments"] == job_args["reassemble"]
    params = driver["sparkSubmitParameters"].split(" ")
    assert params[:2] == ["--py-files", "s3://c/z.zip"]
    assert "spark.emr-serverless.driverEnv.PYSPARK_PYTHON=/usr/bin/python3.11" in params
    assert not any("shuffle.service" in p for p in params)  # YARN-only setting stays off serverless
    client = _client("emr-serverless")
    with Stubber(client) as stub:
        stub.add_response("start_job_run", {"applicationId": "app-1", "jobRunId": "jr-1", "arn": RUN_ARN}, runs[0])
        stub.add_response("get_job_run", {"jobRun": {
            "applicationId": "app-1", "jobRunId": "jr-1", "arn": RUN_ARN, "createdBy": ROLE, "createdAt": 0,
            "updatedAt": 0, "executionRole": ROLE, "state": "FAILED", "stateDetails": "Job failed: OOM on driver",
            "releaseLabel": "emr-7.5.0", "jobDriver": runs[0]["jobDriver"]}}, {"applicationId": "app-1", "jobRunId": "jr-1"})
        assert emr_submit.submit_serverless(client, runs[0]) == "jr-1"
        with pytest.raises(errors.EmrError) as exc:
            emr_submit.wait_for_job_run(client, "app-1", "jr-1", poll_seconds=0)
        stub.assert_no_pending_responses()
    assert exc.value.reason == "job_failed" and "OOM on driver" in str(exc.value)


def test_serverless_refuses_whitespace_in_parameters() -> None:
    with pytest.raises(ConfigError):
        requests.build_serverless_job_run("a", ROLE, "n", "s3://c/j.py", [], {"spark.x": "a b"}, client_token="t")


def test_criteria_errors_do_not_echo_content(tmp_path: Path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text('{"credentials": "' + SECRET + '" oops}')
    with pytest.raises(CriteriaError) as exc:
        emr_plan.check_criteria_file(str(bad))
    assert SECRET not in str(exc.value) and SECRET not in repr(exc.value.__cause__)
    # valid JSON, invalid criterion: refused at submission, not on the cluster
    bad.write_text(json.dumps({"criteria": [{"dicom_tag": "Modality", "operation": "LIKE", "reference": "CT"}],
                               "input_s3_parameters": {"bucket": "b", "region": "r", "credentials": f"K:{SECRET}"}}))
    with pytest.raises(CriteriaError) as exc:
        emr_plan.check_criteria_file(str(bad))
    assert SECRET not in str(exc.value)
    with pytest.raises(CriteriaError, match="missing_criteria"):
        emr_plan.check_criteria_file(str(tmp_path / "nope.json"))


# --------------------------------------------------------------------------- CLI


def test_cli_dry_run_prints_requests_without_secrets_or_aws_calls(project: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # nothing listens: any AWS call would fail the run
    r = run_cli("--cluster-id", "j-EXISTING", "--text", TEXT, "--images", IMAGES, "--out", OUT, "--work", WORK,
                "--criteria", str(project / "criteria.json"), "--config", str(project / "emr.json"), "--dry-run",
                env=env)
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout + r.stderr
    plan = json.loads(r.stdout)
    request = plan["requests"]["add_job_flow_steps"]
    assert request["JobFlowId"] == "j-EXISTING"
    args = _args(request["Steps"][1])
    assert isinstance(args, list) and args[:3] == ["spark-submit", "--deploy-mode", "cluster"]
    assert args[args.index("--out") + 1] == OUT  # the space survives: no splitting anywhere
    assert args[args.index("--criteria") + 1] == f"{WORK}/code/criteria.json"
    crit = [u for u in plan["uploads"] if u["kind"] == "criteria"]
    assert crit == [{"kind": "criteria", "uri": f"{WORK}/code/criteria.json",
                     "extra_args": {"ServerSideEncryption": "AES256"}}]
    assert "criteria.json" not in json.dumps([u.get("source", "") for u in plan["uploads"]])


def test_cli_dry_run_serverless_and_new_cluster(project: Path) -> None:
    base = ["--text", TEXT, "--images", IMAGES, "--out", OUT, "--work", WORK, "--config", str(project / "emr.json"),
            "--dry-run"]
    r = run_cli("--serverless-app-id", "00abc", *base)
    assert r.returncode == 0, r.stderr
    runs = json.loads(r.stdout)["requests"]["start_job_run"]
    assert [x["jobDriver"]["sparkSubmit"]["entryPoint"] for x in runs] == [
        f"{WORK}/code/build_manifest.py", f"{WORK}/code/reassemble.py"]
    assert runs[0]["executionRoleArn"] == ROLE
    r = run_cli("--create-cluster", *base)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["requests"]["run_job_flow"]["ReleaseLabel"] == _conf_dict()["cluster"]["release_label"]


@pytest.mark.parametrize("argv, needle", [
    (["--text", TEXT, "--images", IMAGES, "--out", OUT, "--cluster-id", "j-1"], "--work"),
    (["--text", TEXT, "--images", IMAGES, "--out", OUT, "--work", "/tmp/w", "--cluster-id", "j-1"], "s3://"),
    (["--text", TEXT, "--images", IMAGES, "--out", OUT, "--work", WORK, "--cluster-id", "j-1", "--create-cluster"],
     "not allowed"),
    (["--text", "/local", "--images", IMAGES, "--out", OUT, "--work", WORK, "--cluster-id", "j-1"], "--text"),
    (["--text", TEXT, "--images", IMAGES, "--out", OUT, "--work", WORK, "--cluster-id", "j-1",
      "--config", "/nonexistent/emr.json"], "no such file"),
])
def test_cli_bad_arguments_give_one_line(argv: list[str], needle: str) -> None:
    r = run_cli(*argv, "--dry-run")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_cli_bad_criteria_is_one_line_without_content(project: Path) -> None:
    bad = project / "bad.json"
    bad.write_text('{"secret": "' + SECRET + '",,}')
    r = run_cli("--cluster-id", "j-1", "--text", TEXT, "--images", IMAGES, "--out", OUT, "--work", WORK,
                "--criteria", str(bad), "--config", str(project / "emr.json"), "--dry-run")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "criteria" in r.stderr and SECRET not in r.stderr + r.stdout


# --------------------------------------------------------------------------- end to end on moto


@pytest.fixture()
def aws(moto_server: str) -> dict[str, Any]:
    s3 = boto3.client("s3", region_name="us-east-1")
    for bucket in ("work-bucket",):
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=bucket)
    return {"s3": s3, "emr": boto3.client("emr", region_name="us-east-1"),
            "serverless": boto3.client("emr-serverless", region_name="us-east-1")}


def _expected_tails(criteria: bool = True, work: str = WORK) -> tuple[list[str], list[str]]:
    manifest = [f"{work}/code/build_manifest.py", "--text", TEXT, "--images", IMAGES, "--manifest", f"{work}/manifest"]
    reassemble = [f"{work}/code/reassemble.py", "--manifest", f"{work}/manifest", "--out", OUT,
                  "--ledger", f"{work}/ledger", "--runs", f"{work}/runs"]
    if criteria:
        reassemble += ["--criteria", f"{work}/code/criteria.json"]
    return manifest, reassemble


def _steps_in_order(client: Any, cluster_id: str) -> list[dict[str, Any]]:
    steps = client.list_steps(ClusterId=cluster_id)["Steps"]
    return sorted(steps, key=lambda s: s["Name"] != "dicom-reassembly: build_manifest")


def _body(s3: Any, uri: str) -> bytes:
    bucket, key = uri[5:].split("/", 1)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def test_e2e_create_cluster_on_moto(project: Path, aws: dict[str, Any]) -> None:
    r = run_cli("--create-cluster", "--text", TEXT, "--images", IMAGES, "--out", OUT, "--work", WORK,
                "--criteria", str(project / "criteria.json"), "--config", str(project / "emr.json"),
                "--region", "us-east-1")
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout + r.stderr
    result = json.loads(r.stdout)
    cluster = aws["emr"].describe_cluster(ClusterId=result["cluster_id"])["Cluster"]
    assert cluster["ReleaseLabel"] == _conf_dict()["cluster"]["release_label"]
    assert [a["Name"] for a in cluster["Applications"]] == ["Spark"]
    actions = aws["emr"].list_bootstrap_actions(ClusterId=result["cluster_id"])["BootstrapActions"]
    assert actions[0]["ScriptPath"] == f"{WORK}/code/bootstrap.sh"
    assert actions[0]["Args"] == [f"{WORK}/code/wheelhouse/", "/usr/bin/python3.11"]
    steps = _steps_in_order(aws["emr"], result["cluster_id"])
    assert [s["Id"] for s in steps] == result["step_ids"]
    manifest_tail, reassemble_tail = _expected_tails()
    for step, tail in zip(steps, (manifest_tail, reassemble_tail), strict=True):
        args = step["Config"]["Args"]
        assert step["Config"]["Jar"] == "command-runner.jar"
        assert args[:3] == ["spark-submit", "--deploy-mode", "cluster"]
        assert args[args.index("--py-files") + 1] == f"{WORK}/code/dicom_reassembly.zip"
        assert args[-len(tail):] == tail
        assert _conf_pairs(args)["spark.executorEnv.AWS_DEFAULT_REGION"] == "us-east-1"
    # the code the steps point at is really there
    s3 = aws["s3"]
    assert _body(s3, f"{WORK}/code/bootstrap.sh") == BOOTSTRAP.read_bytes()
    assert _body(s3, f"{WORK}/code/reassemble.py") == b"# reassemble job\n"
    assert _body(s3, f"{WORK}/code/dicom_reassembly.zip") == b"py-files zip"
    assert _body(s3, f"{WORK}/code/wheelhouse/dicom_reassembly-0.1.0-py3-none-any.whl") == b"project wheel"
    assert _body(s3, f"{WORK}/code/wheelhouse/numpy-2.0.0-cp311-cp311-manylinux_2_28_x86_64.whl") == b"n" * 1000
    assert SECRET.encode() in _body(s3, f"{WORK}/code/criteria.json")  # the job needs it; only the output hides it
    bucket, key = f"{WORK}/code/criteria.json"[5:].split("/", 1)
    assert s3.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"
    assert "ServerSideEncryption" not in s3.head_object(Bucket=bucket, Key=key.replace("criteria.json", "reassemble.py"))


def _moto_cluster(client: Any) -> str:
    return client.run_job_flow(
        Name="existing", ReleaseLabel="emr-7.5.0", ServiceRole="EMR_DefaultRole", JobFlowRole="EMR_EC2_DefaultRole",
        Instances={"MasterInstanceType": "m5.xlarge", "SlaveInstanceType": "m5.xlarge", "InstanceCount": 3,
                   "KeepJobFlowAliveWhenNoSteps": True})["JobFlowId"]


def test_e2e_existing_cluster_on_moto(project: Path, aws: dict[str, Any]) -> None:
    cluster_id = _moto_cluster(aws["emr"])
    work = "s3://work-bucket/runs/existing"
    r = run_cli("--cluster-id", cluster_id, "--text", TEXT, "--images", IMAGES, "--out", OUT, "--work", work,
                "--config", str(project / "emr.json"), "--region", "us-east-1")
    assert r.returncode == 0, r.stderr
    steps = _steps_in_order(aws["emr"], cluster_id)
    assert [s["Name"] for s in steps] == ["dicom-reassembly: build_manifest", "dicom-reassembly: reassemble"]
    manifest_tail, reassemble_tail = _expected_tails(criteria=False, work=work)
    assert steps[0]["Config"]["Args"][-len(manifest_tail):] == manifest_tail
    assert steps[1]["Config"]["Args"][-len(reassemble_tail):] == reassemble_tail
    assert steps[1]["ActionOnFailure"] == "CANCEL_AND_WAIT"
    # an existing cluster was bootstrapped when it started: only the code is sent, no bootstrap or wheelhouse
    listed = aws["s3"].list_objects_v2(Bucket="work-bucket", Prefix="runs/existing/")
    assert sorted(o["Key"] for o in listed["Contents"]) == [
        "runs/existing/code/build_manifest.py", "runs/existing/code/dicom_reassembly.zip",
        "runs/existing/code/reassemble.py"]


def _drive_moto_steps(cluster_id: str, states: list[tuple[str, str | None]]) -> threading.Thread:
    """Play the cluster: once both steps exist, move them to the given end states (moto never runs them)."""
    from moto.emr.models import emr_backends

    def play() -> None:
        backend = emr_backends[ACCOUNT]["us-east-1"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(backend.clusters[cluster_id].steps) < 2:
            time.sleep(0.05)
        time.sleep(0.3)
        for step, (state, reason) in zip(backend.clusters[cluster_id].steps, states, strict=True):
            step.state = state
            if reason:
                step.last_state_change_reason = reason
            time.sleep(0.2)

    t = threading.Thread(target=play, daemon=True)
    t.start()
    return t


def test_e2e_wait_succeeds_on_moto(project: Path, aws: dict[str, Any]) -> None:
    cluster_id = _moto_cluster(aws["emr"])
    player = _drive_moto_steps(cluster_id, [("COMPLETED", None), ("COMPLETED", None)])
    r = run_cli("--cluster-id", cluster_id, "--text", TEXT, "--images", IMAGES, "--out", OUT, "--work", WORK,
                "--config", str(project / "emr.json"), "--region", "us-east-1", "--wait")
    player.join()
    assert r.returncode == 0, r.stderr
    assert "reassemble: COMPLETED" in r.stderr


def test_e2e_wait_fails_with_reason_on_moto(project: Path, aws: dict[str, Any]) -> None:
    cluster_id = _moto_cluster(aws["emr"])
    player = _drive_moto_steps(cluster_id, [("FAILED", "Container exited with code 137"), ("CANCELLED", None)])
    r = run_cli("--cluster-id", cluster_id, "--text", TEXT, "--images", IMAGES, "--out", OUT, "--work", WORK,
                "--config", str(project / "emr.json"), "--region", "us-east-1", "--wait")
    player.join()
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert "step_failed" in last and "build_manifest" in last and "code 137" in last
    assert "Traceback" not in r.stderr


def test_e2e_serverless_on_moto(project: Path, aws: dict[str, Any]) -> None:
    app = aws["serverless"].create_application(name="dicom", releaseLabel="emr-7.5.0", type="SPARK")
    r = run_cli("--serverless-app-id", app["applicationId"], "--text", TEXT, "--images", IMAGES, "--out", OUT,
                "--work", WORK, "--config", str(project / "emr.json"), "--region", "us-east-1", "--wait")
    assert r.returncode == 0, r.stderr
    ids = json.loads(r.stdout)["job_run_ids"]
    assert len(ids) == 2
    runs = [aws["serverless"].get_job_run(applicationId=app["applicationId"], jobRunId=i)["jobRun"] for i in ids]
    manifest_tail, reassemble_tail = _expected_tails(criteria=False)
    for run, tail in zip(runs, (manifest_tail, reassemble_tail), strict=True):
        driver = run["jobDriver"]["sparkSubmit"]
        assert [driver["entryPoint"], *driver["entryPointArguments"]] == tail
        assert run["executionRole"] == ROLE


def test_cli_aws_error_is_one_line(project: Path, aws: dict[str, Any]) -> None:
    r = run_cli("--cluster-id", "j-1", "--text", TEXT, "--images", IMAGES, "--out", OUT,
                "--work", "s3://no-such-bucket-here/w", "--config", str(project / "emr.json"), "--region", "us-east-1")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-bucket-here" in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_write_uploads_skips_unchanged_dependencies(project: Path, aws: dict[str, Any]) -> None:
    dep = project / "dist" / "wheelhouse" / "numpy-2.0.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    uploads = [emr_layout.Upload(str(dep), "s3://work-bucket/up/wheelhouse/numpy.whl", "dependency"),
               emr_layout.Upload(str(project / "jobs" / "reassemble.py"), "s3://work-bucket/up/reassemble.py", "code")]
    assert emr_layout.write_uploads(aws["s3"], uploads) == 2
    assert emr_layout.write_uploads(aws["s3"], uploads) == 1  # code is always re-sent, the same wheel is not
    with pytest.raises(StorageError):
        emr_layout.write_uploads(aws["s3"], [emr_layout.Upload(str(dep), "s3://no-such-bucket-here/x.whl", "code")])


def test_criteria_uploaded_under_the_configured_kms_key(project: Path, aws: dict[str, Any]) -> None:
    key_id = boto3.client("kms", region_name="us-east-1").create_key(Description="criteria")["KeyMetadata"]["KeyId"]
    data = json.loads((project / "emr.json").read_text())
    data["security"] = {"kms_key_id": key_id}
    (project / "emr.json").write_text(json.dumps(data))
    cluster_id = _moto_cluster(aws["emr"])
    work = "s3://work-bucket/runs/kms"
    r = run_cli("--cluster-id", cluster_id, "--text", TEXT, "--images", IMAGES, "--out", OUT, "--work", work,
                "--criteria", str(project / "criteria.json"), "--config", str(project / "emr.json"),
                "--region", "us-east-1")
    assert r.returncode == 0, r.stderr
    head = aws["s3"].head_object(Bucket="work-bucket", Key="runs/kms/code/criteria.json")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"].endswith(key_id)


def _submit_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("emr_submit", SUBMIT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unexpected_failure_is_one_line_unless_debugging(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    submit = _submit_module()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire\nsecond line of detail")

    monkeypatch.setattr(emr_plan, "find_artifacts", broken)
    monkeypatch.delenv("DICOM_REASSEMBLY_LOG", raising=False)
    argv = ["--cluster-id", "j-1", "--text", TEXT, "--images", IMAGES, "--out", OUT, "--work", WORK,
            "--config", str(project / "emr.json"), "--dry-run"]
    assert submit.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("submit.py: error: RuntimeError: disk on fire") and "second line" not in err
    assert submit.main([*argv, "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "in broken" in err and err.strip().splitlines()[-1].startswith("submit.py: error")
    monkeypatch.setenv("DICOM_REASSEMBLY_LOG", "debug")
    assert submit.main(argv) == 1
    assert "Traceback" in capsys.readouterr().err


def test_read_manifest_bytes(aws: dict[str, Any]) -> None:
    assert tasks.read_manifest_bytes("s3://work-bucket/nothing/manifest") is None
    for i, size in enumerate((1000, 2345)):
        aws["s3"].put_object(Bucket="work-bucket", Key=f"m1/manifest/part-{i}.parquet", Body=b"x" * size)
    aws["s3"].put_object(Bucket="work-bucket", Key="m1/manifest/_SUCCESS", Body=b"")
    assert tasks.read_manifest_bytes("s3://work-bucket/m1/manifest") == 3345


# --------------------------------------------------------------------------- bootstrap


def _wheel(path: Path, name: str = "probe_pkg", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel, built by hand so the test needs no network."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": b"VALUE = 42\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for fname, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{fname},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    whl = path / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for fname, data in files.items():
            z.writestr(fname, data)
    return whl


@pytest.fixture()
def fake_node(tmp_path: Path) -> dict[str, Any]:
    """Stub `aws` (s3://fake/X copies from a local folder) and `sudo` (runs the command) first on PATH."""
    bin_dir, s3_root = tmp_path / "bin", tmp_path / "s3"
    bin_dir.mkdir()
    (s3_root / "wheelhouse").mkdir(parents=True)
    (bin_dir / "aws").write_text('#!/usr/bin/env bash\nset -euo pipefail\nsrc="${@: -2:1}"; dest="${@: -1}"\n'
                                 f'cp -r "{s3_root}/${{src#s3://fake/}}/." "$dest"\n')
    (bin_dir / "sudo").write_text('#!/usr/bin/env bash\nexec "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    target = tmp_path / "site"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PIP_TARGET=str(target), PYTHONPATH=str(target),
               BOOTSTRAP_PACKAGE="probe-pkg", BOOTSTRAP_IMPORTS="probe_pkg", BOOTSTRAP_PROFILE=str(tmp_path / "p.sh"),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    return {"env": env, "wheelhouse": s3_root / "wheelhouse", "target": target, "tmp": tmp_path}


def test_bootstrap_installs_offline_from_the_wheelhouse(fake_node: dict[str, Any]) -> None:
    _wheel(fake_node["wheelhouse"])
    r = subprocess.run(["bash", str(BOOTSTRAP), "s3://fake/wheelhouse/", sys.executable], env=fake_node["env"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (fake_node["target"] / "probe_pkg" / "__init__.py").read_text() == "VALUE = 42\n"
    assert (fake_node["tmp"] / "p.sh").read_text() == f"export PYSPARK_PYTHON={sys.executable}\n"


def test_bootstrap_fails_when_the_wheelhouse_lacks_the_package(fake_node: dict[str, Any]) -> None:
    _wheel(fake_node["wheelhouse"], name="other_pkg")
    r = subprocess.run(["bash", str(BOOTSTRAP), "s3://fake/wheelhouse/", sys.executable], env=fake_node["env"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert not (fake_node["tmp"] / "p.sh").exists()


def test_bootstrap_refuses_old_python_and_missing_argument(fake_node: dict[str, Any]) -> None:
    old = fake_node["tmp"] / "python3.9"
    old.write_text('#!/bin/sh\n[ "$1" = "-V" ] && { echo "Python 3.9.16"; exit 0; }\nexit 1\n')
    old.chmod(0o755)
    r = subprocess.run(["bash", str(BOOTSTRAP), "s3://fake/wheelhouse/", str(old)], env=fake_node["env"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "Python 3.9.16" in r.stderr and ">= 3.10" in r.stderr
    r = subprocess.run(["bash", str(BOOTSTRAP)], env=fake_node["env"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "usage" in r.stderr


def test_conf_copy_is_not_shared(config: emr_config.EmrConfig) -> None:
    """Builders must not mutate the config they read (the same config builds several requests)."""
    before = copy.deepcopy(dict(config.cluster))
    layout = emr_layout.work_layout(WORK)
    requests.build_cluster_request(config, layout, [requests.build_spark_step("n", "s3://c/j.py", [], {})])
    assert dict(config.cluster) == before
