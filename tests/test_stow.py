"""STOW-RS client and the ``stow`` command, against a real Orthanc and a tiny local HTTP server."""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import pickle
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from dicom_reassembly.cli.stow import add_stow_parser, run_stow
from dicom_reassembly.errors import ConfigError
from dicom_reassembly.stow.client import StowClient, StowItem
from dicom_reassembly.stow.command import read_failed_from_ledger
from dicom_reassembly.stow.settings import StowAuth, StowSettings

if TYPE_CHECKING:
    from orthanc_fixture import OrthancServer

# Fixtures `orthanc` and `orthanc_running`; registering twice (here and in conftest) is harmless.
pytest_plugins = ["orthanc_fixture"]

# --------------------------------------------------------------------------- test data


def make_instance(name: str, drop: str | None = None, study: str | None = None) -> tuple[pydicom.Dataset, bytes]:
    """A pydicom bundled file with fresh UIDs, as (dataset, Part 10 bytes)."""
    path = get_testdata_file(name, download=False)
    assert path, f"pydicom test file {name} is missing"
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if drop:
        delattr(ds, drop)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return ds, buf.getvalue()


def split_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a multipart body as (headers, payload); independent of the code under test."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    assert m, content_type
    delimiter = b"--" + m.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk
        raw_headers, _, payload = chunk.partition(b"\r\n\r\n")
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        headers = {}
        for line in raw_headers.decode("latin-1").split("\r\n"):
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        parts.append((headers, payload))
    return parts


def qido_instance_uids(root: str) -> set[str]:
    """SOP Instance UIDs QIDO-RS lists at ``{root}/instances``."""
    r = requests.get(f"{root}/instances", headers={"Accept": "application/dicom+json"}, timeout=10)
    assert r.status_code == 200, r.text
    return {item["00080018"]["Value"][0] for item in r.json()}


def wado_instance(root: str, ds: pydicom.Dataset) -> pydicom.Dataset:
    """WADO-RS retrieve of one instance in its stored transfer syntax."""
    url = f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    # transfer-syntax=*: without it Orthanc 1.10 tries to transcode to Explicit VR LE and cannot for JPEG 2000.
    r = requests.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                     timeout=10)
    assert r.status_code == 200, r.text
    parts = split_multipart(r.content, r.headers["Content-Type"])
    assert len(parts) == 1
    return pydicom.dcmread(io.BytesIO(parts[0][1]))


# --------------------------------------------------------------------------- a tiny STOW-RS server


class FakeStow:
    """Records requests; answers from ``plan`` (status, headers, body) and then with success for every part."""

    def __init__(self) -> None:
        self.plan: list[tuple[int, dict[str, str], bytes]] = []
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with fake.lock:
                    fake.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    planned = fake.plan.pop(0) if fake.plan else None
                status, headers, payload = planned or (200, {"Content-Type": "application/dicom+json"},
                                                      fake.success_body(self.headers.get("Content-Type", ""), body))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def success_body(content_type: str, body: bytes) -> bytes:
        uids = [pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID for _, p in split_multipart(body, content_type)]
        return json.dumps(referenced_json(uids)).encode()

    def parts(self, i: int) -> list[bytes]:
        headers, body = self.requests[i]
        return [p for _, p in split_multipart(body, headers["content-type"])]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def referenced_json(uids: list[str], failed: dict[str, int] | None = None) -> dict[str, Any]:
    """A DICOM JSON STOW-RS response body."""
    doc: dict[str, Any] = {"00081199": {"vr": "SQ", "Value": [
        {"00081155": {"vr": "UI", "Value": [u]}} for u in uids]}}
    if failed:
        doc["00081198"] = {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": [u]}, "00081197": {"vr": "US", "Value": [code]}}
            for u, code in failed.items()]}
    return doc


@pytest.fixture()
def fake_stow() -> Iterator[FakeStow]:
    server = FakeStow()
    yield server
    server.close()


