"""Tar access without extraction: member offsets checked against Python's tarfile, local and S3 (moto)."""

from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
import uuid
from typing import Any

import pytest

from dicom_reassembly import storage
from dicom_reassembly.errors import ArchiveError, NotRestoredError
from dicom_reassembly.tar_access import Damage, Member, iter_members, read_member

LONG_DIR = "text/" + "d" * 90 + "/"  # > 100 characters with the file name; ustar can still split it
LONG_BASENAME = "1.2.826.0.1.3680043.10.1234." + "9" * 90 + ".json"  # > 100 characters on its own

_TYPE_NAMES = {tarfile.REGTYPE: "file", tarfile.DIRTYPE: "directory", tarfile.SYMTYPE: "symlink",
               tarfile.LNKTYPE: "hardlink", tarfile.FIFOTYPE: "fifo"}
_TYPES = {v: k for k, v in _TYPE_NAMES.items()}


def _content(i: int, size: int) -> bytes:
    return random.Random(i).randbytes(size)


def _tar_bytes(fmt: int, members: list[tuple[str, bytes | str]]) -> bytes:
    """A tar in ``fmt`` from (name, file content or a non-regular type name) pairs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, what in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if isinstance(what, bytes):
                info.size = len(what)
                tf.addfile(info, io.BytesIO(what))
            else:
                info.type = _TYPES[what]
                if what in ("symlink", "hardlink"):
                    info.linkname = "1.2.3.1.json"
                tf.addfile(info)
    return buf.getvalue()


def _mixed_members(fmt: int) -> list[tuple[str, bytes | str]]:
    members: list[tuple[str, bytes | str]] = [
        ("1.2.3.1.json", _content(1, 700)),
        ("text/", "directory"),
        (LONG_DIR + "1.2.3.2.json", _content(2, 3000)),
        ("text/1.2.3.3.j2c", _content(3, 512)),
        ("link-to-1.json", "symlink"),
        ("hard-to-1.json", "hardlink"),
        ("a-fifo", "fifo"),
        ("empty.j2c", b""),
        ("naïve/1.2.3.4.json", _content(4, 1)),
    ]
    if fmt != tarfile.USTAR_FORMAT:
        members.insert(3, (LONG_BASENAME, _content(5, 1025)))
        members.append(("sub/" + "x" * 150 + "/1.2.3.6.j2c", _content(6, 10)))
    return members


def _by_tarfile(data: bytes) -> list[tuple[str, int, int, int, bool, str]]:
    """What Python's tarfile says about each member: the independent reference."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [(ti.name, ti.offset, ti.offset_data, ti.size, ti.isreg(), _TYPE_NAMES[ti.type]) for ti in tf.getmembers()]


def _ours(items: list[Member | Damage]) -> list[tuple[str, int, int, int, bool, str]]:
    return [(m.name.rstrip("/"), m.header_offset, m.data_offset, m.size, m.regular, m.type_name)
            for m in items if isinstance(m, Member)]


def _damages(items: list[Member | Damage]) -> list[Damage]:
    return [d for d in items if isinstance(d, Damage)]


def _write(tmp_path: Any, name: str, data: bytes) -> str:
    path = os.path.join(tmp_path, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.fixture()
def bucket(s3: Any) -> str:
    name = f"tar-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def _upload(s3: Any, bucket: str, key: str, data: bytes, **kwargs: Any) -> str:
    s3.put_object(Bucket=bucket, Key=key, Body=data, **kwargs)
    return f"s3://{bucket}/{key}"


# ---------------------------------------------------------------- offsets agree with tarfile


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT],
                         ids=["gnu", "pax", "ustar"])
def test_member_offsets_match_tarfile(tmp_path: Any, fmt: int) -> None:
    data = _tar_bytes(fmt, _mixed_members(fmt))
    path = _write(tmp_path, "a.tar", data)
    expected = _by_tarfile(data)
    assert any(len(name) > 100 for name, *_ in expected)
    items = list(iter_members(path))
    assert not _damages(items)
    assert _ours(items) == expected
    # Regular members' bytes by (data offset, size) are what tarfile extracts.
    with tarfile.open(path) as tf:
        for m in items:
            if m.regular:
                f = tf.extractfile(m.name)
                assert f is not None and read_member(path, m.data_offset, m.size) == f.read()


def test_non_regular_members_are_reported_with_their_type(tmp_path: Any) -> None:
    data = _tar_bytes(tarfile.GNU_FORMAT, _mixed_members(tarfile.GNU_FORMAT))
    items = list(iter_members(_write(tmp_path, "a.tar", data), with_data=True))
    others = {m.name.rstrip("/"): m.type_name for m in items if not m.regular}
    assert others == {"text": "directory", "link-to-1.json": "symlink", "hard-to-1.json": "hardlink",
                      "a-fifo": "fifo"}
    assert all(m.data is None for m in items if not m.regular)


