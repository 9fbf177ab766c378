"""Parquet without Spark: the newest index per archive, locally and on S3 (moto), and the S3 filesystem's env."""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from helpers import free_port

from dicom_reassembly.errors import ConfigError, NotFoundError, StorageError
from dicom_reassembly.io import arrow_io, clients, reads
from dicom_reassembly.manifest.lookup import manifest_members

SCHEMA = pa.schema([("archive_uri", pa.string()), ("archive_role", pa.string()), ("index_run", pa.string()),
                    ("member_name", pa.string()), ("data_offset", pa.int64()), ("size", pa.int64()),
                    ("kind", pa.string()), ("sop_instance_uid", pa.string()), ("error", pa.string()),
                    ("header_json", pa.string()), ("archive_size", pa.int64()), ("error_detail", pa.string()),
                    ("header_sha256", pa.string()), ("study_instance_uid", pa.string()),
                    ("series_instance_uid", pa.string()), ("modality", pa.string())])

# Archive a: indexed twice (run 1, then run 2). Archive b: run 1, plus a run 3 that died before writing b's
# archive row. Archive c: only a run whose archive row has no index_run (it cannot be anyone's newest).
RUN_1 = [
    {"archive_uri": "a", "index_run": "1", "kind": "archive"},
    {"archive_uri": "a", "index_run": "1", "kind": "pixels", "member_name": "old.j2c", "sop_instance_uid": "9"},
    {"archive_uri": "b", "index_run": "1", "kind": "archive"},
    {"archive_uri": "b", "index_run": "1", "kind": "header", "member_name": "h.json", "sop_instance_uid": "8"},
]
RUN_2 = [
    {"archive_uri": "a", "index_run": "2", "kind": "archive"},
    {"archive_uri": "a", "index_run": "2", "kind": "pixels", "member_name": "new.j2c", "sop_instance_uid": "9"},
]
RUN_3 = [
    {"archive_uri": "b", "index_run": "3", "kind": "header", "member_name": "stray.json", "sop_instance_uid": "8"},
    {"archive_uri": "c", "index_run": None, "kind": "archive"},
    {"archive_uri": "c", "index_run": None, "kind": "header", "member_name": "c.json", "sop_instance_uid": "7"},
]
NEWEST = [("a", "2", "archive", None), ("a", "2", "pixels", "new.j2c"), ("b", "1", "archive", None),
          ("b", "1", "header", "h.json")]


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(_table(rows), buf)
    return buf.getvalue()


def _write_local(folder: str, runs: list[list[dict[str, Any]]]) -> str:
    os.makedirs(folder, exist_ok=True)
    for i, rows in enumerate(runs):
        with open(os.path.join(folder, f"part-{i}.parquet"), "wb") as f:
            f.write(_parquet_bytes(rows))
    return folder


@pytest.fixture()
def bucket(s3: Any) -> str:
    clients._clients.clear()  # a client cached before AWS_ENDPOINT_URL was set would miss moto
    name = f"arrow-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def _write_s3(s3: Any, bucket: str, prefix: str, runs: list[list[dict[str, Any]]]) -> str:
    for i, rows in enumerate(runs):
        s3.put_object(Bucket=bucket, Key=f"{prefix}/part-{i}.parquet", Body=_parquet_bytes(rows))
    return f"s3://{bucket}/{prefix}"


def _rows(table: pa.Table) -> list[tuple]:
    return sorted(zip(*(table.column(c).to_pylist() for c in ("archive_uri", "index_run", "kind", "member_name"))),
                  key=str)


def test_newest_index_runs_are_decided_by_each_archives_own_rows(tmp_path: Any) -> None:
    uri = _write_local(str(tmp_path / "m"), [RUN_1, RUN_2, RUN_3])
    assert arrow_io.newest_index_runs(arrow_io.open_dataset(uri)) == {"a": "2", "b": "1"}
    table = arrow_io.read_manifest_table(uri, ["archive_uri", "index_run", "kind", "member_name"])
    assert table.column_names == ["archive_uri", "index_run", "kind", "member_name"]
    assert _rows(table) == sorted(NEWEST, key=str)


def test_read_manifest_table_filters_and_projects(tmp_path: Any) -> None:
    uri = _write_local(str(tmp_path / "m"), [RUN_1, RUN_2, RUN_3])
    table = arrow_io.read_manifest_table(uri, ["member_name"], filter=pads.field("sop_instance_uid") == "9")
    assert table.column_names == ["member_name"] and table.column("member_name").to_pylist() == ["new.j2c"]
    # The same filter over an archive that has only old runs' rows for it gives nothing, typed and empty.
    empty = arrow_io.read_manifest_table(uri, ["member_name", "size"], filter=pads.field("sop_instance_uid") == "7")
    assert empty.num_rows == 0 and empty.schema.field("size").type == pa.int64()


def test_newest_archive_rows_carries_the_requested_columns(tmp_path: Any) -> None:
    old = dict(RUN_1[0], error="not_restored")
    uri = _write_local(str(tmp_path / "m"), [[old], RUN_2])
    rows = arrow_io.newest_archive_rows(arrow_io.open_dataset(uri), ["error"]).to_pylist()
    assert rows == [{"archive_uri": "a", "index_run": "2", "error": None}]  # the old run's error no longer applies