@pytest.fixture()
def no_auth_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DICOMWEB_TOKEN", "DICOMWEB_USER", "DICOMWEB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def fast(url: str, **kw: Any) -> StowSettings:
    """Settings with tiny backoff, so retries cost milliseconds."""
    base: dict[str, Any] = {"url": url, "max_retries": 2, "backoff_base": 0.01, "backoff_max": 0.05,
                            "timeout": (2.0, 10.0)}
    base.update(kw)
    return StowSettings(**base)


# --------------------------------------------------------------------------- real Orthanc


def test_batches_qido_and_wado_pixels_identical(orthanc_running: OrthancServer, tmp_path: Any,
                                                no_auth_env: None, caplog: pytest.LogCaptureFixture) -> None:
    names = ["CT_small.dcm", "MR_small.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "CT_small.dcm"]
    made = [make_instance(n) for n in names]
    items: list[StowItem] = []
    for i, (ds, data) in enumerate(made):
        if i % 2:  # half from local files, half from memory
            path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            path.write_bytes(data)
            items.append(StowItem(ds.SOPInstanceUID, str(path)))
        else:
            items.append(StowItem(None, data))  # UID read from the payload
    caplog.set_level(logging.INFO, logger="dicom_reassembly.stow")
    with StowClient(StowSettings(orthanc_running.dicomweb_root, batch_count=2)) as client:
        results = list(client.send(items))

    assert [r.status for r in results] == ["sent"] * 5, results
    assert [r.sop_instance_uid for r in results] == [ds.SOPInstanceUID for ds, _ in made]
    batches = [int(m.group(1)) for m in (re.search(r"batch of (\d+)", r.getMessage()) for r in caplog.records) if m]
    assert batches == [2, 2, 1]

    assert {ds.SOPInstanceUID for ds, _ in made} <= qido_instance_uids(orthanc_running.dicomweb_root)
    for sent, _ in made:
        got = wado_instance(orthanc_running.dicomweb_root, sent)
        assert got.SOPInstanceUID == sent.SOPInstanceUID
        assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert got.PixelData == sent.PixelData
        np.testing.assert_array_equal(got.pixel_array, sent.pixel_array)


def test_wado_frame_of_jpeg2000_matches_codestream(orthanc_running: OrthancServer, no_auth_env: None) -> None:
    ds, data = make_instance("MR_small_jp2klossless.dcm")
    with StowClient(StowSettings(orthanc_running.dicomweb_root)) as client:
        [result] = list(client.send([(ds.SOPInstanceUID, data)]))
    assert result.status == "sent"
    url = (f"{orthanc_running.dicomweb_root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}/frames/1")
    r = requests.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
                     timeout=10)
    assert r.status_code == 200, r.text
    [(_, frame)] = split_multipart(r.content, r.headers["Content-Type"])
    expected = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert frame.rstrip(b"\0") == expected.rstrip(b"\0")  # the fragment may carry an even-length pad byte


def test_per_instance_failures_from_orthanc(orthanc_running: OrthancServer, no_auth_env: None) -> None:
    good1, data1 = make_instance("CT_small.dcm")
    bad, bad_data = make_instance("MR_small.dcm", drop="SeriesInstanceUID")  # parseable, but Orthanc needs it
    good2, data2 = make_instance("MR_small.dcm")
    garbage_uid = generate_uid()
    items = [(good1.SOPInstanceUID, data1), (bad.SOPInstanceUID, bad_data),
             (garbage_uid, b"this is not DICOM" * 20), (good2.SOPInstanceUID, data2)]
    with StowClient(StowSettings(orthanc_running.dicomweb_root, batch_count=10)) as client:
        results = {r.sop_instance_uid: r for r in client.send(items)}

    assert results[good1.SOPInstanceUID].status == "sent"
    assert results[good2.SOPInstanceUID].status == "sent"
    # Orthanc lists the unstorable instance in FailedSOPSequence with 0xC000...
    assert results[bad.SOPInstanceUID].status == "failed"
    assert results[bad.SOPInstanceUID].reason == "failure_c000_cannot_understand"
    # ...drops an unparseable part from both sequences, and answers 400 for the whole request.
    assert results[garbage_uid].status == "failed"
    assert results[garbage_uid].reason == "http_400"
    assert {r.http_status for r in results.values()} == {400}
    listed = qido_instance_uids(orthanc_running.dicomweb_root)
    assert {good1.SOPInstanceUID, good2.SOPInstanceUID} <= listed
    assert bad.SOPInstanceUID not in listed


