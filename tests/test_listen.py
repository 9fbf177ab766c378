"""``listen``, the C-STORE SCP: dcmtk's storescu/echoscu and pynetdicom as clients, a real Orthanc behind STOW-RS."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import date
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow.dataset as pads
import pydicom
import pytest
import requests
from helpers import dciodvfy_errors, dcmftest_ok
from network_helpers import (
    SOURCES,
    ListenProcess,
    dataset_bytes,
    echoscu,
    make_instance,
    save,
    storescu,
)
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt

from dicom_reassembly.intake.receiver import Intake, IntakeSettings
from dicom_reassembly.intake.validation import Refused, check_dataset
from dicom_reassembly.records import catalog

if TYPE_CHECKING:
    from orthanc_fixture import OrthancServer

pytest_plugins = ["orthanc_fixture"]


@pytest.fixture()
def listen_factory(tmp_path: Any) -> Iterator[Any]:
    """Start listen processes in a temp folder; every one still running is killed at the end."""
    started: list[ListenProcess] = []

    def start(*args: str, workdir: str | None = None, port: int | None = None) -> ListenProcess:
        proc = ListenProcess(workdir or str(tmp_path), *args, port=port).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def read_rows(uri: str) -> list[dict[str, Any]]:
    return pads.dataset(uri, partitioning="hive").to_table().to_pylist() if os.path.isdir(uri) else []


def wait_rows(uri: str, n: int, timeout: float = 30) -> list[dict[str, Any]]:
    """Rows of a dataset once it holds at least ``n`` (the recorder appends every second)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = read_rows(uri)
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def orthanc_uids(orthanc: OrthancServer) -> set[str]:
    r = requests.get(f"{orthanc.dicomweb_root}/instances", headers={"Accept": "application/dicom+json"}, timeout=30)
    assert r.status_code == 200, r.text
    return {item["00080018"]["Value"][0] for item in r.json()}


def send_pynetdicom(port: int, datasets: list[Dataset]) -> list[tuple[int, str | None]]:
    """(Status, ErrorComment) for each dataset, all in one association."""
    ae = AE(ae_title="PYNETDICOM")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="DCMREASM")
    assert assoc.is_established
    try:
        out = []
        for ds in datasets:
            status = assoc.send_c_store(ds)
            out.append((int(status.Status), status.get("ErrorComment")))
            assert assoc.is_established, "the association must stay up after a refusal"
        return out
    finally:
        assoc.release()


# --------------------------------------------------------------------------- the rules, over a Dataset


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's note on the malformed UID the case sets
@pytest.mark.parametrize(("change", "code", "reason"), [
    (lambda ds: setattr(ds, "SOPInstanceUID", [generate_uid(), generate_uid()]), 0xC000, "invalid_vm"),
    (lambda ds: setattr(ds, "StudyInstanceUID", "1.2.03"), 0xC000, "invalid_uid_value"),
    (lambda ds: delattr(ds, "SeriesInstanceUID"), 0xA900, "missing_uid"),
    (lambda ds: ds.add_new(0x00031010, "LO", "private in an odd group"), 0xC000, "reserved_group"),
    (lambda ds: setattr(ds, "BitsAllocated", 12), 0xC000, "invalid_bits_allocated"),
    (lambda ds: setattr(ds, "SpecificCharacterSet", "ISO_IR 999"), 0xC000, "unknown_character_set"),
], ids=["multi-valued uid", "bad uid syntax", "missing series uid", "group 0003", "bits 12", "unknown charset"])
def test_rules_refuse_with_their_status(change: Any, code: int, reason: str) -> None:
    ds = make_instance()
    change(ds)
    with pytest.raises(Refused) as err:
        check_dataset(ds)
    assert (err.value.dimse_status, err.value.reason) == (code, reason)


def test_rules_on_text_bytes_and_announced_uids(tmp_path: Any) -> None:
    ds = make_instance("MR_small.dcm", PatientName="Müller^Jörg")  # no SpecificCharacterSet: pydicom writes Latin-1
    path = save(ds, str(tmp_path))
    with open(path, "rb") as f:
        assert "Müller".encode("latin-1") in f.read()
    with pytest.raises(Refused, match="undeclared_character_set"):
        check_dataset(pydicom.dcmread(path))
    good = make_instance()
    check_dataset(good, good.SOPClassUID, good.SOPInstanceUID)  # passes
    with pytest.raises(Refused) as err:
        check_dataset(good, "1.2.840.10008.5.1.4.1.1.4", good.SOPInstanceUID)
    assert err.value.dimse_status == 0xA900


# --------------------------------------------------------------------------- storescu and echoscu


