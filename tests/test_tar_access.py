"""Tar access without extraction: member offsets checked against Python's tarfile, local and S3 (moto)."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import random
import subprocess
import tarfile
import uuid
from typing import Any

import pytest
from helpers import permissions_enforced, require_tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicom_reassembly.errors import ArchiveError, NotRestoredError
from dicom_reassembly.io import reads
from dicom_reassembly.io.tar_access import MAX_EXTENDED_HEADER, Damage, Member, iter_members, read_member, walk
from dicom_reassembly.io.tar_sources import StreamSource

LONG_DIR = "text/" + "d" * 90 + "/"  # > 100 characters with the file name; ustar can still split it
LONG_BASENAME = "1.2.826.0.1.3680043.10.1234." + "9" * 90 + ".json"  # > 100 characters on its own

_TYPE_NAMES = {tarfile.REGTYPE: "file", tarfile.DIRTYPE: "directory", tarfile.SYMTYPE: "symlink",
               tarfile.LNKTYPE: "hardlink", tarfile.FIFOTYPE: "fifo", tarfile.CHRTYPE: "char_device",
               tarfile.BLKTYPE: "block_device"}
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
    reads.io_counter.reset()
    items = list(iter_members(uri, size=len(data), with_data=True))
    assert len(items) == 20 and not _damages(items)
    assert reads.io_counter.gets == 1


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
    ("gzip-inside.tar", gzip.compress(_tar_bytes(tarfile.GNU_FORMAT, [("1.2.3.json", b"{}")]), mtime=0),
     "compressed_archive"),
    ("bzip2-inside.tar", bz2.compress(_tar_bytes(tarfile.GNU_FORMAT, [("1.2.3.json", b"{}")])), "compressed_archive"),
    ("xz-inside.tar", lzma.compress(_tar_bytes(tarfile.GNU_FORMAT, [("1.2.3.json", b"{}")])), "compressed_archive"),
    ("zstd-inside.tar", b"\x28\xb5\x2f\xfd" + random.Random(3).randbytes(2000), "compressed_archive"),
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
    reads.io_counter.reset()
    assert read_member(uri, data_offset, size) == members[2][1]
    assert reads.io_counter.gets == 1
    assert reads.io_counter.bytes_read == size
    with pytest.raises(ArchiveError) as exc:
        read_member(uri, len(data) - 100, 500)
    assert exc.value.reason == "truncated_archive"


def test_headers_only_indexing_of_large_members_skips_their_data(s3: Any, bucket: str) -> None:
    members = [(f"1.2.3.{i}.j2c", _content(i, 1024 * 1024 + 333 * i)) for i in range(8)]
    data = _tar_bytes(tarfile.GNU_FORMAT, members)
    uri = _upload(s3, bucket, "large.tar", data)
    reads.io_counter.reset()
    items = list(iter_members(uri, size=len(data)))
    assert _ours(items) == _by_tarfile(data)
    assert reads.io_counter.bytes_read < 0.05 * len(data)
    assert reads.io_counter.gets <= len(members) + 1


def test_headers_only_indexing_of_small_members_coalesces_reads(s3: Any, bucket: str) -> None:
    members = [(f"1.2.826.0.1.3680043.10.1234.{i}.json", _content(i, 600 + i % 300)) for i in range(400)]
    data = _tar_bytes(tarfile.PAX_FORMAT, members)
    uri = _upload(s3, bucket, "small.tar", data)
    reads.io_counter.reset()
    items = list(iter_members(uri, size=len(data)))
    assert _ours(items) == _by_tarfile(data)
    # About one GET per coalescing window, far from one per member.
    from dicom_reassembly.io.tar_access import DEFAULT_COALESCE_GAP

    assert reads.io_counter.gets <= len(data) // DEFAULT_COALESCE_GAP + 10 < len(members) // 10, reads.io_counter.gets
    assert reads.io_counter.bytes_read <= 2 * len(data)


# ---------------------------------------------------------------- hostile headers: tarfile's rules, never an exception


def _patch_header(data: bytearray, offset: int, *, size: bytes | None = None, type_: bytes | None = None) -> None:
    """Overwrite a header's size field (12 bytes) or type flag, then recompute its checksum as a tar writer would."""
    if size is not None:
        data[offset + 124: offset + 136] = size
    if type_ is not None:
        data[offset + 156: offset + 157] = type_
    data[offset + 148: offset + 156] = b" " * 8
    data[offset + 148: offset + 156] = b"%06o\0 " % sum(data[offset: offset + 512])


