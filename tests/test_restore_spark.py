"""Wave-2 restore planning on Spark agrees with the one-process pyarrow plan, on a generated delivery."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from datetime import datetime, timezone

import pytest

from dicom_reassembly.manifest import listing as manifest_listing
from dicom_reassembly.manifest import spark as manifest_spark
from dicom_reassembly.restore import spark_plan
from dicom_reassembly.restore.plan import STATE_AVAILABLE, plan_restore
from dicom_reassembly.run_id import new_run_id
from dicom_reassembly.selection.spec import parse_criteria
from dicom_reassembly.selection.tranche import parse_tranche
from dicom_reassembly.testing.delivery import tar_bytes
from dicom_reassembly.testing.instances import Member

pytestmark = pytest.mark.spark

CRITERIA = {"criteria": [{"dicom_tag": ["0008", "0060"], "operation": "IN", "reference": ["MR", "CT", "US", "OT"]}]}
REF_UID = "2.25.424242"


@pytest.fixture(scope="module")
def partly_indexed(spark, sample_delivery, tmp_path_factory) -> tuple[str, str]:  # noqa: ANN001
    """The sample delivery plus a header whose BulkDataURI names images-002.tar; images-002 is not indexed."""
    root, _ = sample_delivery
    copy = str(tmp_path_factory.mktemp("delivery"))
    shutil.copytree(os.path.join(root, "text"), os.path.join(copy, "text"))
    shutil.copytree(os.path.join(root, "images"), os.path.join(copy, "images"))
    with tarfile.open(os.path.join(root, "text", "text-000.tar")) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith(".json"))
        header = json.loads(tf.extractfile(member).read())
    header["00080018"] = {"vr": "UI", "Value": [REF_UID]}
    header["00080060"] = {"vr": "CS", "Value": ["MR"]}
    header["7FE00010"] = {"vr": "OB", "BulkDataURI": f"images/images-002.tar/{REF_UID}.j2c"}
    data, _ = tar_bytes([Member(f"{REF_UID}.json", json.dumps(header).encode())])
    with open(os.path.join(copy, "text", "text-ref.tar"), "wb") as f:
        f.write(data)
    manifest = os.path.join(copy, "manifest")
    listed = manifest_listing.list_archives(os.path.join(copy, "text"), os.path.join(copy, "images"))
    todo = [a for a in listed if not a["uri"].endswith("images-002.tar")]
    at = datetime.now(timezone.utc)
    run = new_run_id(at)
    manifest_spark.build_manifest_df(spark, todo, run, at, 2, 64 * 1024).write.parquet(manifest)
    return copy, manifest


def _plan(copy: str, manifest: str, **kw):  # noqa: ANN003, ANN202
    return plan_restore(os.path.join(copy, "text"), os.path.join(copy, "images"), manifest,
                        parse_criteria(CRITERIA), **kw)


def test_spark_and_pyarrow_plans_agree(spark, partly_indexed, tmp_path) -> None:  # noqa: ANN001
    copy, manifest = partly_indexed
    local, distributed = _plan(copy, manifest), _plan(copy, manifest, spark=spark)
    assert distributed.objects == local.objects
    assert distributed.selection == local.selection
    assert distributed.notes == local.notes
    sel = local.selection  # the cases the comparison covers all occur
    assert sel.filtered_out and sel.located_by_ref == 1 and sel.located_by_manifest and sel.unlocated
    states = {os.path.basename(o.uri): (o.state, o.reason) for o in local.objects if o.role == "images"}
    # Local files need no restore ("available"); the reason is the plan's: images-002 is named by the ref.
    assert states["images-002.tar"] == (STATE_AVAILABLE, "selected_instances")

    # A tranche keeps only its image archives in wave 2, on both paths alike.
    tranche = parse_tranche(f"prefix:{os.path.join(copy, 'images', 'images-00')}0,{os.path.join(copy, 'images')}/images-002")
    a, b = _plan(copy, manifest, tranche=tranche), _plan(copy, manifest, tranche=tranche, spark=spark)
    assert a.objects == b.objects and a.selection == b.selection
    assert sorted(os.path.basename(o.uri) for o in a.objects if o.role == "images") == ["images-000.tar",
                                                                                        "images-002.tar"]
    # The plan as files (what jobs/plan_restore.py hands back) reads back as it was.
    spark_plan.write_plan(distributed, str(tmp_path / "plan"))
    back = spark_plan.read_plan(str(tmp_path / "plan"))
    assert (back.objects, back.selection, back.notes) == (distributed.objects, distributed.selection, distributed.notes)


def test_spark_plan_skips_parsing_when_nothing_can_be_located(spark, sample_delivery, tmp_path) -> None:  # noqa: ANN001
    root, _ = sample_delivery
    listed = manifest_listing.list_archives(os.path.join(root, "text"), os.path.join(root, "images"))
    manifest = str(tmp_path / "manifest")
    at = datetime.now(timezone.utc)
    run = new_run_id(at)
    manifest_spark.build_manifest_df(spark, [a for a in listed if a["role"] == "text"], run, at, 2,
                                     64 * 1024).write.parquet(manifest)
    local, distributed = (plan_restore(os.path.join(root, "text"), os.path.join(root, "images"), manifest,
                                       parse_criteria(CRITERIA), spark=s) for s in (None, spark))
    assert distributed.selection == local.selection and not local.selection.evaluated
    assert distributed.objects == local.objects