def test_storescu_instances_are_stored_as_received_and_recorded(listen_factory: Any, tmp_path: Any) -> None:
    scp: ListenProcess = listen_factory()
    assert echoscu(scp.port).returncode == 0
    sources = [make_instance(name, patient_id=f"P-{i}") for i, name in enumerate(SOURCES)]
    files = [save(ds, str(tmp_path / "src")) for ds in sources]
    sent = storescu(scp.port, files)
    assert sent.returncode == 0, sent.stderr
    scp.wait_spool_empty()
    ledger = wait_rows(scp.ledger, len(files))
    rows = {r["sop_instance_uid"]: r for r in wait_rows(scp.catalog, len(files))}
    assert scp.stop() == 0
    for ds, src in zip(sources, files):
        uid = str(ds.SOPInstanceUID)
        out = os.path.join(scp.out, f"{uid}.dcm")
        assert dcmftest_ok(out)
        stored = pydicom.dcmread(out)
        # As sent: the same transfer syntax (no transcoding here) and the same pixels. storescu re-encodes
        # a dataset it reads (sequence lengths, trailing padding), so the bytes are compared in the next test.
        assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert np.array_equal(stored.pixel_array, pydicom.dcmread(src).pixel_array)
        assert stored.SOPInstanceUID == ds.SOPInstanceUID and stored.PatientID == ds.PatientID
        assert stored.file_meta.SourceApplicationEntityTitle == "STORESCU"
        row = rows[uid]
        expected = {
            "sop_class_uid": ds.SOPClassUID, "study_instance_uid": ds.StudyInstanceUID,
            "series_instance_uid": ds.SeriesInstanceUID, "patient_id": ds.PatientID, "modality": ds.Modality,
            "study_date": date(int(ds.StudyDate[:4]), int(ds.StudyDate[4:6]), int(ds.StudyDate[6:])),
            "study_year": int(ds.StudyDate[:4]), "rows": ds.Rows, "columns": ds.Columns,
            "number_of_frames": int(ds.get("NumberOfFrames", 1)), "bits_allocated": ds.BitsAllocated,
            "photometric_interpretation": ds.PhotometricInterpretation,
            "transfer_syntax": ds.file_meta.TransferSyntaxUID, "output_uri": out,
            "output_bytes": os.path.getsize(out), "status": "received", "patient_name": str(ds.PatientName),
            "instance_number": int(ds.InstanceNumber) if "InstanceNumber" in ds else None,
            "manufacturer": ds.get("Manufacturer") or None, "header_archive": "dimse:STORESCU",
        }
        assert {k: row[k] for k in expected} == expected
        assert row["output_checksum"].startswith("sha256:")
    assert {r["status"] for r in ledger} == {"received"}
    assert {r["sop_instance_uid"] for r in ledger} == {str(ds.SOPInstanceUID) for ds in sources}


def test_stored_file_holds_the_dataset_bytes_as_sent(listen_factory: Any, tmp_path: Any) -> None:
    """pynetdicom sends a file's dataset bytes unchanged (chunked send): the stored file holds exactly those."""
    from pynetdicom import _config

    scp = listen_factory()
    sources = [make_instance(name) for name in SOURCES]
    files = [save(ds, str(tmp_path / "src")) for ds in sources]
    ae = AE(ae_title="PYNETDICOM")
    for ds in sources:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    saved, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="DCMREASM")
        assert assoc.is_established
        statuses = [int(assoc.send_c_store(path).Status) for path in files]
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
    assert statuses == [0] * len(files)
    for ds, src in zip(sources, files):
        out = os.path.join(scp.out, f"{ds.SOPInstanceUID}.dcm")
        assert dataset_bytes(out) == dataset_bytes(src)
        assert dcmftest_ok(out)
        assert dciodvfy_errors(out) <= dciodvfy_errors(src)  # no error the sent file lacked
        assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID


def test_refused_instances_keep_the_association_up(listen_factory: Any, tmp_path: Any) -> None:
    scp = listen_factory()
    good = make_instance()
    bad_bits = make_instance(BitsAllocated=12)
    statuses = send_pynetdicom(scp.port, [bad_bits, good])
    assert statuses[0][0] == 0xC000 and "invalid_bits_allocated" in statuses[0][1]
    assert statuses[1] == (0x0000, None)
    # storescu: one refused file does not end its association; the next file is stored.
    other = make_instance()
    files = [save(make_instance(BitsAllocated=12), str(tmp_path / "bad")), save(other, str(tmp_path / "ok"))]
    res = storescu(scp.port, files, extra=("-v", "--no-halt"))
    text = res.stdout + res.stderr
    assert text.count("Requesting Association") == 1
    assert "Received Store Response (Error" in text and "Received Store Response (Success)" in text
    scp.wait_spool_empty()
    assert os.path.isfile(os.path.join(scp.out, f"{good.SOPInstanceUID}.dcm"))
    assert os.path.isfile(os.path.join(scp.out, f"{other.SOPInstanceUID}.dcm"))
    assert sorted(os.listdir(scp.out)) == sorted([f"{good.SOPInstanceUID}.dcm", f"{other.SOPInstanceUID}.dcm"])
    ledger = wait_rows(scp.ledger, 4)
    assert sorted(r["status"] for r in ledger) == ["invalid_header", "invalid_header", "received", "received"]