def _octal(n: int) -> bytes:
    return b"%011o\0" % n


def _base256(n: int) -> bytes:
    """GNU's base-256 number field: 0x80 then 11 big-endian bytes (0xFF first for a negative number)."""
    return (b"\x80" + n.to_bytes(11, "big")) if n >= 0 else (256**12 + n).to_bytes(12, "big")


class _BytesSource:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read_at(self, offset: int, n: int) -> bytes:
        return self.data[offset: offset + n]


def _every_source(tmp_path: Any, s3: Any, bucket: str, data: bytes) -> dict[str, list[Member | Damage]]:
    """The walk of one archive through each source: local seek and stream, S3 ranged reads and stream."""
    path = _write(tmp_path, f"{uuid.uuid4().hex}.tar", data)
    uri = _upload(s3, bucket, f"{uuid.uuid4().hex}.tar", data)
    return {"local": list(iter_members(path)), "local-stream": list(iter_members(path, with_data=True)),
            "s3": list(iter_members(uri)), "s3-stream": list(iter_members(uri, with_data=True))}


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "directory", "fifo", "char_device", "block_device"])
def test_a_non_regular_member_has_no_data_whatever_its_size_field_says(tmp_path: Any, s3: Any, bucket: str,
                                                                       kind: str) -> None:
    # The member after the odd one is the instance's pixels: skipping 1 MiB lost it as orphan_pixels, silently.
    members = [("1.2.3.1.json", _content(1, 700)), (f"odd-{kind}", kind), ("1.2.3.1.j2c", _content(2, 3000)),
               ("1.2.3.2.json", _content(3, 10))]
    data = bytearray(_tar_bytes(tarfile.USTAR_FORMAT, members))
    _patch_header(data, _by_tarfile(bytes(data))[1][1], size=_octal(1 << 20))
    expected = _by_tarfile(bytes(data))
    assert [(name, size) for name, _, _, size, _, _ in expected][1:3] == [(f"odd-{kind}", 1 << 20), ("1.2.3.1.j2c", 3000)]
    for source, items in _every_source(tmp_path, s3, bucket, bytes(data)).items():
        assert not _damages(items), source
        assert _ours(items) == expected, source
        if source.endswith("stream"):
            assert [m.data for m in items if isinstance(m, Member) and m.regular] == [
                members[0][1], members[2][1], members[3][1]], source


def test_an_unknown_member_type_is_skipped_with_its_data_as_tarfile_does(tmp_path: Any, s3: Any, bucket: str) -> None:
    members = [("1.2.3.1.json", _content(1, 700)), ("volume-label", _content(2, 1500)), ("1.2.3.1.j2c", _content(3, 900))]
    data = bytearray(_tar_bytes(tarfile.GNU_FORMAT, members))
    _patch_header(data, 1536, type_=b"Z")
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tf:
        expected = [(ti.name, ti.offset, ti.offset_data, ti.size) for ti in tf.getmembers()]
    assert len(expected) == 3
    for source, items in _every_source(tmp_path, s3, bucket, bytes(data)).items():
        assert [(m.name, m.header_offset, m.data_offset, m.size) for m in items] == expected, source
        assert [(m.regular, m.type_name) for m in items] == [(True, "file"), (False, "type_Z"), (True, "file")]


@pytest.mark.parametrize(("field", "kind", "detail"), [
    (_base256(256**11 - 1), "file", "does not fit in 63 bits"),
    (_base256(-1), "file", "is negative"),
    (_base256(1 << 40), "file", "past the end of the archive"),
    (_base256(256**11 - 1), "symlink", "does not fit in 63 bits"),
], ids=["huge", "negative", "past-the-end", "huge-on-a-symlink"])
def test_an_untrustworthy_base256_size_is_corrupt_header_after_the_members_before_it(
        tmp_path: Any, s3: Any, bucket: str, field: bytes, kind: str, detail: str) -> None:
    members = [("1.2.3.1.json", _content(1, 700)), ("1.2.3.1.j2c", _content(2, 900) if kind == "file" else "symlink"),
               ("1.2.3.2.json", _content(3, 10))]
    data = bytearray(_tar_bytes(tarfile.GNU_FORMAT, members))
    _patch_header(data, 1536, size=field)
    for source, items in _every_source(tmp_path, s3, bucket, bytes(data)).items():
        assert [m.name for m in items if isinstance(m, Member)] == ["1.2.3.1.json"], source
        assert [(d.reason, d.offset) for d in _damages(items)] == [("corrupt_header", 1536)], source
        assert detail in items[-1].detail