def test_orthanc_stopped_mid_run_then_only_failed_completes(orthanc: OrthancServer, tmp_path: Any,
                                                            no_auth_env: None, capsys: pytest.CaptureFixture) -> None:
    orthanc.start()
    out = tmp_path / "out"
    out.mkdir()
    made = [make_instance(n) for n in ["CT_small.dcm", "MR_small.dcm", "MR_small_jp2klossless.dcm",
                                       "MR_small_RLE.dcm", "CT_small.dcm", "MR_small.dcm"]]
    for ds, data in made:
        (out / f"{ds.SOPInstanceUID}.dcm").write_bytes(data)
    items = [StowItem(ds.SOPInstanceUID, str(out / f"{ds.SOPInstanceUID}.dcm")) for ds, _ in made]

    results = []
    try:
        with StowClient(fast(orthanc.dicomweb_root, batch_count=2, max_retries=1)) as client:
            for r in client.send(items):
                results.append(r)
                if len(results) == 2:
                    orthanc.stop()  # mid-run: the next batches meet a dead server
    finally:
        stopped = not orthanc.running
    assert stopped
    assert [r.status for r in results] == ["sent", "sent", "failed", "failed", "failed", "failed"]
    assert {r.reason for r in results[2:]} == {"connection_error"}
    assert all(r.attempts == 2 for r in results[2:])

    # The ledger a run would write; some rows name their file, others rely on --from.
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    pq.write_table(pa.table({
        "sop_instance_uid": [r.sop_instance_uid for r in results],
        "output_uri": [str(out / f"{r.sop_instance_uid}.dcm") if i % 2 else None for i, r in enumerate(results)],
        "stow_status": [r.status for r in results],
        "stow_reason": [r.reason for r in results],
    }), str(ledger / "part-0.parquet"))

    orthanc.start()
    parser = argparse.ArgumentParser()
    add_stow_parser(parser.add_subparsers(dest="command"))
    ledger_out = tmp_path / "stow-ledger"
    args = parser.parse_args(["stow", "--url", orthanc.dicomweb_root, "--only-failed", str(ledger),
                              "--from", str(out), "--batch-count", "3", "--ledger-out", str(ledger_out)])
    assert args.func is run_stow
    code = args.func(args)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "sent: 4" in printed and "failed: 0" in printed

    resent = pq.read_table(str(ledger_out)).to_pylist()
    assert sorted(r["sop_instance_uid"] for r in resent) == sorted(r.sop_instance_uid for r in results[2:])
    assert {r["stow_status"] for r in resent} == {"sent"}
    assert {ds.SOPInstanceUID for ds, _ in made} <= qido_instance_uids(orthanc.dicomweb_root)


