"""Tar archives without extraction: walk headers, stream members, read by offset.

One walker serves every source. It only moves forward and asks its source for
``read_at(offset, n)``, so the same code streams a whole archive (header
archives, whose data we need), seeks through a local file, or hops through an
S3 object with ranged reads that skip member data (pixel archives, indexed
from their headers alone). Damage ends the walk with an error event after the
members that came before it; it never loses them.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import storage
from .errors import ArchiveError, NotRestoredError, ReassemblyError

log = logging.getLogger(__name__)

BLOCK = 512
# Gaps up to this are read through rather than skipped with a new request. Small on purpose:
# it keeps read amplification near 1 for the realistic mix (members of 100 KB and more), while
# archives of tiny members still need only a few requests.
DEFAULT_COALESCE_GAP = 64 * 1024
REGULAR_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE}
_TYPE_NAMES = {
    tarfile.DIRTYPE: "directory", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char_device", tarfile.BLKTYPE: "block_device", tarfile.FIFOTYPE: "fifo",
}


@dataclass
class Member:
    """One tar member: where its header and data sit, and what it is."""

    name: str
    header_offset: int
    data_offset: int
    size: int
    regular: bool
    type_name: str
    mtime: int
    data: bytes | None = None
    truncated: bool = False
    too_large: bool = False  # with_data skipped its data: larger than the walk's max_data


@dataclass
class Damage:
    """Where and why the walk of an archive stopped early."""

    reason: str
    detail: str
    offset: int


def _round_up(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


class _StreamSource:
    """Forward-only source over one streaming read (a whole S3 GET or a file)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.pos = 0

    def read_at(self, offset: int, n: int) -> bytes:
        if offset < self.pos:
            raise ArchiveError("backward_seek", f"stream at {self.pos} asked for {offset}")
        while self.pos < offset:  # skip by reading: this is one streaming pass
            chunk = self.stream.read(min(offset - self.pos, 1 << 20))
            if not chunk:
                return b""
            self.pos += len(chunk)
        data = storage.read_exact(self.stream, n)
        self.pos += len(data)
        return data


class _LocalSeekSource:
    """Random access to a local file: headers are read by seeking."""

    def __init__(self, path: str) -> None:
        try:
            self.f = open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise storage.StorageError("os_error", exc.strerror or type(exc).__name__, uri=path) from exc
        storage.io_counter.record(path)
        self.path = path

    def read_at(self, offset: int, n: int) -> bytes:
        self.f.seek(offset)
        data = self.f.read(n)
        storage.io_counter.record(self.path, len(data), open_=False)
        return data

    def close(self) -> None:
        self.f.close()