def test_dataset_missing_a_required_uid_is_0xa900(listen_factory: Any) -> None:
    scp = listen_factory()
    ds = make_instance()
    del ds.SeriesInstanceUID
    (code, comment), = send_pynetdicom(scp.port, [ds])
    assert code == 0xA900
    assert comment.startswith("missing_uid") and len(comment) <= 64


def test_conflicting_object_is_refused_and_the_stored_one_kept(listen_factory: Any) -> None:
    scp = listen_factory()
    first = make_instance(patient_id="P-A")
    second = make_instance(patient_id="P-B")
    second.SOPInstanceUID = first.SOPInstanceUID
    second.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    statuses = send_pynetdicom(scp.port, [first, first, second])
    assert [s for s, _ in statuses[:2]] == [0, 0]  # the same object twice is idempotent
    assert statuses[2][0] == 0xC000 and statuses[2][1].startswith("conflict")
    stored = pydicom.dcmread(os.path.join(scp.out, f"{first.SOPInstanceUID}.dcm"))
    assert stored.PatientID == "P-A"
    ledger = wait_rows(scp.ledger, 3)
    assert sorted(r["status"] for r in ledger) == ["conflict", "received", "received"]


def test_allow_list_rejects_other_calling_ae_titles(listen_factory: Any, tmp_path: Any) -> None:
    scp = listen_factory("--allow", "GOODSCU", "--allow", "OTHERSCU")
    assert echoscu(scp.port, calling="GOODSCU").returncode == 0
    refused = echoscu(scp.port, calling="BADSCU")
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stdout + refused.stderr
    res = storescu(scp.port, [save(make_instance(), str(tmp_path))], calling="BADSCU")
    assert res.returncode != 0
    assert not os.path.isdir(scp.out) or not os.listdir(scp.out)


# --------------------------------------------------------------------------- the spool at restart


def test_restart_picks_up_complete_spool_files_and_drops_partial_ones(tmp_path: Any) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    ds = make_instance()
    with open(save(ds, str(tmp_path / "src")), "rb") as f:
        (spool / "0123abcd.dcm").write_bytes(f.read())
    (spool / "4567ef.partial").write_bytes(b"half a file")
    settings = IntakeSettings(out=str(tmp_path / "out"), ledger=str(tmp_path / "ledger"),
                              catalog=str(tmp_path / "cat"), run_id="r1")
    intake = Intake(settings, str(spool))
    assert intake.start() == 1
    intake.stop()
    assert [n for n in os.listdir(spool) if not n.startswith("intake-state.sqlite")] == []
    out = tmp_path / "out" / f"{ds.SOPInstanceUID}.dcm"
    assert dcmftest_ok(str(out))
    assert [r["status"] for r in read_rows(str(tmp_path / "ledger"))] == ["received"]
    assert [r["sop_instance_uid"] for r in read_rows(str(tmp_path / "cat"))] == [ds.SOPInstanceUID]


# --------------------------------------------------------------------------- STOW-RS forward to Orthanc


def test_forward_to_orthanc_then_spool_is_emptied(listen_factory: Any, orthanc_running: OrthancServer,
                                                  tmp_path: Any) -> None:
    scp = listen_factory("--stow-url", orthanc_running.dicomweb_root)
    sources = [make_instance(name) for name in SOURCES]
    assert storescu(scp.port, [save(ds, str(tmp_path / "src")) for ds in sources]).returncode == 0
    scp.wait_spool_empty()
    assert {str(ds.SOPInstanceUID) for ds in sources} <= orthanc_uids(orthanc_running)
    assert scp.stop() == 0
    ledger = read_rows(scp.ledger)
    sent = {r["sop_instance_uid"] for r in ledger if r["stow_status"] == "sent"}
    assert sent == {str(ds.SOPInstanceUID) for ds in sources}