def test_stow_command_from_folder_reports_failures(orthanc_running: OrthancServer, tmp_path: Any,
                                                   no_auth_env: None, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "dcm"
    folder.mkdir()
    good, data = make_instance("CT_small.dcm")
    bad, bad_data = make_instance("MR_small.dcm", drop="SeriesInstanceUID")
    (folder / "a.dcm").write_bytes(data)
    (folder / "b.dcm").write_bytes(bad_data)
    (folder / "notes.txt").write_text("ignored")
    parser = argparse.ArgumentParser()
    add_stow_parser(parser.add_subparsers(dest="command"))
    ledger_out = tmp_path / "results.parquet"
    args = parser.parse_args(["stow", "--from", str(folder), "--url", orthanc_running.dicomweb_root,
                              "--ledger-out", str(ledger_out)])
    assert run_stow(args) == 1
    printed = capsys.readouterr().out
    assert "sent: 1" in printed
    assert "failed: 1 (failure_c000_cannot_understand=1)" in printed
    rows = {r["sop_instance_uid"]: r for r in pq.read_table(str(ledger_out)).to_pylist()}
    assert rows[good.SOPInstanceUID]["stow_status"] == "sent"
    assert rows[good.SOPInstanceUID]["source_uri"] == str(folder / "a.dcm")
    assert rows[bad.SOPInstanceUID]["stow_reason"] == "failure_c000_cannot_understand"
    assert rows[bad.SOPInstanceUID]["finished_at"] is not None


def test_stow_command_from_s3(orthanc_running: OrthancServer, s3: Any, no_auth_env: None,
                              capsys: pytest.CaptureFixture) -> None:
    s3.create_bucket(Bucket="stow-src")
    made = [make_instance("CT_small.dcm"), make_instance("MR_small_jp2klossless.dcm")]
    for ds, data in made:
        s3.put_object(Bucket="stow-src", Key=f"run1/{ds.SOPInstanceUID}.dcm", Body=data)
    parser = argparse.ArgumentParser()
    add_stow_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["stow", "--from", "s3://stow-src/run1/", "--url", orthanc_running.dicomweb_root,
                              "--ledger-out", "s3://stow-src/stow-ledger/"])
    assert run_stow(args) == 0, capsys.readouterr()
    assert {ds.SOPInstanceUID for ds, _ in made} <= qido_instance_uids(orthanc_running.dicomweb_root)
    [obj] = s3.list_objects_v2(Bucket="stow-src", Prefix="stow-ledger/")["Contents"]
    assert obj["Key"].endswith(".parquet")
    body = s3.get_object(Bucket="stow-src", Key=obj["Key"])["Body"].read()
    rows = pq.read_table(io.BytesIO(body)).to_pylist()
    assert {(r["source_uri"], r["stow_status"]) for r in rows} == {
        (f"s3://stow-src/run1/{ds.SOPInstanceUID}.dcm", "sent") for ds, _ in made}
    assert read_failed_from_ledger("s3://stow-src/stow-ledger/") == []


# --------------------------------------------------------------------------- local HTTP server


def test_bearer_token_sent_and_never_shown(fake_stow: FakeStow, monkeypatch: pytest.MonkeyPatch,
                                           no_auth_env: None, caplog: pytest.LogCaptureFixture) -> None:
    secret = "tok-SECRET-7f3a9c"
    monkeypatch.setenv("DICOMWEB_TOKEN", secret)
    caplog.set_level(logging.DEBUG)
    ds, data = make_instance("MR_small.dcm")
    settings = StowSettings(fake_stow.url)
    client = StowClient(settings)
    results = list(client.send([(ds.SOPInstanceUID, data)]))
    client.close()
    assert [r.status for r in results] == ["sent"]
    headers, _ = fake_stow.requests[0]
    assert headers["authorization"] == f"Bearer {secret}"
    assert headers["accept"] == "application/dicom+json"
    assert re.fullmatch(r'multipart/related; type="application/dicom"; boundary=\S+', headers["content-type"])
    assert "transfer-encoding" not in headers and int(headers["content-length"]) > len(data)
    for text in (repr(client), str(client), repr(settings), repr(StowAuth.from_env()), repr(client._session.auth),
                 repr(results), caplog.text):
        assert secret not in text


def test_basic_auth_sent_and_never_shown(fake_stow: FakeStow, monkeypatch: pytest.MonkeyPatch,
                                         no_auth_env: None) -> None:
    monkeypatch.setenv("DICOMWEB_USER", "stow-user")
    monkeypatch.setenv("DICOMWEB_PASSWORD", "pw-SECRET-42")
    ds, data = make_instance("CT_small.dcm")
    with StowClient(StowSettings(fake_stow.url)) as client:
        assert [r.status for r in client.send([(ds.SOPInstanceUID, data)])] == ["sent"]
        shown = repr(client) + str(client) + repr(client._session.auth) + repr(client.settings)
    headers, _ = fake_stow.requests[0]
    assert headers["authorization"] == "Basic " + base64.b64encode(b"stow-user:pw-SECRET-42").decode()
    assert "pw-SECRET-42" not in shown