def test_three_sources_agree(tmp_path: Any, s3: Any, bucket: str) -> None:
    data = _tar_bytes(tarfile.PAX_FORMAT, _mixed_members(tarfile.PAX_FORMAT))
    path = _write(tmp_path, "a.tar", data)
    uri = _upload(s3, bucket, "deliveries/a.tar", data)
    expected = _by_tarfile(data)
    streamed = list(iter_members(path, with_data=True))
    seeked = list(iter_members(path))
    ranged = list(iter_members(uri))
    s3_streamed = list(iter_members(uri, with_data=True))
    for items in (streamed, seeked, ranged, s3_streamed):
        assert not _damages(items)
        assert _ours(items) == expected
    with tarfile.open(path) as tf:
        for items in (streamed, s3_streamed):
            for m in items:
                if m.regular:
                    f = tf.extractfile(m.name)
                    assert f is not None and m.data == f.read()
    assert all(m.data is None for m in seeked + ranged)


def test_streaming_an_s3_archive_is_one_get(s3: Any, bucket: str) -> None:
    data = _tar_bytes(tarfile.GNU_FORMAT, [(f"1.2.3.{i}.json", _content(i, 900)) for i in range(20)])
    uri = _upload(s3, bucket, "one-get.tar", data)
    storage.io_counter.reset()
    items = list(iter_members(uri, size=len(data), with_data=True))
    assert len(items) == 20 and not _damages(items)
    assert storage.io_counter.gets == 1


# ---------------------------------------------------------------- damage


def _truncation_case(tmp_path: Any) -> tuple[bytes, list[tuple[str, int, int, int, bool, str]]]:
    members = [(f"1.2.3.{i}.j2c", _content(i, 3000 + i)) for i in range(5)]
    data = _tar_bytes(tarfile.GNU_FORMAT, members)
    return data, _by_tarfile(data)


@pytest.mark.parametrize("with_data", [False, True], ids=["headers", "stream"])
@pytest.mark.parametrize("where", ["mid-data", "mid-header"])
def test_truncated_archive_keeps_the_members_before_the_damage(tmp_path: Any, with_data: bool, where: str) -> None:
    data, expected = _truncation_case(tmp_path)
    _, header_offset, data_offset, size, _, _ = expected[3]
    cut = data_offset + size // 2 if where == "mid-data" else header_offset + 200
    items = list(iter_members(_write(tmp_path, "cut.tar", data[:cut]), with_data=with_data))
    # A member whose header survived is listed, flagged truncated, without data.
    listed = 4 if where == "mid-data" else 3
    assert _ours(items) == expected[:listed]
    assert [m.truncated for m in items if isinstance(m, Member)] == [False] * 3 + [True] * (listed - 3)
    assert all(m.data is None for m in items[3:listed])
    assert isinstance(items[-1], Damage) and len(_damages(items)) == 1
    assert items[-1].reason == "truncated_archive"
    assert items[-1].offset == header_offset


def test_truncated_archive_on_s3(s3: Any, bucket: str, tmp_path: Any) -> None:
    data, expected = _truncation_case(tmp_path)
    cut = expected[2][1] + 100
    uri = _upload(s3, bucket, "cut.tar", data[:cut])
    for with_data in (False, True):
        items = list(iter_members(uri, with_data=with_data))
        assert _ours(items) == expected[:2]
        assert [(d.reason, d.offset) for d in _damages(items)] == [("truncated_archive", expected[2][1])]


def test_missing_end_of_archive_blocks_are_tolerated(tmp_path: Any) -> None:
    data, expected = _truncation_case(tmp_path)
    last_end = expected[-1][2] + expected[-1][3]
    end = last_end + (-last_end) % 512  # the member's padded end, without the two zero blocks
    items = list(iter_members(_write(tmp_path, "noeof.tar", data[:end])))
    assert _ours(items) == expected and not _damages(items)


def test_corrupt_header_after_good_members(tmp_path: Any) -> None:
    data, expected = _truncation_case(tmp_path)
    bad = bytearray(data)
    bad[expected[2][1] + 5] ^= 0x20  # a name byte: the header checksum no longer matches
    for with_data in (False, True):
        items = list(iter_members(_write(tmp_path, "corrupt.tar", bytes(bad)), with_data=with_data))
        assert _ours(items) == expected[:2]
        assert [(d.reason, d.offset) for d in _damages(items)] == [("corrupt_header", expected[2][1])]


