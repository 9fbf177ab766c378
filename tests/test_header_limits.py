"""Bounded resources for headers (issue 16): too large and too deep are invalid_header rows and one-line
CLI errors, never RecursionError or MemoryError, and a header member above the limit is never read into memory.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tracemalloc
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import dcmftest_ok

from dicom_reassembly.config import Config, load_config
from dicom_reassembly.dicom.header_rules import MAX_HEADER_BYTES
from dicom_reassembly.io import tar_access, tar_sources
from dicom_reassembly.manifest import index, listing
from dicom_reassembly.run_id import new_run_id

CLI = os.path.join(os.path.dirname(sys.executable), "dicom-reassembly")
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
ROOT = "1.2.826.0.1.3680043.10.1234."
GOOD, DEEP, LARGE, BITS12, WARNS, NUL_STUDY = (ROOT + s for s in ("1", "2", "3", "4", "5", "6"))
CHUNK_LIMIT = 1 << 20  # StreamSource steps over data in reads of at most this


def _header(uid: str, **extra: Any) -> dict[str, Any]:
    h = {"00080016": {"vr": "UI", "Value": [SC_IMAGE]}, "00080018": {"vr": "UI", "Value": [uid]},
         "00280002": {"vr": "US", "Value": [1]}, "00280004": {"vr": "CS", "Value": ["MONOCHROME2"]},
         "00280010": {"vr": "US", "Value": [4]}, "00280011": {"vr": "US", "Value": [4]},
         "00280100": {"vr": "US", "Value": [8]}, "00280101": {"vr": "US", "Value": [8]},
         "00280102": {"vr": "US", "Value": [7]}, "00280103": {"vr": "US", "Value": [0]}}
    h.update(extra)
    return h


def _deep(uid: str, levels: int = 1500) -> bytes:  # 4500 JSON levels, 60 KB
    start = json.dumps(_header(uid))[:-1]
    return (start + ', "00081140": ' + '{"vr": "SQ", "Value": [{"00081140": ' * levels + "{}" + "}]}" * levels
            + "}").encode()


def _large(uid: str, size: int) -> bytes:
    start = json.dumps(_header(uid))[:-1] + ', "00204000": {"vr": "LT", "Value": ["'
    return (start + "x" * (size - len(start) - 4) + '"]}}').encode()


def _tar(path: Any, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(path)


def _delivery(tmp_path: Any, large_bytes: int) -> tuple[str, str]:
    """text/ and images/ folders: a good header, a deep one, a large one, BitsAllocated 12, and pixels for each."""
    text, images = tmp_path / "text", tmp_path / "images"
    text.mkdir()
    images.mkdir()
    bits12 = _header(BITS12, **{"00280100": {"vr": "US", "Value": [12]}})
    warns = _header(WARNS, **{"00080020": {"vr": "DA", "Value": ["2024-01-31"]},  # pydicom warns: not a DA
                              "00081140": {"vr": "SQ", "Value": [{"00080005": {"vr": "CS", "Value": ["ISO_IR 100"]}}]}})
    nul_study = _header(NUL_STUDY, **{"0020000D": {"vr": "UI", "Value": [ROOT + "\x0099"]}})
    _tar(text / "part-1.tar", {f"{GOOD}.json": json.dumps(_header(GOOD)).encode(), f"{DEEP}.json": _deep(DEEP),
                               f"{LARGE}.json": _large(LARGE, large_bytes), f"{BITS12}.json": json.dumps(bits12).encode(),
                               f"{WARNS}.json": json.dumps(warns).encode(), f"{NUL_STUDY}.json": json.dumps(nul_study).encode()})
    _tar(images / "part-1.tar", {f"{u}.raw": bytes(range(16)) for u in (GOOD, DEEP, LARGE, BITS12, WARNS, NUL_STUDY)})
    return str(text), str(images)


def _rows(archive: str, **kwargs: Any) -> dict[str, dict[str, Any]]:
    a = {"uri": archive, "role": "text", "size": os.path.getsize(archive), "etag": None, "mtime": None}
    rows = [dict(zip(index.FIELD_NAMES, r)) for r in index.index_archive(a, "run", datetime.now(timezone.utc), **kwargs)]
    return {r["member_name"] or "archive": r for r in rows}


# ---------------------------------------------------------------- the walk and the manifest


class _CountingStream(io.RawIOBase):
    """A file whose reads are recorded, to show no read ever takes a large member whole."""

    def __init__(self, path: str) -> None:
        self.f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.largest = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.largest = max(self.largest, len(data))
        return data

    def close(self) -> None:
        self.f.close()
        super().close()


def test_walk_steps_over_a_member_above_max_data_in_bounded_reads(tmp_path: Any) -> None:
    path = _tar(tmp_path / "t.tar", {"a.json": b"{}", "big.json": b"x" * (5 * CHUNK_LIMIT), "b.json": b"[1]"})
    stream = _CountingStream(path)
    items = list(tar_access.walk(tar_sources.StreamSource(stream), os.path.getsize(path), True, path,
                                 max_data=CHUNK_LIMIT))
    stream.close()
    assert [(m.name, m.data, m.too_large) for m in items] == [("a.json", b"{}", False), ("big.json", None, True),
                                                               ("b.json", b"[1]", False)]
    assert items[1].size == 5 * CHUNK_LIMIT
    assert stream.largest <= CHUNK_LIMIT  # stepped over, never read whole


def test_index_archive_rows_for_deep_large_and_invalid_headers(tmp_path: Any) -> None:
    text, _ = _delivery(tmp_path, large_bytes=MAX_HEADER_BYTES + 1)
    rows = _rows(os.path.join(text, "part-1.tar"))
    errors = {name: (r["error"], r["error_detail"]) for name, r in rows.items()}
    assert errors[f"{GOOD}.json"] == (None, None)
    assert errors[f"{DEEP}.json"][0] == "too_deep"  # was index_error (RecursionError)
    assert errors[f"{LARGE}.json"] == ("too_large", f"header is {MAX_HEADER_BYTES + 1} bytes, above max_header_bytes "
                                                    f"({MAX_HEADER_BYTES})")
    assert errors[f"{BITS12}.json"][0] == "invalid_bits_allocated"
    assert errors[f"{NUL_STUDY}.json"][0] == "invalid_uid_value"  # not invalid_uid: the member still joins its pixels
    assert errors["archive"] == (None, "6 members")
    for name in (f"{DEEP}.json", f"{LARGE}.json"):
        assert rows[name]["header_json"] is None and rows[name]["sop_instance_uid"] == name[:-5]
    assert rows[f"{GOOD}.json"]["header_json"] is not None


def test_index_archive_never_holds_a_header_above_the_limit(tmp_path: Any) -> None:
    archive = _tar(tmp_path / "big.tar", {f"{LARGE}.json": _large(LARGE, 48 << 20), f"{GOOD}.json": json.dumps(_header(GOOD)).encode()})
    tracemalloc.start()
    try:
        rows = _rows(archive)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows[f"{LARGE}.json"]["error"] == "too_large" and rows[f"{GOOD}.json"]["error"] is None
    assert peak < 8 << 20, f"indexing a 48 MB header peaked at {peak} bytes of Python allocations"


def test_max_header_bytes_is_configurable_and_reaches_the_rows(tmp_path: Any) -> None:
    assert Config().max_header_bytes == MAX_HEADER_BYTES == 16 * 1024 * 1024
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"job": {"max_header_bytes": 2048}}))
    cfg = load_config(str(conf))
    assert cfg.max_header_bytes == 2048
    text, _ = _delivery(tmp_path, large_bytes=4096)
    rows = _rows(os.path.join(text, "part-1.tar"), max_header_bytes=cfg.max_header_bytes)
    assert rows[f"{LARGE}.json"]["error"] == "too_large" and rows[f"{GOOD}.json"]["error"] is None
    assert _rows(os.path.join(text, "part-1.tar"))[f"{LARGE}.json"]["error"] is None  # 4 KB is fine by default


# ---------------------------------------------------------------- the single-UID command


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120, env=dict(os.environ))


def _manifest(tmp_path: Any, text: str, images: str) -> str:
    """A manifest written from index_archive's rows, without Spark."""
    kinds = {"string": pa.string(), "long": pa.int64(), "int": pa.int32(), "timestamp": pa.timestamp("us", tz="UTC")}
    schema = pa.schema([(n, kinds[t]) for n, t in index.MANIFEST_FIELDS])
    at = datetime.now(timezone.utc)
    run = new_run_id(at)
    rows = [dict(zip(index.FIELD_NAMES, r)) for a in listing.list_archives(text, images) for r in index.index_archive(a, run, at)]
    out = tmp_path / "manifest"
    out.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / "part-0.parquet")
    return str(out)