def test_read_manifest_table_on_s3(s3: Any, bucket: str) -> None:
    uri = _write_s3(s3, bucket, "manifest", [RUN_1, RUN_2, RUN_3])
    table = arrow_io.read_manifest_table(uri, ["archive_uri", "index_run", "kind", "member_name"])
    assert _rows(table) == sorted(NEWEST, key=str)
    with pytest.raises(NotFoundError) as err:
        arrow_io.read_manifest_table(f"s3://{bucket}/nothing-here", ["kind"])
    assert err.value.reason == "manifest_not_found"


def test_the_s3_specific_endpoint_wins_and_the_region_is_read(s3: Any, bucket: str, moto_server: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    uri = _write_s3(s3, bucket, "manifest", [RUN_1, RUN_2])
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    filesystem, path = arrow_io.arrow_filesystem(uri)
    assert path == f"{bucket}/manifest" and filesystem.region == "eu-west-3"
    assert arrow_io.newest_index_runs(arrow_io.open_dataset(uri)) == {"a": "2", "b": "1"}
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert arrow_io.arrow_filesystem(uri)[0].region == "us-east-1"
    assert arrow_io.arrow_filesystem(str(uri).replace("s3://", "/tmp/")) == (None, f"/tmp/{bucket}/manifest")


def test_manifest_errors_are_typed(tmp_path: Any) -> None:
    with pytest.raises(NotFoundError) as err:
        arrow_io.read_manifest_table(str(tmp_path / "nope"), ["kind"])
    assert err.value.reason == "manifest_not_found"
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError):
        arrow_io.read_manifest_table(str(tmp_path / "empty"), ["kind"])
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "part-0.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(StorageError) as err:
        arrow_io.read_manifest_table(str(damaged), ["kind"])
    assert err.value.reason == "manifest_unreadable"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    pq.write_table(pa.table({"x": [1]}), foreign / "part-0.parquet")
    with pytest.raises(ConfigError) as err:
        arrow_io.read_manifest_table(str(foreign), ["kind"])
    assert err.value.reason == "manifest_bad_schema" and "archive_uri" in str(err.value)


def _tar(members: dict[str, bytes]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """A tar's bytes and each member's (data offset, size), as tarfile reads them back."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        where = {m.name: (m.offset_data, m.size) for m in tf.getmembers()}
    return buf.getvalue(), where


def test_lookup_by_manifest_reads_the_members_of_the_newest_index(s3: Any, bucket: str) -> None:
    uid = "1.2.840.99.1"
    header = json.dumps({"00080018": {"vr": "UI", "Value": [uid]}}).encode()
    pixels = b"\xff\x4f\xff\x51 not really a codestream"
    text, text_at = _tar({"padding.json": b"{}" * 400, f"{uid}.json": header})
    images, images_at = _tar({f"{uid}.j2c": pixels})
    s3.put_object(Bucket=bucket, Key="text/t.tar", Body=text)
    s3.put_object(Bucket=bucket, Key="images/i.tar", Body=images)
    t, i = f"s3://{bucket}/text/t.tar", f"s3://{bucket}/images/i.tar"

    def member(archive: str, run: str, kind: str, name: str, at: tuple[int, int]) -> dict[str, Any]:
        return {"archive_uri": archive, "index_run": run, "kind": kind, "member_name": name, "data_offset": at[0],
                "size": at[1], "sop_instance_uid": uid}

    # The old index of t.tar places the header where the padding member now is; so does a run that died.
    old = [{"archive_uri": t, "index_run": "1", "kind": "archive"},
           member(t, "1", "header", f"{uid}.json", text_at["padding.json"])]
    new = [{"archive_uri": t, "index_run": "2", "kind": "archive"},
           member(t, "2", "header", f"{uid}.json", text_at[f"{uid}.json"]),
           {"archive_uri": i, "index_run": "2", "kind": "archive"},
           member(i, "2", "pixels", f"{uid}.j2c", images_at[f"{uid}.j2c"])]
    died = [member(t, "3", "header", f"{uid}.json", text_at["padding.json"])]
    manifest = _write_s3(s3, bucket, "manifest", [old, new, died])
    got = manifest_members(uid, manifest)
    assert [(h["archive_uri"], h["data_offset"], h["size"]) for h in got.headers] == [(t, *text_at[f"{uid}.json"])]
    assert [(p["archive_uri"], p["data_offset"], p["size"]) for p in got.pixels] == [(i, *images_at[f"{uid}.j2c"])]
    assert reads.read_range(t, *text_at[f"{uid}.json"]) == header
    none = manifest_members("1.2.3.404", manifest)
    assert (none.headers, none.pixels) == ([], [])


def test_a_dataset_exists_only_once_a_parquet_file_is_outside_hidden_names(tmp_path: Any, s3: Any, bucket: str) -> None:
    """A staged write that never moved in (``_staging-*/``) or Spark's ``_temporary`` is no dataset: readers skip
    them, so a job must not take them for a manifest."""
    table = pa.table({"x": [1]})
    for root, client in ((str(tmp_path / "m"), None), (f"s3://{bucket}/exists/m", s3)):
        assert not arrow_io.dataset_exists(root)
        for hidden in ("_staging-g/_role=m/_b=0/part-0.parquet", "_temporary/0/part-0.parquet", ".x/part-0.parquet"):
            _put(root, hidden, table, client)
        assert not arrow_io.dataset_exists(root)
        _put(root, "sub/part-1.parquet", table, client)
        assert arrow_io.dataset_exists(root)


def _put(root: str, name: str, table: Any, s3: Any) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    if s3 is not None:
        bucket, key = root[len("s3://"):].split("/", 1)
        s3.put_object(Bucket=bucket, Key=f"{key}/{name}", Body=buf.getvalue())
        return
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