@pytest.mark.parametrize(("name", "payload", "reason"), [
    ("random.tar", random.Random(7).randbytes(4096), "not_a_tar"),
    ("json.tar", b'{"00080018": {"vr": "UI", "Value": ["1.2.3"]}}' * 30, "not_a_tar"),
    ("short.tar", b"this is not a tar archive\n", "not_a_tar"),
    ("empty.tar", b"", "empty_archive"),
    ("tar.tar.gz", gzip.compress(_tar_bytes(tarfile.GNU_FORMAT, [("1.2.3.json", _content(1, 5000))]), mtime=0),
     "compressed_archive"),
    ("tiny.tar.gz", gzip.compress(b"tiny", mtime=0), "compressed_archive"),
])
def test_unreadable_archives(tmp_path: Any, name: str, payload: bytes, reason: str) -> None:
    path = _write(tmp_path, name, payload)
    for with_data in (False, True):
        items = list(iter_members(path, with_data=with_data))
        assert [(type(i), i.reason) for i in items] == [(Damage, reason)]


def test_tar_cut_inside_its_first_header_is_truncated(tmp_path: Any) -> None:
    data, _ = _truncation_case(tmp_path)
    items = list(iter_members(_write(tmp_path, "cut.tar", data[:300])))
    assert [i.reason for i in items] == ["truncated_archive"]


def test_empty_and_missing_archives_on_s3(s3: Any, bucket: str) -> None:
    uri = _upload(s3, bucket, "empty.tar", b"")
    assert [d.reason for d in iter_members(uri)] == ["empty_archive"]
    assert [d.reason for d in iter_members(f"s3://{bucket}/missing.tar")] == ["not_found"]


def test_valid_empty_tar_has_no_members_and_no_damage(tmp_path: Any) -> None:
    data = _tar_bytes(tarfile.GNU_FORMAT, [])
    assert list(iter_members(_write(tmp_path, "none.tar", data))) == []


def test_glacier_archive_raises_not_restored(s3: Any, bucket: str) -> None:
    data = _tar_bytes(tarfile.GNU_FORMAT, [("1.2.3.json", b"{}")])
    uri = _upload(s3, bucket, "cold.tar", data, StorageClass="GLACIER")
    for with_data in (False, True):
        with pytest.raises(NotRestoredError) as exc:
            list(iter_members(uri, with_data=with_data))
        assert exc.value.status == "not_restored"


# ---------------------------------------------------------------- reading members and I/O cost


def test_read_member_is_one_ranged_read(s3: Any, bucket: str) -> None:
    members = [(f"1.2.3.{i}.j2c", _content(i, 20_000)) for i in range(4)]
    data = _tar_bytes(tarfile.GNU_FORMAT, members)
    uri = _upload(s3, bucket, "read.tar", data)
    _, _, data_offset, size, _, _ = _by_tarfile(data)[2]
    storage.io_counter.reset()
    assert read_member(uri, data_offset, size) == members[2][1]
    assert storage.io_counter.gets == 1
    assert storage.io_counter.bytes_read == size
    with pytest.raises(ArchiveError) as exc:
        read_member(uri, len(data) - 100, 500)
    assert exc.value.reason == "truncated_archive"


def test_headers_only_indexing_of_large_members_skips_their_data(s3: Any, bucket: str) -> None:
    members = [(f"1.2.3.{i}.j2c", _content(i, 1024 * 1024 + 333 * i)) for i in range(8)]
    data = _tar_bytes(tarfile.GNU_FORMAT, members)
    uri = _upload(s3, bucket, "large.tar", data)
    storage.io_counter.reset()
    items = list(iter_members(uri, size=len(data)))
    assert _ours(items) == _by_tarfile(data)
    assert storage.io_counter.bytes_read < 0.05 * len(data)
    assert storage.io_counter.gets <= len(members) + 1


def test_headers_only_indexing_of_small_members_coalesces_reads(s3: Any, bucket: str) -> None:
    members = [(f"1.2.826.0.1.3680043.10.1234.{i}.json", _content(i, 600 + i % 300)) for i in range(400)]
    data = _tar_bytes(tarfile.PAX_FORMAT, members)
    uri = _upload(s3, bucket, "small.tar", data)
    storage.io_counter.reset()
    items = list(iter_members(uri, size=len(data)))
    assert _ours(items) == _by_tarfile(data)
    # About one GET per coalescing window, far from one per member.
    from dicom_reassembly.tar_access import DEFAULT_COALESCE_GAP

    assert storage.io_counter.gets <= len(data) // DEFAULT_COALESCE_GAP + 10 < len(members) // 10, storage.io_counter.gets
    assert storage.io_counter.bytes_read <= 2 * len(data)
