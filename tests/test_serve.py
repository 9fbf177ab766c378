"""``serve``: the DICOMweb service, against dicomweb-client (a client this project did not write) and plain HTTP.

The store is filled through the intake (the code ``listen`` runs), then ``dicom-reassembly serve`` runs as a
real uvicorn process; RS256 and S3 cases use the same app in process through Starlette's TestClient.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from helpers import dcmftest_ok, free_port
from network_helpers import CLI, make_instance, part10_bytes
from PIL import Image
from pydicom.uid import generate_uid

from dicom_reassembly.dicomweb.auth import AUDIENCE, AuthSettings, jwks_for_public_key, mint_token
from dicom_reassembly.intake.receiver import Intake, IntakeSettings

SECRET = "test-secret-0123456789-abcdefghijklmnop"
J2K = "1.2.840.10008.1.2.4.91"


def fill_store(root: str, datasets: list[pydicom.Dataset], out: str | None = None) -> dict[str, str]:
    """Receive ``datasets`` through the intake; returns the folders (out, ledger, catalog)."""
    paths = {"out": out or os.path.join(root, "out"), "ledger": os.path.join(root, "ledger"),
             "catalog": os.path.join(root, "ledger_catalog")}
    intake = Intake(IntakeSettings(paths["out"], paths["ledger"], paths["catalog"], "fill"), os.path.join(root, "spool"))
    intake.start()
    try:
        for ds in datasets:
            assert intake.receive([part10_bytes(ds)], "test").ok
    finally:
        intake.stop()
    return paths


class Store:
    """Two patients: A has a CT series of two and an MR series; B has a JPEG 2000 study."""

    def __init__(self, root: str) -> None:
        study_a, series_ct = generate_uid(), generate_uid()
        self.ct = [make_instance("CT_small.dcm", "PAT-A", study_a, series_ct, InstanceNumber=n) for n in (1, 2)]
        self.mr = make_instance("MR_small.dcm", "PAT-A", study_a)
        self.j2k = make_instance("JPEG2000.dcm", "PAT-B")
        self.paths = fill_store(root, [*self.ct, self.mr, self.j2k])


def url_of(base: str, ds: pydicom.Dataset, suffix: str = "") -> str:
    return f"{base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}{suffix}"


def bearer(*patients: str, ttl: int = 600) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(patients, ttl, SECRET)}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Store, str]]:
    """(base URL, the store, the serve work folder) with ``dicom-reassembly serve`` running on it."""
    root = str(tmp_path_factory.mktemp("serve"))
    store = Store(root)
    port = free_port()
    log_path = os.path.join(root, "serve.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*CLI, "serve", "--port", str(port), "--out", store.paths["out"], "--ledger",
                                 store.paths["ledger"], "--spool", os.path.join(root, "serve-spool")],
                                stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                env={**os.environ, "DICOM_REASSEMBLY_JWT_SECRET": SECRET})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{base}/studies", timeout=2).status_code == 401:
                break
        except requests.exceptions.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            with open(log_path) as f:
                pytest.fail(f"serve did not start:\n{f.read()}")
        time.sleep(0.2)
    yield base, store, root
    proc.terminate()
    proc.wait(timeout=30)


def client(base: str, *patients: str) -> DICOMwebClient:
    return DICOMwebClient(base, headers=bearer(*patients))


# --------------------------------------------------------------------------- dicomweb-client


def test_dicomweb_client_searches_within_its_patients(served: tuple[str, Store, str]) -> None:
    base, store, _ = served
    a = client(base, "PAT-A")
    studies = a.search_for_studies()
    assert [s["0020000D"]["Value"][0] for s in studies] == [store.mr.StudyInstanceUID]
    assert studies[0]["00201208"]["Value"] == [3] and sorted(studies[0]["00080061"]["Value"]) == ["CT", "MR"]
    series = a.search_for_series(store.mr.StudyInstanceUID)
    assert {s["0020000E"]["Value"][0] for s in series} == {store.ct[0].SeriesInstanceUID, store.mr.SeriesInstanceUID}
    instances = a.search_for_instances(store.mr.StudyInstanceUID, store.ct[0].SeriesInstanceUID)
    assert [i["00080018"]["Value"][0] for i in instances] == [str(ds.SOPInstanceUID) for ds in store.ct]
    assert a.search_for_studies(search_filters={"ModalitiesInStudy": "MR"}) == studies
    assert a.search_for_studies(search_filters={"StudyDate": "20300101-"}) == []
    assert a.search_for_studies(search_filters={"PatientName": "Compressed*"})  # a wildcard on PN
    assert len(a.search_for_instances(store.mr.StudyInstanceUID, limit=1, offset=1)) == 1
    b = client(base, "PAT-B")
    assert [s["0020000D"]["Value"][0] for s in b.search_for_studies()] == [store.j2k.StudyInstanceUID]


def test_dicomweb_client_retrieves_objects_and_metadata(served: tuple[str, Store, str]) -> None:
    base, store, _ = served
    a = client(base, "PAT-A")
    got = a.retrieve_instance(store.ct[0].StudyInstanceUID, store.ct[0].SeriesInstanceUID, store.ct[0].SOPInstanceUID)
    assert got.SOPInstanceUID == store.ct[0].SOPInstanceUID
    assert np.array_equal(got.pixel_array, store.ct[0].pixel_array)
    b = client(base, "PAT-B")
    j2k = b.retrieve_instance(store.j2k.StudyInstanceUID, store.j2k.SeriesInstanceUID, store.j2k.SOPInstanceUID,
                              media_types=(("application/dicom", J2K),))
    assert j2k.file_meta.TransferSyntaxUID == J2K and np.array_equal(j2k.pixel_array, store.j2k.pixel_array)
    meta = a.retrieve_instance_metadata(store.mr.StudyInstanceUID, store.mr.SeriesInstanceUID, store.mr.SOPInstanceUID)
    assert meta["00100020"]["Value"] == ["PAT-A"] and "7FE00010" not in meta
    series = a.retrieve_series(store.ct[0].StudyInstanceUID, store.ct[0].SeriesInstanceUID)
    assert sorted(ds.SOPInstanceUID for ds in series) == sorted(ds.SOPInstanceUID for ds in store.ct)


def test_dicomweb_client_stores_and_finds_it(served: tuple[str, Store, str]) -> None:
    base, store, root = served
    a = client(base, "PAT-A")
    new = make_instance("CT_small.dcm", "PAT-A", store.mr.StudyInstanceUID)
    answer = a.store_instances([new])
    assert answer.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == new.SOPInstanceUID
    assert "FailedSOPSequence" not in answer
    found = a.search_for_instances(store.mr.StudyInstanceUID, new.SeriesInstanceUID)
    assert [i["00080018"]["Value"][0] for i in found] == [new.SOPInstanceUID]
    got = a.retrieve_instance(new.StudyInstanceUID, new.SeriesInstanceUID, new.SOPInstanceUID)
    assert np.array_equal(got.pixel_array, new.pixel_array)
    written = os.path.join(store.paths["out"], f"{new.SOPInstanceUID}.dcm")
    assert dcmftest_ok(written)
    rows = pads.dataset(store.paths["ledger"], partitioning="hive").to_table().to_pylist()
    assert [r["status"] for r in rows if r["sop_instance_uid"] == new.SOPInstanceUID] == ["received"]


# --------------------------------------------------------------------------- plain HTTP: codes and isolation


def test_error_codes_are_one_line_json(served: tuple[str, Store, str]) -> None:
    base, store, _ = served
    ct = store.ct[0]

    def check(r: requests.Response, code: int) -> None:
        assert r.status_code == code, r.text
        body = r.json()
        assert set(body) == {"error"} and "\n" not in body["error"] and "Traceback" not in body["error"]

    check(requests.get(f"{base}/studies", timeout=10), 401)
    check(requests.get(f"{base}/studies", headers={"Authorization": "Bearer not.a.jwt"}, timeout=10), 401)
    check(requests.get(f"{base}/studies", headers=bearer("PAT-A", ttl=-120), timeout=10), 401)  # expired
    wrong_key = {"Authorization": f"Bearer {mint_token(['PAT-A'], 600, 'another-secret-0123456789-abcdefghij')}"}
    check(requests.get(f"{base}/studies", headers=wrong_key, timeout=10), 401)
    a, b = bearer("PAT-A"), bearer("PAT-B")
    check(requests.get(url_of(base, ct, "/metadata"), headers=b, timeout=10), 403)
    check(requests.get(url_of(base, ct), headers=b, timeout=10), 403)
    check(requests.get(url_of(base, ct, "/rendered"), headers=b, timeout=10), 403)
    check(requests.get(f"{base}/studies/{ct.StudyInstanceUID}/series", headers=b, timeout=10), 403)
    check(requests.get(f"{base}/studies", params={"PatientID": "PAT-A"}, headers=b, timeout=10), 403)
    check(requests.get(f"{base}/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/1.2.3",
                       headers=a, timeout=10), 404)
    check(requests.get(f"{base}/studies/1.2.3/series", headers=a, timeout=10), 404)
    check(requests.get(url_of(base, ct, "/tags/0010001G"), headers=a, timeout=10), 422)
    check(requests.get(url_of(base, ct, "/tags/00191099"), headers=a, timeout=10), 404)
    check(requests.get(f"{base}/studies", params={"StudyDate": "2020-13"}, headers=a, timeout=10), 422)
    check(requests.get(f"{base}/studies", params={"limit": "x"}, headers=a, timeout=10), 422)
    check(requests.get(url_of(base, ct, "/rendered"), params={"window": "40"}, headers=a, timeout=10), 422)
    check(requests.get(url_of(base, ct), headers={**a, "Accept": f'multipart/related; type="application/dicom"; '
                                                               f"transfer-syntax={J2K}"}, timeout=10), 406)
    stow_type = 'multipart/related; type="application/dicom"; boundary=xyz'
    check(requests.post(f"{base}/studies", data=b"--xyz\r\nContent-Type: application/dicom\r\n\r\nDICM",
                        headers={**a, "Content-Type": stow_type}, timeout=10), 422)  # no closing boundary
    check(requests.post(f"{base}/studies", data=b"{}", headers={**a, "Content-Type": "application/json"},
                        timeout=10), 415)


def test_single_tag_and_isolation_of_searches(served: tuple[str, Store, str]) -> None:
    base, store, _ = served
    a, b = bearer("PAT-A"), bearer("PAT-B")
    r = requests.get(url_of(base, store.mr, "/tags/00100020"), headers=a, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/dicom+json")
    assert r.json() == {"00100020": {"vr": "LO", "Value": ["PAT-A"]}}
    r = requests.get(url_of(base, store.mr, "/tags/00280010"), headers=a, timeout=10)
    assert r.json() == {"00280010": {"vr": "US", "Value": [store.mr.Rows]}}
    seen_b = requests.get(f"{base}/instances", headers=b, timeout=10).json()
    assert {i["00100020"]["Value"][0] for i in seen_b} == {"PAT-B"}
    everyone = requests.get(f"{base}/instances", headers=bearer("*"), timeout=10).json()
    assert {i["00100020"]["Value"][0] for i in everyone} >= {"PAT-A", "PAT-B"}
    one = requests.get(url_of(base, store.ct[1]), headers={**a, "Accept": "application/dicom"}, timeout=10)
    assert one.headers["content-type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(one.content)).SOPInstanceUID == store.ct[1].SOPInstanceUID


def test_stow_of_another_patients_instance_is_403(served: tuple[str, Store, str]) -> None:
    base, store, _ = served
    other = make_instance("CT_small.dcm", "PAT-B")
    body = b"--b1\r\nContent-Type: application/dicom\r\n\r\n" + part10_bytes(other) + b"\r\n--b1--\r\n"
    r = requests.post(f"{base}/studies", data=body, timeout=30, headers={
        **bearer("PAT-A"), "Content-Type": 'multipart/related; type="application/dicom"; boundary=b1'})
    assert r.status_code == 403, r.text
    assert not os.path.exists(os.path.join(store.paths["out"], f"{other.SOPInstanceUID}.dcm"))
    bad = make_instance("CT_small.dcm", "PAT-A", BitsAllocated=12)
    body = b"--b2\r\nContent-Type: application/dicom\r\n\r\n" + part10_bytes(bad) + b"\r\n--b2--\r\n"
    r = requests.post(f"{base}/studies", data=body, timeout=30, headers={
        **bearer("PAT-A"), "Content-Type": 'multipart/related; type="application/dicom"; boundary=b2'})
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]


# --------------------------------------------------------------------------- rendered


def test_rendered_png_decodes_at_rows_by_columns(served: tuple[str, Store, str]) -> None:
    base, store, _ = served
    a = client(base, "PAT-A")
    for ds in (store.ct[0], store.mr):
        png = a.retrieve_instance_rendered(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                           media_types=("image/png",))
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size == (ds.Columns, ds.Rows)
    default = np.asarray(Image.open(io.BytesIO(requests.get(url_of(base, store.ct[0], "/rendered"),
                                                            headers=bearer("PAT-A"), timeout=10).content)))
    narrow = requests.get(url_of(base, store.ct[0], "/rendered"), params={"window": "40,80,linear"},
                          headers=bearer("PAT-A"), timeout=10)
    windowed = np.asarray(Image.open(io.BytesIO(narrow.content)))
    assert windowed.shape == default.shape and not np.array_equal(windowed, default)
    # Outside a 40/80 window every pixel is black or white: check against the modality values.
    hu = store.ct[0].pixel_array * float(store.ct[0].RescaleSlope) + float(store.ct[0].RescaleIntercept)
    assert np.all(windowed[hu <= 0] == 0) and np.all(windowed[hu >= 80] == 255)
    b = client(base, "PAT-B")
    png = b.retrieve_instance_rendered(store.j2k.StudyInstanceUID, store.j2k.SeriesInstanceUID,
                                       store.j2k.SOPInstanceUID, media_types=("image/png",))
    assert Image.open(io.BytesIO(png)).size == (store.j2k.Columns, store.j2k.Rows)


# --------------------------------------------------------------------------- RS256, and objects on S3


def test_rs256_tokens_from_a_jwks_file(tmp_path: Any) -> None:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from fastapi.testclient import TestClient

    from dicom_reassembly.dicomweb.app import create_app
    from dicom_reassembly.dicomweb.query import CatalogIndex

    ds = make_instance("MR_small.dcm", "PAT-R")
    paths = fill_store(str(tmp_path), [ds])
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(jwks_for_public_key(key.public_key(), "k1"))
    app = create_app(CatalogIndex(paths["catalog"]), AuthSettings.from_env(str(jwks), environ={}))

    def token(kid: str, signer: Any, patients: list[str]) -> dict[str, str]:
        claims = {"aud": AUDIENCE, "exp": int(time.time()) + 60, "patient_ids": patients}
        return {"Authorization": f"Bearer {jwt.encode(claims, signer, algorithm='RS256', headers={'kid': kid})}"}

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with TestClient(app) as http:
        assert http.get("/studies", headers=token("k1", key, ["PAT-R"])).json()[0]["00100020"]["Value"] == ["PAT-R"]
        assert http.get("/studies", headers=token("k1", other, ["PAT-R"])).status_code == 401  # wrong key
        assert http.get("/studies", headers=token("k9", key, ["PAT-R"])).status_code == 401  # unknown kid
        hs = {"Authorization": f"Bearer {mint_token(['PAT-R'], 60, SECRET)}"}
        assert http.get("/studies", headers=hs).status_code == 401  # HS256 is not accepted by an RS256 server
        assert http.post("/studies", headers=token("k1", key, ["PAT-R"])).status_code == 405  # read-only


def test_objects_stream_from_s3(tmp_path: Any, s3: Any) -> None:
    from fastapi.testclient import TestClient

    from dicom_reassembly.dicomweb.app import create_app
    from dicom_reassembly.dicomweb.query import CatalogIndex

    s3.create_bucket(Bucket="served")
    ds = make_instance("CT_small.dcm", "PAT-S")
    paths = fill_store(str(tmp_path), [ds], out="s3://served/objects")
    rows = pads.dataset(paths["catalog"], partitioning="hive").to_table().to_pylist()
    assert rows[0]["output_uri"] == f"s3://served/objects/{ds.SOPInstanceUID}.dcm"
    app = create_app(CatalogIndex(paths["catalog"]), AuthSettings(secret=SECRET))
    with TestClient(app) as http:
        auth = bearer("PAT-S")
        one = http.get(url_of("", ds), headers={**auth, "Accept": "application/dicom"})
        assert one.status_code == 200
        assert np.array_equal(pydicom.dcmread(io.BytesIO(one.content)).pixel_array, ds.pixel_array)
        meta = http.get(url_of("", ds, "/metadata"), headers=auth).json()
        assert meta[0]["00100020"]["Value"] == ["PAT-S"]
        png = http.get(url_of("", ds, "/rendered"), headers=auth)
        assert Image.open(io.BytesIO(png.content)).size == (ds.Columns, ds.Rows)
    assert json.loads(json.dumps(meta))  # plain JSON, nothing pydicom-specific


def test_token_command_mints_what_serve_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    from dicom_reassembly.dicomweb.auth import verify_token

    env = {**os.environ, "DICOM_REASSEMBLY_JWT_SECRET": SECRET}
    res = subprocess.run([*CLI, "token", "--patient", "P1", "--patient", "P2", "--ttl", "15m"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    principal = verify_token(res.stdout.strip(), AuthSettings(secret=SECRET))
    assert principal.patient_ids == frozenset({"P1", "P2"})
    for args, reason in ((["--patient", "P1", "--ttl", "soon"], "bad_ttl"), ([], "no_patient")):
        bad = subprocess.run([*CLI, "token", *args], capture_output=True, text=True, timeout=60, env=env)
        assert bad.returncode == 2 and reason in bad.stderr and bad.stderr.strip().count("\n") == 0
    no_secret = {k: v for k, v in env.items() if k != "DICOM_REASSEMBLY_JWT_SECRET"}
    for command in (["token", "--patient", "P1"], ["serve", "--port", "0"]):
        bad = subprocess.run([*CLI, *command], capture_output=True, text=True, timeout=60, env=no_secret)
        assert bad.returncode == 2 and "DICOM_REASSEMBLY_JWT_SECRET" in bad.stderr, bad.stderr