def test_stopped_mid_queue_and_restarted_loses_nothing(listen_factory: Any, orthanc: OrthancServer,
                                                       tmp_path: Any) -> None:
    orthanc.stop()  # the forward target is down: everything waits in the spool
    try:
        scp = listen_factory("--stow-url", orthanc.dicomweb_root, "--retry-max", "0.5")
        sources = [make_instance() for _ in range(20)]
        assert storescu(scp.port, [save(ds, str(tmp_path / "src")) for ds in sources]).returncode == 0
        assert len(scp.spooled()) == 20  # stored in --out, not yet forwarded: kept
        assert len(os.listdir(scp.out)) == 20
        failed = wait_rows(scp.ledger, 40)
        assert {r["stow_status"] for r in failed} == {"pending", "failed"}
        scp.kill()  # killed mid-queue: no drain
    finally:
        orthanc.start()
    again = listen_factory("--stow-url", orthanc.dicomweb_root, workdir=scp.workdir)
    assert "20 picked up" in again.log()
    again.wait_spool_empty()
    assert {str(ds.SOPInstanceUID) for ds in sources} <= orthanc_uids(orthanc)
    assert again.stop() == 0
    newest: dict[str, dict[str, Any]] = {}
    for r in sorted(read_rows(scp.ledger), key=lambda r: r["finished_at"]):
        newest[r["sop_instance_uid"]] = r
    assert {u: r["stow_status"] for u, r in newest.items()} == {str(ds.SOPInstanceUID): "sent" for ds in sources}


def test_burst_of_500_is_received_written_and_forwarded(listen_factory: Any, orthanc_running: OrthancServer,
                                                        tmp_path: Any) -> None:
    scp = listen_factory("--stow-url", orthanc_running.dicomweb_root)
    study = generate_uid()
    sources = [make_instance("MR_small.dcm", patient_id="BURST", study=study) for _ in range(500)]
    files = [save(ds, str(tmp_path / "src")) for ds in sources]
    sent = storescu(scp.port, files)
    assert sent.returncode == 0, sent.stderr[-2000:]
    assert scp.stop() == 0  # SIGTERM right after the burst: the queue is drained before exit
    if scp.spooled():  # whatever the drain time did not cover is picked up by the next start
        scp = listen_factory("--stow-url", orthanc_running.dicomweb_root, workdir=scp.workdir)
        scp.wait_spool_empty(timeout=300)
        scp.stop()
    uids = {str(ds.SOPInstanceUID) for ds in sources}
    assert {f[:-4] for f in os.listdir(scp.out)} == uids
    assert uids <= orthanc_uids(orthanc_running)
    cat = {r["sop_instance_uid"] for r in read_rows(scp.catalog)}
    assert cat == uids
    for path in files[:: 100]:
        assert dcmftest_ok(os.path.join(scp.out, os.path.basename(path)))
    con = duckdb.connect()  # the view serve reads: one row per instance
    catalog.create_current_view(con, scp.catalog)
    assert con.execute("SELECT count(*), count(DISTINCT sop_instance_uid) FROM catalog").fetchone() == (500, 500)


def test_shutdown_drains_the_forward_queue(listen_factory: Any, orthanc_running: OrthancServer,
                                           tmp_path: Any) -> None:
    scp = listen_factory("--stow-url", orthanc_running.dicomweb_root, "--stow-batch", "5")
    sources = [make_instance("MR_small.dcm") for _ in range(40)]
    assert storescu(scp.port, [save(ds, str(tmp_path / "src")) for ds in sources]).returncode == 0
    assert scp.stop() == 0  # SIGTERM as soon as the sender is done: what is queued is sent before exit
    assert scp.spooled() == []
    assert {str(ds.SOPInstanceUID) for ds in sources} <= orthanc_uids(orthanc_running)


@pytest.mark.parametrize(("args", "reason"), [
    (["--ae-title", "A-TITLE-LONGER-THAN-16"], "bad_ae_title"),
    (["--port", "70000"], "bad_port"),
    (["--stow-url", "ftp://pacs/dicom-web"], "bad_stow_url"),
])
def test_bad_options_are_one_line_and_exit_2(tmp_path: Any, args: list[str], reason: str) -> None:
    import subprocess

    from network_helpers import CLI

    res = subprocess.run([*CLI, "listen", "--spool", str(tmp_path / "s"), "--out", str(tmp_path / "o"), *args],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and reason in res.stderr and "Traceback" not in res.stderr


def test_accepted_associations_send_without_nagle_delay() -> None:
    """Each C-STORE-RSP must leave at once: with Nagle on, it waits ~40 ms for the sender's delayed ACK."""
    import socket
    from types import SimpleNamespace

    from dicom_reassembly.intake.scp import handle_open, handlers

    assert any(h[0] is evt.EVT_CONN_OPEN and h[1] is handle_open for h in handlers(None))  # type: ignore[arg-type]
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            handle_open(SimpleNamespace(assoc=SimpleNamespace(dul=SimpleNamespace(socket=SimpleNamespace(socket=accepted)))))
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        client.close()
