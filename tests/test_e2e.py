"""spark-submit end to end: the jobs as users run them, on S3 through moto, and killed halfway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import JAVA_OPTIONS, ROOT, dcmftest_ok
from pydicom import dcmread
from pydicom.data import get_testdata_file

pytestmark = [pytest.mark.e2e, pytest.mark.spark]

SPARK_SUBMIT = os.path.join(os.path.dirname(sys.executable), "spark-submit")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    env.update(extra or {})
    return env


def submit(job: str, *args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run one job with spark-submit, as the README and EMR do."""
    cmd = [SPARK_SUBMIT, "--master", "local[2]", "--driver-java-options", JAVA_OPTIONS,
           "--conf", "spark.ui.enabled=false", os.path.join(ROOT, "jobs", job), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(env), timeout=timeout, cwd=ROOT)


def _upload_tree(s3, bucket: str, root: str, prefix: str) -> None:  # noqa: ANN001
    s3.create_bucket(Bucket=bucket)
    for sub in ("text", "images"):
        for name in sorted(os.listdir(os.path.join(root, sub))):
            s3.upload_file(os.path.join(root, sub, name), bucket, f"{prefix}/{sub}/{name}")


def test_s3_end_to_end_archives_in_one_bucket_outputs_in_another(s3, sample_delivery, tmp_path) -> None:  # noqa: ANN001
    root, expected = sample_delivery
    _upload_tree(s3, "partner-archives", root, "delivery")
    s3.create_bucket(Bucket="reassembled")
    manifest, ledger = str(tmp_path / "manifest"), str(tmp_path / "ledger")
    r = submit("build_manifest.py", "--text", "s3://partner-archives/delivery/text",
               "--images", "s3://partner-archives/delivery/images", "--manifest", manifest)
    assert r.returncode == 0, r.stderr[-3000:]
    r = submit("reassemble.py", "--manifest", manifest, "--out", "s3://reassembled/dcm", "--ledger", ledger,
               "--config", os.path.join(ROOT, "conf", "local.json"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "every manifest member is accounted for" in r.stdout
    keys = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="reassembled", Prefix="dcm/")
            for o in page.get("Contents", [])}
    assert {f"dcm/{uid}.dcm" for uid in expected["instances"]} <= keys
    for uid, inst in expected["instances"].items():
        local = tmp_path / f"{uid}.dcm"
        s3.download_file("reassembled", f"dcm/{uid}.dcm", str(local))
        assert dcmftest_ok(str(local)), inst["variant"]
        source = dcmread(get_testdata_file(inst["source"], download=False))
        np.testing.assert_array_equal(dcmread(local).pixel_array, source.pixel_array, err_msg=inst["variant"])
        head = s3.head_object(Bucket="reassembled", Key=f"dcm/{uid}.dcm")
        assert head["ContentType"] == "application/dicom"
        assert len(head["Metadata"]["sha256"]) == 64

    # The single-UID command from the manifest: two ranged reads, same bytes as the pipeline's object.
    uid = sorted(expected["instances"])[0]
    cli = os.path.join(os.path.dirname(sys.executable), "dicom-reassembly")
    r = subprocess.run([cli, "uid", uid, "--manifest", manifest, "--out", str(tmp_path / "one")],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "one" / f"{uid}.dcm", "rb") as f:
        assert f.read() == (tmp_path / f"{uid}.dcm").read_bytes()


def test_run_killed_halfway_then_restarted_finishes_with_nothing_written_twice(sample_delivery, tmp_path) -> None:  # noqa: ANN001
    root, expected = sample_delivery
    manifest, ledger, out = str(tmp_path / "manifest"), str(tmp_path / "ledger"), tmp_path / "dcm"
    r = submit("build_manifest.py", "--text", os.path.join(root, "text"), "--images", os.path.join(root, "images"),
               "--manifest", manifest)
    assert r.returncode == 0, r.stderr[-3000:]
    # Throttle writes (a product setting, for S3's per-prefix request limit) so the kill lands mid-run.
    cfg = tmp_path / "slow.json"
    cfg.write_text(json.dumps({"job": {"upload_threads": 1, "reassemble_partitions": 1, "put_rate": 4}}))
    cmd = [SPARK_SUBMIT, "--master", "local[1]", "--driver-java-options", JAVA_OPTIONS, "--conf", "spark.ui.enabled=false",
           os.path.join(ROOT, "jobs", "reassemble.py"), "--manifest", manifest, "--out", str(out), "--ledger", ledger,
           "--config", str(cfg)]
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    total = len(expected["instances"])
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = [f for f in os.listdir(out)] if out.exists() else []
        if len([f for f in done if f.endswith(".dcm")]) >= 3:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out) if f.endswith(".dcm")}
    assert 0 < len(first) < total, "the kill should land mid-run"

    r = submit("reassemble.py", "--manifest", manifest, "--out", str(out), "--ledger", ledger)
    assert r.returncode == 0, r.stderr[-3000:]
    counts = json.loads(r.stdout.strip().splitlines()[-1])["status_counts"]
    assert counts.get("skipped_existing", 0) >= len(first) - 1  # the object in flight at the kill may be rewritten
    assert counts.get("written", 0) + counts.get("skipped_existing", 0) == total
    for f, mtime in first.items():
        if os.stat(out / f).st_mtime_ns != mtime:
            pytest.fail(f"{f} was written twice")
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]
    for uid in expected["instances"]:
        assert dcmftest_ok(str(out / f"{uid}.dcm"))