class _RangedSource:
    """Headers of a remote archive by ranged GETs, coalescing small gaps.

    When members are small, one window spans many headers; when they are large,
    each GET fetches a few header blocks only, so member data is not read.
    """

    def __init__(self, uri: str, size: int, coalesce_gap: int) -> None:
        self.uri = uri
        self.size = size
        self.coalesce_gap = coalesce_gap
        self.buf = b""
        self.buf_start = 0
        self.last_offset = 0
        self.spans: list[int] = []

    def read_at(self, offset: int, n: int) -> bytes:
        if n == BLOCK and offset > self.last_offset:
            # Header blocks come one per member: their spacing is the member span.
            self.spans.append(offset - self.last_offset)
            self.spans = self.spans[-16:]
            self.last_offset = offset
        end = min(offset + n, self.size)
        if offset >= self.buf_start and end <= self.buf_start + len(self.buf):
            rel = offset - self.buf_start
            return self.buf[rel: rel + n]
        typical = sorted(self.spans)[len(self.spans) // 2] if self.spans else self.coalesce_gap + 1
        window = max(n, 3 * BLOCK)
        if typical <= self.coalesce_gap:
            window = max(window, self.coalesce_gap)
        window = min(window, self.size - offset)
        if window <= 0:
            return b""
        self.buf = storage.read_range(self.uri, offset, window)
        self.buf_start = offset
        return self.buf[:n]


def _parse_pax(data: bytes) -> dict[str, str]:
    """PAX extended header records: ``"<len> <key>=<value>\\n"``."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            break
        if length <= 0:
            break
        record = data[space + 1: pos + length - 1]
        key, _, value = record.partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _not_tar_reason(block: bytes) -> str:
    return "compressed_archive" if block[:2] == b"\x1f\x8b" else "not_a_tar"


def walk(source: Any, archive_size: int | None, with_data: bool, uri: str = "",
         max_data: int | None = None) -> Iterator[Member | Damage]:
    """Walk an archive's members from ``source``; yield Members, then maybe one Damage.

    With ``with_data``, a regular member above ``max_data`` bytes is yielded with ``too_large``
    set and no data: the next header read steps over its data (a stream reads through it in
    bounded chunks), so it is never held in memory.
    """
    offset = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    global_pax: dict[str, str] = {}
    chain_start: int | None = None  # a member's record starts at its first extended header, as in tarfile
    first = True
    while True:
        header_offset = offset
        block = source.read_at(offset, BLOCK)
        if not block:
            if first:
                yield Damage("empty_archive", "no tar header at all", 0)
            return  # end without the end-of-archive blocks: tolerated, as GNU tar does
        if len(block) < BLOCK:
            if first and block[257:262] != b"ustar":  # too short for a header, and not the start of one
                yield Damage(_not_tar_reason(block), f"{len(block)} bytes, no tar header", 0)
            else:
                yield Damage("truncated_archive", f"partial header block ({len(block)} bytes)", offset)
            return
        if block == b"\0" * BLOCK:
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            if first:
                yield Damage(_not_tar_reason(block), f"no valid tar header at offset 0 ({exc})", 0)
            else:
                yield Damage("corrupt_header", f"invalid tar header ({exc})", offset)
            return
        first = False
        data_offset = offset + BLOCK
        size = info.size
        if size < 0:  # base-256 sizes can be negative: walking on would loop on this header
            yield Damage("corrupt_header", f"member size {size} is negative", header_offset)
            return
        offset = data_offset + _round_up(size)
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGLINK):
            meta = source.read_at(data_offset, size)
            if len(meta) < size:
                yield Damage("truncated_archive", "extended header cut short", header_offset)
                return
            if info.type != tarfile.XGLTYPE and chain_start is None:
                chain_start = header_offset
            if info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = meta.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif info.type == tarfile.XHDTYPE:
                pax = _parse_pax(meta)
            elif info.type == tarfile.XGLTYPE:
                global_pax.update(_parse_pax(meta))
            continue
        name = pax.get("path") or long_name or global_pax.get("path") or info.name
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                yield Damage("corrupt_header", f"PAX size {pax['size'][:40]!r} is not a number", header_offset)
                return
            if size < 0:
                yield Damage("corrupt_header", f"PAX size {size} is negative", header_offset)
                return
            offset = data_offset + _round_up(size)
        long_name = None
        pax = {}
        if chain_start is not None:
            header_offset, chain_start = chain_start, None
        regular = info.type in REGULAR_TYPES
        type_name = "file" if regular else _TYPE_NAMES.get(info.type, f"type_{info.type!r}")
        member = Member(name, header_offset, data_offset, size, regular, type_name, int(info.mtime))
        if archive_size is not None and data_offset + (size if regular else 0) > archive_size:
            # The header survived but the data is cut: list the member as damaged, then stop.
            member.truncated = True
            yield member
            yield Damage("truncated_archive", f"member {name!r} needs {data_offset + size} bytes, archive has {archive_size}",
                         header_offset)
            return
        if with_data and regular and max_data is not None and size > max_data:
            member.too_large = True
        elif with_data and regular:
            data = source.read_at(data_offset, size)
            if len(data) < size:
                member.truncated = True
                yield member
                yield Damage("truncated_archive", f"member {name!r} cut at {len(data)} of {size} bytes", header_offset)
                return
            member.data = data
        yield member


def iter_members(uri: str, size: int | None = None, with_data: bool = False,
                 coalesce_gap: int = DEFAULT_COALESCE_GAP, max_data: int | None = None) -> Iterator[Member | Damage]:
    """Members of one archive, local or S3, followed by a Damage if it is damaged.

    ``with_data=True`` streams the archive once (one GET) and attaches each
    regular member's bytes, up to ``max_data`` (larger ones are marked
    ``too_large`` and skipped); otherwise only headers are read: by seeking locally,
    by coalesced ranged reads on S3. Storage errors become a Damage too, except
    NotRestoredError, which callers report as ``not_restored``.
    """
    try:
        if size is None:
            info = storage.head(uri)
            if info is None:
                yield Damage("not_found", "archive does not exist", 0)
                return
            size = info.size
        if size == 0:
            yield Damage("empty_archive", "archive is 0 bytes", 0)
            return
        if with_data:
            with storage.open_read(uri) as stream:
                yield from walk(_StreamSource(stream), size, True, uri, max_data)
        elif storage.is_s3(uri):
            yield from walk(_RangedSource(uri, size, coalesce_gap), size, False, uri)
        else:
            src = _LocalSeekSource(uri)
            try:
                yield from walk(src, size, False, uri)
            finally:
                src.close()
    except NotRestoredError:
        raise
    except ReassemblyError as exc:
        yield Damage(exc.reason, exc.detail, 0)
    except Exception as exc:  # a dropped connection mid-stream must not lose the members already yielded
        log.warning("read error in %s: %s", uri, type(exc).__name__)
        yield Damage("read_error", f"{type(exc).__name__}: {str(exc)[:200]}", 0)


def read_member(uri: str, data_offset: int, size: int) -> bytes:
    """One member's bytes by a single ranged read."""
    data = storage.read_range(uri, data_offset, size)
    if len(data) < size:
        raise ArchiveError("truncated_archive", f"member at {data_offset} cut at {len(data)} of {size} bytes", uri=uri)
    return data