def test_auth_read_on_the_driver_pickles_and_is_used_where_the_env_has_none(
        fake_stow: FakeStow, monkeypatch: pytest.MonkeyPatch, no_auth_env: None) -> None:
    secret = "tok-SECRET-shipped-91"
    monkeypatch.setenv("DICOMWEB_TOKEN", secret)
    blob = pickle.dumps(StowAuth.from_env())  # the driver, which has the token
    monkeypatch.delenv("DICOMWEB_TOKEN")  # an executor, which does not
    shipped = pickle.loads(blob)
    assert (shipped.kind, shipped.secret) == ("bearer", secret)
    assert secret not in repr(shipped) and secret not in str(shipped) and secret not in f"{shipped}"
    ds, data = make_instance("MR_small.dcm")
    with StowClient(StowSettings(fake_stow.url), auth=shipped) as client:
        assert [r.status for r in client.send([(ds.SOPInstanceUID, data)])] == ["sent"]
        assert secret not in repr(client)
    with StowClient(StowSettings(fake_stow.url)) as client:  # without it, the empty env means no auth
        assert [r.status for r in client.send([(ds.SOPInstanceUID, data)])] == ["sent"]
    assert fake_stow.requests[0][0]["authorization"] == f"Bearer {secret}"
    assert "authorization" not in fake_stow.requests[1][0]
    basic = pickle.loads(pickle.dumps(StowAuth("basic", "stow-user", "pw-SECRET-43")))
    assert "pw-SECRET-43" not in repr(basic) + str(basic)
    with StowClient(StowSettings(fake_stow.url), auth=basic) as client:
        assert [r.status for r in client.send([(ds.SOPInstanceUID, data)])] == ["sent"]
    assert fake_stow.requests[2][0]["authorization"] == "Basic " + base64.b64encode(b"stow-user:pw-SECRET-43").decode()


@pytest.mark.parametrize("args", [("token",), ("bearer",), ("bearer", None, ""), ("basic", None, "pw"),
                                  ("basic", "user", None)])
def test_incomplete_explicit_auth_is_refused(args: tuple) -> None:
    with pytest.raises(ConfigError) as err:
        StowAuth(*args)
    assert err.value.reason == "bad_auth" and "pw" not in str(err.value)


def test_auth_misconfiguration_is_a_config_error(monkeypatch: pytest.MonkeyPatch, no_auth_env: None) -> None:
    monkeypatch.setenv("DICOMWEB_USER", "only-user")
    with pytest.raises(ConfigError) as err:
        StowClient(StowSettings("http://127.0.0.1:9/dicom-web"))
    assert err.value.reason == "incomplete_auth"
    with pytest.raises(ConfigError) as err:
        StowSettings("https://user:hunter2@pacs.example/dicom-web")
    assert err.value.reason == "credentials_in_url" and "hunter2" not in str(err.value)


def test_4xx_is_not_retried(fake_stow: FakeStow, no_auth_env: None) -> None:
    fake_stow.plan = [(400, {}, b"")]
    made = [make_instance("CT_small.dcm"), make_instance("MR_small.dcm")]
    with StowClient(fast(fake_stow.url, max_retries=3)) as client:
        results = list(client.send([(ds.SOPInstanceUID, d) for ds, d in made]))
    assert len(fake_stow.requests) == 1
    assert [(r.status, r.reason, r.attempts) for r in results] == [("failed", "http_400", 1)] * 2


def test_503_then_200_is_retried(fake_stow: FakeStow, no_auth_env: None) -> None:
    fake_stow.plan = [(503, {"Retry-After": "0"}, b"busy")]
    ds, data = make_instance("MR_small.dcm")
    with StowClient(fast(fake_stow.url)) as client:
        results = list(client.send([(ds.SOPInstanceUID, data)]))
    assert len(fake_stow.requests) == 2
    assert fake_stow.parts(0) == fake_stow.parts(1) == [data]  # the streamed body is rebuilt for the retry
    assert [(r.status, r.attempts, r.http_status) for r in results] == [("sent", 2, 200)]


