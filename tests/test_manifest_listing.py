"""Listing a delivery: every object under --text/--images gets manifest rows or one row that says why not."""

from __future__ import annotations

import bz2
import gzip
import io
import os
import tarfile
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest
from helpers import permissions_enforced, s3_access_denied
from test_row_types import assert_typed

from dicom_reassembly.manifest import index
from dicom_reassembly.manifest import listing as manifest_listing

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
JSON = b'{"00080018": {"vr": "UI", "Value": ["1.2.3.1"]}}'


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TAR = _tar([("1.2.3.1.json", JSON)])
# name -> (content, the archive row's error). Content decides where the name lies.
STRAYS: dict[str, tuple[bytes, str]] = {
    "README.txt": (b"Delivery notes\n", "not_an_archive"),
    "loose.json": (JSON, "not_an_archive"),
    "empty.json": (b"", "not_an_archive"),
    "batch.tar.gz": (gzip.compress(TAR, mtime=0), "compressed_archive"),
    "batch.tbz2": (bz2.compress(TAR), "compressed_archive"),
    "plain.tgz": (TAR, "not_an_archive"),  # named compressed, but a plain tar inside
    "gzip-inside.tar": (gzip.compress(TAR, mtime=0), "compressed_archive"),  # named a tar, gzip inside
}


def _archive_rows(listing: list[dict[str, Any]], access: Any = None
                  ) -> tuple[dict[str, tuple[str | None, str | None]], list[tuple]]:
    rows = [row for a in listing for row in index.index_archive(a, "run", NOW, access=access)]
    fields = index.FIELD_NAMES
    archive = {os.path.basename(r[fields.index("archive_uri")]): (r[fields.index("error")], r[fields.index("error_detail")])
               for r in rows if r[fields.index("kind")] == "archive"}
    return archive, rows


def test_every_local_object_gets_rows_or_a_reason(tmp_path: Any) -> None:
    text, images = tmp_path / "text", tmp_path / "images"
    (text / "locked").mkdir(parents=True)
    images.mkdir()
    (text / "t.tar").write_bytes(TAR)
    (text / "locked" / "hidden.tar").write_bytes(TAR)
    os.chmod(text / "locked", 0)
    for name, (content, _) in STRAYS.items():
        (text / name).write_bytes(content)
    (images / "i.tar").write_bytes(_tar([("1.2.3.1.j2c", b"\xff\x4f\xff\x51")]))
    os.symlink(tmp_path / "gone.tar", images / "broken.tar")
    (images / "denied.tar").write_bytes(TAR)
    (images / "denied.md5").write_bytes(b"d41d8cd98f00b204e9800998ecf8427e")
    os.chmod(images / "denied.tar", 0)
    os.chmod(images / "denied.md5", 0)
    with permissions_enforced():
        listing = manifest_listing.list_archives(str(text), str(images))
        archive, rows = _archive_rows(listing)
    assert {k: v[0] for k, v in archive.items()} == {
        "t.tar": None, "i.tar": None, "locked": "access_denied", "broken.tar": "broken_link", "denied.tar": "access_denied",
        "denied.md5": "access_denied", **{name: reason for name, (_, reason) in STRAYS.items()}}
    assert "a tar by its content" in archive["plain.tgz"][1] and "gzip data" in archive["batch.tar.gz"][1]
    assert "gone.tar" in archive["broken.tar"][1]
    assert_typed(rows, index.MANIFEST_FIELDS)
    # The members of the archives that could be read are indexed as before.
    members = {r[index.FIELD_NAMES.index("member_name")] for r in rows if r[index.FIELD_NAMES.index("kind")] != "archive"}
    assert members == {"1.2.3.1.json", "1.2.3.1.j2c"}
    [line] = manifest_listing.listing_summary(listing, listing[:5])
    assert line.startswith(f"objects listed: {len(listing)} (") and "indexed this run: 5; unchanged and skipped: 8" in line
    # By name: t.tar, i.tar, denied.tar, gzip-inside.tar; the folder and the broken link could not be listed.
    assert "4 archives, 7 other objects (not_an_archive or compressed_archive), 2 unreadable while listing" in line


def test_every_s3_object_gets_rows_or_a_reason(s3: Any) -> None:
    bucket = f"ls-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="d/text/t.tar", Body=TAR)
    s3.put_object(Bucket=bucket, Key="d/text/secret.tar", Body=TAR)
    s3.put_object(Bucket=bucket, Key="d/text/secret.txt", Body=b"notes")
    s3.put_object(Bucket=bucket, Key="d/text/folder/", Body=b"")  # a console folder marker: no object of ours
    for name, (content, _) in STRAYS.items():
        s3.put_object(Bucket=bucket, Key=f"d/images/{name}", Body=content)
    with s3_access_denied(bucket, ["d/text/secret.tar", "d/text/secret.txt"]) as access:
        listing = manifest_listing.list_archives(f"s3://{bucket}/d/text", f"s3://{bucket}/d/images", access=access)
        archive, rows = _archive_rows(listing, access)
    assert {k: v[0] for k, v in archive.items()} == {
        "t.tar": None, "secret.tar": "access_denied", "secret.txt": "access_denied",
        **{name: reason for name, (_, reason) in STRAYS.items()}}
    assert_typed(rows, index.MANIFEST_FIELDS)


def test_a_former_stray_is_indexed_once_archive_suffixes_names_it(tmp_path: Any) -> None:
    (tmp_path / "text").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "text" / "batch.tape").write_bytes(TAR)
    first = manifest_listing.list_archives(str(tmp_path / "text"), str(tmp_path / "images"))
    archive, rows = _archive_rows(first)
    assert archive["batch.tape"][0] == "not_an_archive" and "add its suffix to archive_suffixes" in archive["batch.tape"][1]
    indexed = [dict(zip(index.FIELD_NAMES, r)) for r in rows]
    assert manifest_listing.archives_to_index(first, indexed) == []
    again = manifest_listing.list_archives(str(tmp_path / "text"), str(tmp_path / "images"), (".tar", ".tape"))
    assert [a["uri"] for a in manifest_listing.archives_to_index(again, indexed)] == [str(tmp_path / "text" / "batch.tape")]
    archive, _ = _archive_rows(again)
    assert archive["batch.tape"][0] is None


@pytest.mark.parametrize("suffixes", [(".tar",), ()])
def test_overlapping_prefixes_are_still_refused(tmp_path: Any, suffixes: tuple[str, ...]) -> None:
    from dicom_reassembly.errors import ConfigError

    with pytest.raises(ConfigError):
        manifest_listing.list_archives(str(tmp_path), str(tmp_path / "images"), suffixes)