@pytest.mark.parametrize("via", ["scan", "manifest"])
def test_uid_command_refuses_deep_and_large_headers_in_one_line(tmp_path: Any, via: str) -> None:
    text, images = _delivery(tmp_path, large_bytes=MAX_HEADER_BYTES + 1)
    where = ["--manifest", _manifest(tmp_path, text, images)] if via == "manifest" else ["--text", text, "--images", images]
    for uid, reason in ((DEEP, "too_deep"), (LARGE, "too_large"), (BITS12, "invalid_bits_allocated"),
                        (NUL_STUDY, "invalid_uid_value")):
        r = _run("uid", uid, *where, "--out", str(tmp_path / "out"))
        assert r.returncode == 2, r.stderr  # bad input; a RecursionError was exit 1
        assert "Traceback" not in r.stderr + r.stdout
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {reason}: "), r.stderr
    r = _run("uid", GOOD, *where, "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert dcmftest_ok(str(tmp_path / "out" / f"{GOOD}.dcm"))


def test_uid_command_does_not_flood_stderr_with_pydicom_warnings(tmp_path: Any) -> None:
    text, images = _delivery(tmp_path, large_bytes=1024)
    r = _run("uid", WARNS, "--text", text, "--images", images, "--out", str(tmp_path / "out"))
    assert r.returncode == 0 and r.stderr == "", r.stderr  # pydicom's "Invalid value for VR DA" is a DEBUG line
    assert dcmftest_ok(str(tmp_path / "out" / f"{WARNS}.dcm"))


# ---------------------------------------------------------------- Spark


def test_build_manifest_df_applies_max_header_bytes(spark: Any, tmp_path: Any) -> None:
    from dicom_reassembly.manifest.spark import build_manifest_df

    text, images = _delivery(tmp_path, large_bytes=128 << 10)
    at = datetime.now(timezone.utc)
    run = new_run_id(at)
    archives = listing.list_archives(text, images)
    rows = build_manifest_df(spark, archives, run, at, 2, 64 * 1024, max_header_bytes=64 << 10).collect()
    errors = {r["member_name"]: r["error"] for r in rows if r["kind"] == "header"}
    assert errors == {f"{GOOD}.json": None, f"{DEEP}.json": "too_deep", f"{LARGE}.json": "too_large",
                      f"{BITS12}.json": "invalid_bits_allocated", f"{WARNS}.json": None,
                      f"{NUL_STUDY}.json": "invalid_uid_value"}