def test_429_honours_retry_after_and_5xx_gives_up(fake_stow: FakeStow, no_auth_env: None) -> None:
    ds, data = make_instance("MR_small.dcm")
    fake_stow.plan = [(429, {"Retry-After": "7"}, b""), (502, {}, b""), (503, {}, b"")]
    with StowClient(fast(fake_stow.url, max_retries=2)) as client:
        waits: list[float] = []
        client._sleep = waits.append  # record instead of sleeping 7 s
        results = list(client.send([(ds.SOPInstanceUID, data)]))
    assert len(fake_stow.requests) == 3
    assert waits[0] == 7.0 and 0 < waits[1] <= 0.05
    assert [(r.status, r.reason, r.attempts) for r in results] == [("failed", "http_503", 3)]


def test_batches_by_bytes_and_streams_files(fake_stow: FakeStow, tmp_path: Any, no_auth_env: None) -> None:
    made = [make_instance(n) for n in ["CT_small.dcm", "MR_small.dcm", "MR_small.dcm", "CT_small.dcm"]]
    sizes = [len(d) for _, d in made]
    limit = sizes[1] + sizes[2] + 10  # fits the two MR instances together, a CT only alone
    paths = []
    for ds, d in made:
        p = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        p.write_bytes(d)
        paths.append(str(p))
    with StowClient(fast(fake_stow.url, batch_bytes=limit, batch_count=10)) as client:
        results = list(client.send([(None, p, p) for p in paths]))
    assert [r.status for r in results] == ["sent"] * 4
    assert [r.key for r in results] == paths
    assert [fake_stow.parts(i) for i in range(len(fake_stow.requests))] == [
        [made[0][1]], [made[1][1], made[2][1]], [made[3][1]]]


def test_partial_response_and_unreadable_items(fake_stow: FakeStow, tmp_path: Any, no_auth_env: None) -> None:
    a, da = make_instance("CT_small.dcm")
    b, db = make_instance("MR_small.dcm")
    c, dc = make_instance("MR_small.dcm")
    body = json.dumps(referenced_json([a.SOPInstanceUID], failed={b.SOPInstanceUID: 0xA700})).encode()
    fake_stow.plan = [(202, {"Content-Type": "application/dicom+json"}, body)]
    missing = str(tmp_path / "gone.dcm")
    items = [(a.SOPInstanceUID, da), (b.SOPInstanceUID, db), (c.SOPInstanceUID, dc),
             ("1.2.3.4", missing), (None, b"garbage, no UID to read")]
    with StowClient(fast(fake_stow.url)) as client:
        results = {r.key: r for r in client.send(items)}
    assert len(fake_stow.requests) == 1 and len(fake_stow.parts(0)) == 3
    assert (results[a.SOPInstanceUID].status, results[a.SOPInstanceUID].reason) == ("sent", None)
    assert results[b.SOPInstanceUID].reason == "failure_a700_out_of_resources"
    assert results[c.SOPInstanceUID].reason == "not_in_response"
    assert (results["1.2.3.4"].status, results["1.2.3.4"].reason) == ("failed", "not_found")
    assert results[None].reason == "unreadable_dicom"


def test_xml_response_is_understood(fake_stow: FakeStow, no_auth_env: None) -> None:
    a, da = make_instance("CT_small.dcm")
    b, db = make_instance("MR_small.dcm")
    xml = (f'<?xml version="1.0"?><NativeDicomModel>'
           f'<DicomAttribute tag="00081199" vr="SQ"><Item number="1">'
           f'<DicomAttribute tag="00081155" vr="UI"><Value number="1">{a.SOPInstanceUID}</Value></DicomAttribute>'
           f'</Item></DicomAttribute>'
           f'<DicomAttribute tag="00081198" vr="SQ"><Item number="1">'
           f'<DicomAttribute tag="00081155" vr="UI"><Value number="1">{b.SOPInstanceUID}</Value></DicomAttribute>'
           f'<DicomAttribute tag="00081197" vr="US"><Value number="1">290</Value></DicomAttribute>'
           f'</Item></DicomAttribute></NativeDicomModel>').encode()
    fake_stow.plan = [(409, {"Content-Type": "application/dicom+xml"}, xml)]
    with StowClient(fast(fake_stow.url)) as client:
        results = {r.sop_instance_uid: r for r in client.send([(a.SOPInstanceUID, da), (b.SOPInstanceUID, db)])}
    assert results[a.SOPInstanceUID].status == "sent"
    assert results[b.SOPInstanceUID].reason == "failure_0122_sop_class_not_supported"


