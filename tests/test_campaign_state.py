"""The campaign over the instance state: status reads the state table, steps pass tranches and the restore ledger
on, and wave 2 is planned by a Spark job when the manifest is large (or on EMR)."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import build_manifest

from dicom_reassembly.campaign import jobs, status, steps
from dicom_reassembly.campaign.params import parse_params
from dicom_reassembly.restore.plan import WAVE_PIXELS


def _write(rows: list[dict], path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    types = {"output_bytes": pa.int64()}  # typed as the jobs write it, also when every value is null
    schema = pa.schema([(k, types.get(k, pa.string())) for k in rows[0]])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def test_status_reads_the_state_and_the_ledger_runs_after_its_commit(tmp_path) -> None:  # noqa: ANN001
    ledger = str(tmp_path / "work" / "ledger")
    # Run R1 committed a state: 1.1 written, 1.2 failed. Its ledger partition holds a stale row the state replaced.
    _write([{"sop_instance_uid": "1.1", "status": "failed", "output_bytes": None}], f"{ledger}/run_id=R0/p.parquet")
    _write([{"sop_instance_uid": u, "output": "o/{sop_instance_uid}.dcm", "source_fingerprint": "f", "status": s,
             "run_id": "R1", "output_bytes": b} for u, s, b in (("1.1", "written", 10), ("1.2", "failed", None))],
           f"{ledger}_state/snapshots/R1/part-0.parquet")
    _write([{"sop_instance_uid": "1.1", "status": "written", "output_bytes": 10}], f"{ledger}/run_id=R1/p.parquet")
    os.makedirs(f"{ledger}_state/_commits")
    with open(f"{ledger}_state/_commits/R1.json", "w") as f:
        json.dump({"run_id": "R1", "snapshot": "snapshots/R1", "rows": 2}, f)
    # Run R2 died after its ledger write, before committing its state: its rows still count.
    _write([{"sop_instance_uid": "1.2", "status": "written", "output_bytes": 20},
            {"sop_instance_uid": "1.3", "status": "not_restored", "output_bytes": None}], f"{ledger}/run_id=R2/p.parquet")
    got = {r["sop_instance_uid"]: (r["run_id"], r["status"], r["output_bytes"])
           for r in status.read_instance_states(ledger).to_pylist()}
    assert got == {"1.1": ("R1", "written", 10), "1.2": ("R2", "written", 20), "1.3": ("R2", "not_restored", None)}


def _params(tmp_path, **extra: object):  # noqa: ANN001, ANN202
    return parse_params({"text": str(tmp_path / "text"), "images": str(tmp_path / "images"), "out": str(tmp_path / "o"),
                         "work": str(tmp_path / "work"), "criteria": [], **extra})


def test_steps_hand_the_tranche_and_the_restore_ledger_to_the_jobs(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    calls = []
    monkeypatch.setattr(steps, "run_job", lambda params, inputs, job, args: calls.append((job, args)) or
                        jobs.JobResult(job, 0, "{}"))
    monkeypatch.setattr(steps, "archives_to_index", lambda params, inputs: (3, 1))
    params = _params(tmp_path, tranche="hash:0-63/256;limit:1000")
    inputs = steps.Inputs(params, None)
    steps.check_tranche(params)  # the real jobs' --help lists --tranche
    steps.build_manifest(params, inputs)
    steps.reassemble(params, inputs)
    (_, manifest_args), (_, reassemble_args) = calls
    assert manifest_args[manifest_args.index("--tranche") + 1] == "hash:0-63/256"  # no limit: it counts instances
    assert reassemble_args[reassemble_args.index("--tranche") + 1] == "hash:0-63/256;limit:1000"
    assert reassemble_args[reassemble_args.index("--restore-ledger") + 1] == str(tmp_path / "work" / "restore_ledger")
    with pytest.raises(Exception) as exc:
        steps.check_tranche(_params(tmp_path, tranche="hash:9-1/4"))
    assert getattr(exc.value, "reason", "") == "bad_tranche"


@pytest.mark.e2e
def test_wave_2_is_planned_by_the_spark_job_above_the_size_bound(spark, sample_delivery, tmp_path,  # noqa: ANN001
                                                                 monkeypatch) -> None:
    root, _ = sample_delivery
    params = parse_params({"text": os.path.join(root, "text"), "images": os.path.join(root, "images"),
                           "out": str(tmp_path / "o"), "work": str(tmp_path / "work"),
                           "criteria": [{"dicom_tag": ["0008", "0060"], "operation": "IN", "reference": ["CT", "MR"]}],
                           "tranche": f"prefix:{os.path.join(root, 'images', 'images-00')}"})
    build_manifest(spark, params.text, params.images, steps.layout_of(params).manifest)
    inputs = steps.Inputs(params, None)
    in_process = steps.plan_wave(params, inputs, WAVE_PIXELS)
    monkeypatch.setenv("DICOM_REASSEMBLY_SPARK_PLAN_BYTES", "0")
    monkeypatch.setenv("DICOM_REASSEMBLY_SPARK_MASTER", "local[2]")
    by_job = steps.plan_wave(params, inputs, WAVE_PIXELS)
    assert (by_job.objects, by_job.selection, by_job.notes) == (in_process.objects, in_process.selection,
                                                                 in_process.notes)
    assert by_job.selection.selected and by_job.selection.filtered_out
    assert os.listdir(os.path.join(params.work, "campaign", "plans"))  # the job's plan, read back from work