def test_a_base256_size_within_the_archive_is_read_as_gnu_tar_writes_it(tmp_path: Any, s3: Any, bucket: str) -> None:
    # GNU tar writes base-256 for members of 8 GiB and more; the field itself is legitimate.
    members = [("1.2.3.1.json", _content(1, 700)), ("1.2.3.1.j2c", _content(2, 900)), ("1.2.3.2.json", _content(3, 10))]
    data = bytearray(_tar_bytes(tarfile.GNU_FORMAT, members))
    _patch_header(data, 1536, size=_base256(900))
    expected = _by_tarfile(bytes(data))
    for source, items in _every_source(tmp_path, s3, bucket, bytes(data)).items():
        assert _ours(items) == expected and not _damages(items), source
        if source.endswith("stream"):
            assert items[1].data == members[1][1]


def test_extended_headers_that_cannot_be_trusted_are_corrupt_header(tmp_path: Any) -> None:
    members = [("1.2.3.1.json", _content(1, 700)), ("sub/" + "x" * 150 + "/1.2.3.2.json", _content(2, 10))]
    data = bytearray(_tar_bytes(tarfile.GNU_FORMAT, members))
    long_name_header = _by_tarfile(bytes(data))[1][1]
    _patch_header(data, long_name_header, size=_octal(MAX_EXTENDED_HEADER + 1))
    items = list(iter_members(_write(tmp_path, "huge-long-name.tar", bytes(data))))
    assert [m.name for m in items if isinstance(m, Member)] == ["1.2.3.1.json"]
    assert [(d.reason, d.offset) for d in _damages(items)] == [("corrupt_header", long_name_header)]

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(tarfile.TarInfo("1.2.3.1.json"), io.BytesIO(b""))
        info = tarfile.TarInfo("1.2.3.2.json")
        info.size, info.pax_headers = 10, {"size": "ten"}
        tf.addfile(info, io.BytesIO(b"0123456789"))
    items = list(iter_members(_write(tmp_path, "pax-size.tar", buf.getvalue())))
    assert [m.name for m in items if isinstance(m, Member)] == ["1.2.3.1.json"]
    assert [d.reason for d in _damages(items)] == ["corrupt_header"] and "PAX size 'ten'" in items[-1].detail


def _sparse_file(path: str) -> bytes:
    """A sparse file of six data runs separated by holes (more than the four an old GNU header holds)."""
    content = bytearray(1 << 20)
    with open(path, "wb") as f:
        for i in range(6):
            run = _content(10 + i, 1000 + i)
            f.seek(i * 150_000 + 7)
            f.write(run)
            content[i * 150_000 + 7: i * 150_000 + 7 + len(run)] = run
        f.truncate(1 << 20)
    return bytes(content)


@pytest.mark.parametrize("fmt", [["--format=gnu"], ["--format=pax", "--sparse-version=0.0"],
                                 ["--format=pax", "--sparse-version=0.1"], ["--format=pax", "--sparse-version=1.0"]],
                         ids=["gnu", "pax-0.0", "pax-0.1", "pax-1.0"])
def test_gnu_sparse_members_are_listed_as_tarfile_lists_them_and_never_read(tmp_path: Any, fmt: list[str]) -> None:
    tar = require_tool("tar")
    src = tmp_path / "src"
    src.mkdir()
    (src / "1.2.3.1.json").write_bytes(_content(1, 700))
    sparse = _sparse_file(str(src / "holes.bin"))
    (src / "1.2.3.1.j2c").write_bytes(_content(2, 3000))
    archive = str(tmp_path / "sparse.tar")
    subprocess.run([tar, "--sparse", *fmt, "-cf", archive, "-C", str(src), "1.2.3.1.json", "holes.bin", "1.2.3.1.j2c"],
                   check=True, timeout=60)
    with tarfile.open(archive) as tf:
        infos = tf.getmembers()
        assert [ti.issparse() for ti in infos] == [False, True, False], "tar did not store the file as sparse"
        assert tf.extractfile("holes.bin").read() == sparse
        expected = [(ti.name, ti.offset, ti.offset_data, ti.size) for ti in infos]
    for with_data in (False, True):
        items = list(iter_members(archive, with_data=with_data))
        assert not _damages(items)
        assert [(m.name, m.header_offset, m.data_offset, m.size) for m in items] == expected
        assert [(m.regular, m.type_name) for m in items] == [(True, "file"), (False, "sparse"), (True, "file")]
        if with_data:
            assert [m.data for m in items] == [_content(1, 700), None, _content(2, 3000)]