def test_connection_refused_fails_fast_with_reason(no_auth_env: None, tmp_path: Any) -> None:
    from helpers import free_port

    ds, data = make_instance("MR_small.dcm")
    with StowClient(fast(f"http://127.0.0.1:{free_port()}/dicom-web", max_retries=1)) as client:
        [r] = list(client.send([(ds.SOPInstanceUID, data)]))
    assert (r.status, r.reason, r.attempts) == ("failed", "connection_error", 2)


def test_batcher_sends_as_soon_as_a_batch_is_full(fake_stow: FakeStow, no_auth_env: None) -> None:
    made = [make_instance("MR_small.dcm") for _ in range(3)]
    with StowClient(fast(fake_stow.url, batch_count=2)) as client:
        batcher = client.batcher()
        assert batcher.add((made[0][0].SOPInstanceUID, made[0][1])) == []
        assert len(fake_stow.requests) == 0
        first = batcher.add((made[1][0].SOPInstanceUID, made[1][1]))
        assert [r.status for r in first] == ["sent", "sent"] and len(fake_stow.requests) == 1
        assert batcher.add((made[2][0].SOPInstanceUID, made[2][1])) == []
        rest = batcher.flush()
    assert [r.sop_instance_uid for r in rest] == [made[2][0].SOPInstanceUID]
    assert len(fake_stow.requests) == 2 and batcher.flush() == []


def test_newest_ledger_row_wins(tmp_path: Any) -> None:
    uid_a, uid_b = generate_uid(), generate_uid()
    t0, t1 = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    pq.write_table(pa.table({
        "sop_instance_uid": [uid_a, uid_a, uid_b, None],
        "output_uri": ["s3://b/a.dcm", "s3://b/a.dcm", None, "s3://b/x.dcm"],
        "stow_status": ["failed", "sent", "failed", "failed"],
        "stow_reason": ["http_503", None, "timeout", "x"],
        "finished_at": [t0, t1, t0, t0],
    }), str(ledger / "part-0.parquet"))
    items = read_failed_from_ledger(str(ledger), "s3://b/out")
    assert [(i.sop_instance_uid, i.payload) for i in items] == [(uid_b, f"s3://b/out/{uid_b}.dcm")]


def test_settings_pickle_for_spark() -> None:
    s = StowSettings("https://pacs.example/dicom-web", batch_count=7, timeout=(3, 30))
    assert pickle.loads(pickle.dumps(s)) == s


def test_stow_settings_validation() -> None:
    with pytest.raises(ConfigError):
        StowSettings("ftp://pacs/dicom-web")
    with pytest.raises(ConfigError):
        StowSettings("http://pacs/dicom-web", batch_count=0)
    s = StowSettings("http://pacs/dicom-web/", timeout=(1, 2))
    assert s.studies_url == "http://pacs/dicom-web/studies"
    assert StowSettings("http://pacs/dicom-web/studies").studies_url == "http://pacs/dicom-web/studies"
    assert s.timeout == (1.0, 2.0)


def test_insecure_flag_warns(no_auth_env: None, tmp_path: Any, capsys: pytest.CaptureFixture) -> None:
    from helpers import free_port

    parser = argparse.ArgumentParser()
    add_stow_parser(parser.add_subparsers(dest="command"))
    _, data = make_instance("MR_small.dcm")
    (tmp_path / "x.dcm").write_bytes(data)
    args = parser.parse_args(["stow", "--from", str(tmp_path), "--url", f"https://127.0.0.1:{free_port()}/dw",
                              "--insecure", "--max-retries", "0", "--timeout", "2,5"])
    assert run_stow(args) == 1
    captured = capsys.readouterr()
    assert "TLS certificate verification is disabled" in captured.err
    assert "failed: 1 (connection_error=1)" in captured.out
    assert os.path.exists(tmp_path / "x.dcm")
