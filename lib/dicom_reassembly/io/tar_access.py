"""Tar archives without extraction: walk headers, stream members, read by offset.

One walker serves every source. It only moves forward and asks its source for
``read_at(offset, n)``, so the same code streams a whole archive (header
archives, whose data we need), seeks through a local file, or hops through an
S3 object with ranged reads that skip member data (pixel archives, indexed
from their headers alone). Damage ends the walk with an error event after the
members that came before it; it never loses them.

Which headers have data after them follows Python's ``tarfile``: links,
directories, FIFOs and devices never do, whatever their size field says.
Malformed bytes end a walk as ``corrupt_header`` or ``truncated_archive``,
never as an exception.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ArchiveError, NotRestoredError, ReassemblyError
from . import listing, reads, uris
from .clients import ArchiveAccess
from .tar_sources import BLOCK, LocalSeekSource, RangedSource, StreamSource

log = logging.getLogger(__name__)

# Gaps up to this are read through rather than skipped with a new request. Small on purpose:
# it keeps read amplification near 1 for the realistic mix (members of 100 KB and more), while
# archives of tiny members still need only a few requests.
DEFAULT_COALESCE_GAP = 64 * 1024
# Members whose data can be read as one contiguous payload. tarfile also counts GNU sparse files as
# regular, but their data is stored in pieces: they are listed, typed "sparse", and never read.
REGULAR_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE}
_EXTENDED_TYPES = {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                   tarfile.SOLARIS_XHDTYPE}
# Long names and PAX records are short; a bigger extended header is damage, not a reason to hold gigabytes.
MAX_EXTENDED_HEADER = 8 * 1024 * 1024
MAX_SIZE = 2**63 - 1  # offsets and sizes must fit the manifest's long columns and a seek
_PAX_SIZE_KEYS = ("size", "GNU.sparse.size", "GNU.sparse.realsize")
_COMPRESSION_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"),
                      (b"\x04\x22\x4d\x18", "lz4"), (b"\x1f\x9d", "compress"))
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


def _size_problem(size: int, what: str) -> str | None:
    """Why a size field cannot be used at all: negative (base-256), or too big for any offset."""
    if size < 0:
        return f"{what} {size} is negative"
    if size > MAX_SIZE:
        return f"{what} {size} does not fit in 63 bits"
    return None


def _sparse_map_end(source: Any, start: int, limit: int) -> int | Damage:
    """Where a GNU sparse 1.0 member's data starts: past the map at the start of its data area, as tarfile reads it."""
    pos, buf, numbers, fields = start, b"", 0, None
    while fields is None or numbers < 2 * fields:
        if b"\n" not in buf:
            if pos - start >= min(limit, MAX_EXTENDED_HEADER):
                return Damage("corrupt_header", "GNU sparse map runs past its member's data", start)
            block = source.read_at(pos, BLOCK)
            if len(block) < BLOCK:
                return Damage("truncated_archive", "GNU sparse map cut short", start)
            buf += block
            pos += BLOCK
            continue
        line, buf = buf.split(b"\n", 1)
        if not line.isdigit():
            return Damage("corrupt_header", f"GNU sparse map entry {line[:20]!r} is not a number", start)
        if fields is None:
            fields = int(line)
        else:
            numbers += 1
    return pos


def compression_of(head: bytes) -> str | None:
    """The compression format whose magic number starts ``head``, if any."""
    for magic, name in _COMPRESSION_MAGIC:
        if head.startswith(magic) and (name != "bzip2" or head[3:4] in b"123456789"):
            return name
    return None


def is_tar_header(block: bytes) -> bool:
    """True when ``block`` starts with a valid tar header (its checksum matches)."""
    try:
        tarfile.TarInfo.frombuf(block[:BLOCK], "utf-8", "surrogateescape")
    except (tarfile.HeaderError, ValueError):
        return False
    return True


def _not_tar_reason(block: bytes) -> str:
    return "compressed_archive" if compression_of(block) else "not_a_tar"


def _pax_number(value: str, key: str, offset: int) -> int | Damage:
    try:
        n = int(value)
    except ValueError:
        return Damage("corrupt_header", f"PAX {key} {value[:40]!r} is not a number", offset)
    problem = _size_problem(n, f"PAX {key}")
    return Damage("corrupt_header", problem, offset) if problem else n


