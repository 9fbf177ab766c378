"""Writing an instance's object: create-exclusive, never over another instance's object, locally and on S3."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import uuid
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_reassembly.dicom.part10 import Part10
from dicom_reassembly.io import reads
from dicom_reassembly.reassembly.writes import INSTANCE_METADATA, instance_at, instance_uid_of, write_once


def _dicom(uid: str, note: str = "", pad: int = 0) -> bytes:
    """A Part 10 file for ``uid`` (``pad`` bytes of OB after the UIDs): what an object at a key holds."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = uid
    ds.ImageComments = note
    if pad:
        ds.EncapsulatedDocument = b"x" * pad
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _obj(uid: str, note: str = "", pad: int = 0) -> Part10:
    data = _dicom(uid, note, pad)
    return Part10(uid, [data], len(data), hashlib.sha256(data).hexdigest(), ExplicitVRLittleEndian, 1)


def _read(uri: str) -> bytes:
    return reads.read_bytes(uri)


def test_the_instance_an_object_holds_is_read_from_its_header(tmp_path: Any) -> None:
    data = _dicom("1.2.3.4", pad=200_000)
    assert instance_uid_of(data) == "1.2.3.4"
    assert instance_uid_of(data[:400]) == "1.2.3.4"  # cut inside the file meta: its MediaStorageSOPInstanceUID
    assert instance_uid_of(b"not DICOM at all") is None
    path = tmp_path / "o.dcm"
    path.write_bytes(data)
    assert instance_at(str(path)) == "1.2.3.4"
    assert instance_at(str(path), {INSTANCE_METADATA: "9.9"}) == "9.9"
    assert instance_at(str(tmp_path / "absent.dcm")) is None


def test_local_outcomes(tmp_path: Any) -> None:
    uri = str(tmp_path / "k" / "key.dcm")
    ours = _obj("1.2.3")
    assert write_once(uri, ours).status == "written"
    assert write_once(uri, _obj("1.2.3")).status == "skipped_existing"  # the same object again

    other = write_once(uri, _obj("1.2.4"))
    assert other.status == "conflict"
    assert other.reason == f"{uri} already holds SOP Instance UID 1.2.3; not replaced by 1.2.4"
    assert _read(uri) == ours.tobytes()

    changed = write_once(uri, _obj("1.2.3", "another rendition"))
    assert changed.status == "conflict" and "holds a different object of 1.2.3; not replaced" in changed.reason
    assert _read(uri) == ours.tobytes()

    # skip_existing false: the same instance's object is replaced, another instance's never.
    newer = _obj("1.2.3", "another rendition")
    assert write_once(uri, newer, replace_same_instance=True).status == "written"
    assert _read(uri) == newer.tobytes()
    refused = write_once(uri, _obj("1.2.4"), replace_same_instance=True)
    assert refused.status == "conflict" and "holds SOP Instance UID 1.2.3" in refused.reason
    assert _read(uri) == newer.tobytes()

    (tmp_path / "k" / "junk.dcm").write_bytes(b"junk")
    junk = write_once(str(tmp_path / "k" / "junk.dcm"), _obj("1.2.5"), replace_same_instance=True)
    assert junk.status == "conflict" and "an object whose SOP Instance UID cannot be read" in junk.reason
    assert (tmp_path / "k" / "junk.dcm").read_bytes() == b"junk"