def _hostile_base() -> tuple[bytes, list[int]]:
    """An archive of GNU and PAX records (long names, links, a directory), and the offset of every header in it."""
    gnu = _tar_bytes(tarfile.GNU_FORMAT, _mixed_members(tarfile.GNU_FORMAT))
    pax = _tar_bytes(tarfile.PAX_FORMAT, _mixed_members(tarfile.PAX_FORMAT))
    data = gnu.rstrip(b"\0")
    data += b"\0" * ((-len(data)) % 512) + pax  # one archive: the GNU records, then the PAX ones
    headers = [i for i in range(0, len(data), 512) if _is_header(data[i: i + 512])]
    return data, headers


def _is_header(block: bytes) -> bool:
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


_HOSTILE, _HEADERS = _hostile_base()
_FIELDS = {"name": (0, 100), "mode": (100, 108), "size": (124, 136), "mtime": (136, 148), "chksum": (148, 156),
           "type": (156, 157), "linkname": (157, 257), "magic": (257, 265), "prefix": (345, 500),
           "sparse": (386, 500)}
_INTERESTING = [b"\x80" + b"\xff" * 11, b"\xff" * 12, b"\x80" + (1 << 40).to_bytes(11, "big"), b"77777777777\0",
                b"00004000000\0", b"-0000000001\0", b"2", b"5", b"S", b"L", b"x", b"g", b"K", b"X", b"Z", b"\0" * 12]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.sampled_from(_HEADERS), st.sampled_from(sorted(_FIELDS)),
                                st.one_of(st.sampled_from(_INTERESTING), st.binary(min_size=1, max_size=16)),
                                st.booleans()), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.integers(0, len(_HOSTILE))))
def test_hostile_header_bytes_end_the_walk_with_damage_never_an_exception(edits: list, cut: int | None) -> None:
    data = bytearray(_HOSTILE)
    for header, field, value, fix_checksum in edits:
        start, end = _FIELDS[field]
        data[header + start: header + min(end, start + len(value))] = value[: end - start]
        if fix_checksum:
            _patch_header(data, header)
    if cut is not None:
        del data[cut:]
    raw = bytes(data)
    for with_data, source in ((False, _BytesSource(raw)), (True, StreamSource(io.BytesIO(raw)))):
        items = list(walk(source, len(raw), with_data))
        members = [m for m in items if isinstance(m, Member)]
        assert all(isinstance(i, Member) for i in items[:-1]) and len(items) - len(members) <= 1
        offsets = [m.header_offset for m in members]
        assert offsets == sorted(set(offsets))
        for m in members:
            assert 0 <= m.header_offset < m.data_offset <= len(raw) and 0 <= m.size < 2**63
            if m.regular and not m.truncated:
                assert m.data_offset + m.size <= len(raw)
                assert m.data is None if not with_data else len(m.data) == m.size
        try:  # where tarfile can list the archive, the walk lists the same members, up to where it stops
            with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
                reference = [(ti.name, ti.offset, ti.offset_data, ti.size) for ti in tf.getmembers()]
        except (tarfile.TarError, ValueError, OverflowError, UnicodeError):
            continue
        ours = [(m.name, m.header_offset, m.data_offset, m.size) for m in members]
        assert ours == reference[: len(ours)]
        if not _damages(items):
            assert ours == reference


# ---------------------------------------------------------------- errors keep their cause


def test_unreadable_archives_keep_their_cause(tmp_path: Any) -> None:
    data = _tar_bytes(tarfile.GNU_FORMAT, [("1.2.3.json", b"{}")])
    denied = _write(tmp_path, "denied.tar", data)
    os.chmod(denied, 0)
    broken = str(tmp_path / "broken.tar")
    os.symlink(str(tmp_path / "gone.tar"), broken)
    loop = str(tmp_path / "loop.tar")
    os.symlink(loop, loop)
    vanished = _write(tmp_path, "vanished.tar", data)
    size = len(data)
    os.unlink(vanished)  # listed with its size, then gone before it is read
    with permissions_enforced():
        for path, reason in ((denied, "access_denied"), (broken, "broken_link"), (loop, "broken_link"),
                             (vanished, "not_found")):
            for kwargs in ({}, {"size": size}, {"size": size, "with_data": True}):
                assert [(type(d), d.reason) for d in iter_members(path, **kwargs)] == [(Damage, reason)], (path, kwargs)