def _extended_name_and_size(info: tarfile.TarInfo, size: int, global_pax: dict[str, str],
                            chain: list[dict[str, str]], offset: int) -> tuple[str, int] | Damage:
    """A member's name and size after its extended headers, applied in tarfile's order: global PAX records,
    then the member's own extended headers from the last to the first (the first one wins).

    ``chain`` holds each header's records; a GNU long name is the record ``""``. A global
    PAX size is ignored: it would give every member one size.
    """
    name = info.name
    updates = [(k, v) for k, v in global_pax.items() if k not in _PAX_SIZE_KEYS]
    for records in reversed(chain):
        updates += records.items()
    for key, value in updates:
        if key == "":
            name = value.removesuffix("/") if info.type == tarfile.DIRTYPE else value
        elif key in ("path", "GNU.sparse.name"):
            name = value.rstrip("/") if key == "path" else value
        elif key in _PAX_SIZE_KEYS:
            number = _pax_number(value, key, offset)
            if isinstance(number, Damage):
                return number
            size = number
    return name, size


def walk(source: Any, archive_size: int | None, with_data: bool, uri: str = "",
         max_data: int | None = None) -> Iterator[Member | Damage]:
    """Walk an archive's members from ``source``; yield Members, then maybe one Damage.

    Data follows a header exactly when tarfile says so: for regular files, GNU
    sparse files and unknown types, never for links, directories, FIFOs or
    devices, whatever their size field says. A size the walk cannot trust
    (negative, past 63 bits, a base-256 size past the end, an extended header
    over ``MAX_EXTENDED_HEADER``) ends the walk with a Damage, never an exception.
    With ``with_data``, a regular member above ``max_data`` bytes is yielded with
    ``too_large`` set and no data: the next header read steps over its data (a
    stream reads through it in bounded chunks), so it is never held in memory.
    """
    offset = 0
    chain: list[dict[str, str]] = []  # the records of the extended headers before the next member
    local_pax = False
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
            # The end is two zero blocks. A lone one followed by more headers would hide the members after it
            # (tarfile stops there silently, GNU tar warns): that is damage, not the end.
            following = source.read_at(offset + BLOCK, BLOCK)
            if following.strip(b"\0"):
                yield Damage("corrupt_header", f"a lone zero block at offset {offset} is followed by more data", offset)
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            # An old GNU sparse header's real size, read as tarfile reads numbers (HeaderError when garbled).
            sparse_size = tarfile.nti(block[483:495]) if info.type == tarfile.GNUTYPE_SPARSE else None
        except (tarfile.HeaderError, ValueError) as exc:
            if first:
                yield Damage(_not_tar_reason(block), f"no valid tar header at offset 0 ({exc})", 0)
            else:
                yield Damage("corrupt_header", f"invalid tar header ({exc})", offset)
            return
        first = False
        data_start = offset + BLOCK
        size = info.size
        problem = _size_problem(size, "size field") or (_size_problem(sparse_size, "sparse size") if sparse_size is not None else None)
        has_data = info.type in tarfile.REGULAR_TYPES or info.type not in tarfile.SUPPORTED_TYPES
        if not problem and (has_data or info.type in _EXTENDED_TYPES) and block[124] in (0x80, 0xFF) \
                and archive_size is not None and data_start + size > archive_size:
            problem = f"base-256 size field {size} is past the end of the archive ({archive_size} bytes)"
        if problem:
            yield Damage("corrupt_header", problem, header_offset)
            return
        if info.type in _EXTENDED_TYPES:
            if size > MAX_EXTENDED_HEADER:
                yield Damage("corrupt_header", f"extended header of {size} bytes (limit {MAX_EXTENDED_HEADER})", header_offset)
                return
            meta = source.read_at(data_start, size)
            if len(meta) < size:
                yield Damage("truncated_archive", "extended header cut short", header_offset)
                return
            offset = data_start + _round_up(size)
            if info.type != tarfile.XGLTYPE and chain_start is None:
                chain_start = header_offset
            if info.type == tarfile.GNUTYPE_LONGNAME:
                chain.append({"": meta.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")})
            elif info.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
                chain.append(_parse_pax(meta))
                local_pax = True
            elif info.type == tarfile.XGLTYPE:
                global_pax.update(_parse_pax(meta))
            continue
        if sparse_size is not None:  # old GNU sparse: more sparse maps may follow the header, one block each
            extended = block[482]
            while extended:
                more = source.read_at(data_start, BLOCK)
                if len(more) < BLOCK:
                    yield Damage("truncated_archive", "GNU sparse header cut short", header_offset)
                    return
                extended = more[504]
                data_start += BLOCK
        named = _extended_name_and_size(info, size if sparse_size is None else sparse_size, global_pax, chain,
                                        header_offset)
        if isinstance(named, Damage):
            yield named
            return
        name, reported = named
        merged = {k: v for records in [global_pax, *chain] for k, v in records.items()}
        is_sparse = has_data and (sparse_size is not None or "GNU.sparse.map" in merged or "GNU.sparse.size" in merged
                                  or (merged.get("GNU.sparse.major"), merged.get("GNU.sparse.minor")) == ("1", "0"))
        data_offset = data_start
        if has_data and (merged.get("GNU.sparse.major"), merged.get("GNU.sparse.minor")) == ("1", "0"):
            end = _sparse_map_end(source, data_start, size)
            if isinstance(end, Damage):
                yield end
                return
            data_offset = end
        data_end = data_start + size if has_data else data_start
        if local_pax and "size" in merged and has_data:  # a PAX size replaces the header's, as in tarfile
            data_end = data_offset + reported
        offset = data_start + _round_up(data_end - data_start)
        chain, local_pax = [], False
        if chain_start is not None:
            header_offset, chain_start = chain_start, None
        regular = info.type in REGULAR_TYPES and not is_sparse
        type_name = "file" if regular else "sparse" if is_sparse else _TYPE_NAMES.get(
            info.type, "type_" + info.type.decode("ascii", "backslashreplace"))
        member = Member(name, header_offset, data_offset, reported, regular, type_name, int(info.mtime))
        if archive_size is not None and data_end > archive_size:
            # The header survived but the data is cut: list the member as damaged, then stop.
            member.truncated = True
            yield member
            yield Damage("truncated_archive", f"member {name!r} needs {data_end} bytes, archive has {archive_size}",
                         header_offset)
            return
        if with_data and regular and max_data is not None and reported > max_data:
            member.too_large = True
        elif with_data and regular:
            data = source.read_at(data_offset, reported)
            if len(data) < reported:
                member.truncated = True
                yield member
                yield Damage("truncated_archive", f"member {name!r} cut at {len(data)} of {reported} bytes", header_offset)
                return
            member.data = data
        yield member


def iter_members(uri: str, size: int | None = None, with_data: bool = False,
                 coalesce_gap: int = DEFAULT_COALESCE_GAP, max_data: int | None = None,
                 access: ArchiveAccess | None = None) -> Iterator[Member | Damage]:
    """Members of one archive, local or S3, followed by a Damage if it is damaged.

    ``with_data=True`` streams the archive once (one GET) and attaches each
    regular member's bytes, up to ``max_data`` (larger ones are marked
    ``too_large`` and skipped); otherwise only headers are read: by seeking locally,
    by coalesced ranged reads on S3. Storage errors become a Damage too, except
    NotRestoredError, which callers report as ``not_restored``. ``access``: the input credentials
    (``io.clients.ArchiveAccess``).
    """
    try:
        if size is None:
            info = listing.head(uri, access)
            if info is None:
                yield Damage("not_found", "archive does not exist", 0)
                return
            size = info.size
        if size == 0:
            yield Damage("empty_archive", "archive is 0 bytes", 0)
            return
        if with_data:
            with reads.open_read(uri, access=access) as stream:
                yield from walk(StreamSource(stream), size, True, uri, max_data)
        elif uris.is_s3(uri):
            yield from walk(RangedSource(uri, size, coalesce_gap, access), size, False, uri)
        else:
            src = LocalSeekSource(uri)
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


def read_member(uri: str, data_offset: int, size: int, access: ArchiveAccess | None = None) -> bytes:
    """One member's bytes by a single ranged read."""
    data = reads.read_range(uri, data_offset, size, access)
    if len(data) < size:
        raise ArchiveError("truncated_archive", f"member at {data_offset} cut at {len(data)} of {size} bytes", uri=uri)
    return data