@pytest.mark.parametrize("replace", [False, True])
def test_two_instances_racing_for_one_key_give_one_written_and_one_conflict(tmp_path: Any, replace: bool) -> None:
    """The regression: both writes replaced the key in turn and both rows said written."""
    for round_ in range(20):
        uri = str(tmp_path / f"race-{round_}.dcm")
        objs = [_obj(f"1.2.{i}", pad=100_000) for i in (1, 2)]
        barrier = threading.Barrier(2)
        outcomes: list[Any] = [None, None]

        def one(i: int, uri: str = uri, objs: list = objs, outcomes: list = outcomes,
                barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            outcomes[i] = write_once(uri, objs[i], replace_same_instance=replace)

        threads = [threading.Thread(target=one, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(o.status for o in outcomes)
        assert statuses == ["conflict", "written"], outcomes
        winner = next(i for i, o in enumerate(outcomes) if o.status == "written")
        loser = outcomes[1 - winner]
        assert f"SOP Instance UID {objs[winner].sop_instance_uid}" in loser.reason
        assert objs[1 - winner].sop_instance_uid in loser.reason
        assert _read(uri) == objs[winner].tobytes()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_a_colliding_template_in_a_partition_gives_written_and_conflict(sample_delivery: Any, tmp_path: Any) -> None:
    """Two instances that one (unchecked) template sends to one key, written by one task's thread pool: one
    object and one conflict row naming both instances, never two written rows."""
    from helpers import dcmftest_ok, work_item

    from dicom_reassembly.reassembly.executor import TaskSettings, reassemble_partition
    from dicom_reassembly.reassembly.writes import WritePolicy
    from dicom_reassembly.records.ledger import row_dict

    root, expected = sample_delivery
    picked = [(u, i) for u, i in sorted(expected["instances"].items()) if i["payload"] == "native"][:2]
    items = [work_item(root, inst, uid) for uid, inst in picked]  # both in study 1.2
    items.sort(key=lambda it: (it["pixel_archive"], it["pixel_offset"]))
    task = TaskSettings("r", WritePolicy(out=str(tmp_path), key_template="{study_instance_uid}.dcm", upload_threads=2))
    rows = [row_dict(r) for r in reassemble_partition(items, task)]
    by_status = {r["status"]: r for r in rows}
    assert sorted(by_status) == ["conflict", "written"], rows
    written, conflict = by_status["written"], by_status["conflict"]
    assert written["output_uri"] == str(tmp_path / "1.2.dcm") and conflict["output_uri"] is None
    assert conflict["reason"] == (f"{tmp_path / '1.2.dcm'} already holds SOP Instance UID "
                                  f"{written['sop_instance_uid']}; not replaced by {conflict['sop_instance_uid']}")
    assert instance_at(str(tmp_path / "1.2.dcm")) == written["sop_instance_uid"]
    assert dcmftest_ok(str(tmp_path / "1.2.dcm"))


# ---------------------------------------------------------------- S3


@pytest.fixture()
def bucket(s3: Any) -> str:
    name = f"out-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.mark.parametrize("existing_check", ["conditional", "head"])
def test_s3_outcomes(s3: Any, bucket: str, existing_check: str) -> None:
    uri = f"s3://{bucket}/dcm/key.dcm"
    ours = _obj("1.2.3")
    assert write_once(uri, ours, existing_check=existing_check).status == "written"
    head = s3.head_object(Bucket=bucket, Key="dcm/key.dcm")
    assert head["Metadata"] == {INSTANCE_METADATA: "1.2.3", "sha256": ours.sha256}
    assert write_once(uri, _obj("1.2.3"), existing_check=existing_check).status == "skipped_existing"
    other = write_once(uri, _obj("1.2.4"), existing_check=existing_check, replace_same_instance=True)
    assert other == other.__class__("conflict", f"{uri} already holds SOP Instance UID 1.2.3; not replaced by 1.2.4")
    newer = _obj("1.2.3", "newer")
    assert write_once(uri, newer, existing_check=existing_check).status == "conflict"
    assert write_once(uri, newer, existing_check=existing_check, replace_same_instance=True).status == "written"
    assert _read(uri) == newer.tobytes()


def test_s3_objects_without_our_metadata_are_named_from_their_header(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="old/key.dcm", Body=_dicom("1.2.9", "written by another tool"))
    s3.put_object(Bucket=bucket, Key="old/junk.dcm", Body=b"junk")
    got = write_once(f"s3://{bucket}/old/key.dcm", _obj("1.2.3"))
    assert got.status == "conflict" and "holds SOP Instance UID 1.2.9; not replaced by 1.2.3" in got.reason
    got = write_once(f"s3://{bucket}/old/junk.dcm", _obj("1.2.3"))
    assert got.status == "conflict" and "cannot be read" in got.reason
    assert s3.get_object(Bucket=bucket, Key="old/junk.dcm")["Body"].read() == b"junk"