def test_bad_criteria_exit_nonzero_with_one_line_and_write_nothing(sample_delivery, tmp_path) -> None:  # noqa: ANN001
    crit = tmp_path / "criteria.json"
    crit.write_text(json.dumps([{"dicom_tag": ["0008", "0020"], "operation": "BETWEEN", "reference": "2020-01-01"}]))
    r = submit("reassemble.py", "--manifest", str(tmp_path / "m"), "--out", str(tmp_path / "out"),
               "--ledger", str(tmp_path / "ledger"), "--criteria", str(crit), timeout=120)
    assert r.returncode != 0
    # spark-submit merges the Python driver's stderr into its stdout.
    output = r.stdout + r.stderr
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "BETWEEN" in errors[0] and "criteria[0]" in errors[0], output
    assert "Traceback" not in output
    assert not (tmp_path / "out").exists() and not (tmp_path / "ledger").exists()


def test_input_credentials_never_reach_logs_ledger_runs_or_event_log(s3, sample_delivery, tmp_path) -> None:  # noqa: ANN001
    root, expected = sample_delivery
    _upload_tree(s3, "secret-archives", root, "d")
    secret = "s3cr3t-Value-That-Must-Not-Leak-0123456789"
    crit = tmp_path / "params.json"
    crit.write_text(json.dumps({
        "input_s3_parameters": {"endpoint": os.environ["AWS_ENDPOINT_URL"], "bucket": "secret-archives",
                                "credentials": f"AKIAORCHESTRATOR:{secret}", "region": "us-east-1"},
        "criteria": [{"dicom_tag": ["0008", "0020"], "operation": "GREATER", "reference": "1900-01-01"}]}))
    manifest, ledger, events = tmp_path / "manifest", tmp_path / "ledger", tmp_path / "events"
    events.mkdir()
    r = submit("build_manifest.py", "--text", "s3://secret-archives/d/text", "--images", "s3://secret-archives/d/images",
               "--manifest", str(manifest))
    assert r.returncode == 0, r.stderr[-3000:]
    cmd = [SPARK_SUBMIT, "--master", "local[2]", "--driver-java-options", JAVA_OPTIONS,
           "--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir=file://{events}",
           os.path.join(ROOT, "jobs", "reassemble.py"), "--manifest", str(manifest), "--out", str(tmp_path / "dcm"),
           "--ledger", str(ledger), "--criteria", str(crit)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env({"DICOM_REASSEMBLY_LOG": "DEBUG"}), timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    counts = json.loads(r.stdout.strip().splitlines()[-1])["status_counts"]
    assert counts == {"written": len(expected["instances"])}
    assert secret not in r.stdout + r.stderr
    blobs = []
    for folder in (events, ledger, tmp_path / "ledger_runs", tmp_path / "ledger_computations"):
        for dirpath, _, files in os.walk(folder):
            blobs.extend(os.path.join(dirpath, f) for f in files)
    assert any("ledger_runs" in b for b in blobs) and any(b.startswith(str(events)) for b in blobs)
    for path in blobs:
        with open(path, "rb") as f:
            assert secret.encode() not in f.read(), path


def test_unreachable_output_bucket_exits_nonzero_before_any_work(s3, sample_delivery, tmp_path) -> None:  # noqa: ANN001
    root, _ = sample_delivery
    manifest = tmp_path / "manifest"
    manifest.mkdir()
    (manifest / "part-0.parquet").write_bytes(b"PAR1")  # presence is enough: the output check comes first
    r = submit("reassemble.py", "--manifest", str(manifest), "--out", "s3://no-such-bucket-here/x",
               "--ledger", str(tmp_path / "ledger"), timeout=120)
    output = r.stdout + r.stderr
    assert r.returncode != 0
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no_such_bucket" in errors[0], output
    assert "Traceback" not in output and not (tmp_path / "ledger").exists()


def test_build_manifest_counts_what_it_does_not_index_and_a_rerun_keeps_them(sample_delivery, tmp_path) -> None:  # noqa: ANN001
    import gzip
    import shutil

    root, _ = sample_delivery
    text, images = tmp_path / "text", tmp_path / "images"
    shutil.copytree(os.path.join(root, "text"), text)
    shutil.copytree(os.path.join(root, "images"), images)
    (text / "README.txt").write_bytes(b"delivery notes\n")
    (images / "extra.tar.gz").write_bytes(gzip.compress((images / "images-000.tar").read_bytes(), mtime=0))
    os.symlink(tmp_path / "gone.tar", images / "broken.tar")
    manifest = str(tmp_path / "manifest")
    args = ("--text", str(text), "--images", str(images), "--manifest", manifest)
    r = submit("build_manifest.py", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "objects listed: 9 (" in r.stdout, r.stdout
    assert "6 archives, 2 other objects (not_an_archive or compressed_archive), 1 unreadable while listing" in r.stdout
    for kind, error in (("archive", "not_an_archive"), ("archive", "compressed_archive"), ("archive", "broken_link")):
        assert any(line.split() == [kind, error, "1"] for line in r.stdout.splitlines()), r.stdout
    # Unchanged on the next run: nothing is indexed again, and the summary still counts them.
    r = submit("build_manifest.py", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "indexed this run: 0; unchanged and skipped: 9" in r.stdout and "2 other objects" in r.stdout, r.stdout
