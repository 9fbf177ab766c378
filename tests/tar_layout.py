"""Tar archives built block by block, so that they can lie, and what each member's fate may be.

Python's ``tarfile`` writes only honest archives; the property tests need size
fields that lie, base-256 sizes, bad checksums, stray zero blocks, garbage and
cuts. ``build_archive`` writes the entries it is given, applies at most one
``Damage`` and returns, for each entry, where it sits and its fate:

- ``intact``: written whole before any damage; the walk must list it, at these offsets.
- ``damaged``: at or after the damage (or the entry is cut); the walk may lose it,
  but only if the archive's own row then carries an error (never silently).
- ``gone``: a cut removed its header: the archive no longer holds it.

Non-regular members (links, directories, FIFOs, devices) have no data, whatever
their size field says, as ``tarfile`` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BLOCK = 512
MTIME = 1_700_000_000
TYPEFLAGS = {"file": b"0", "hardlink": b"1", "symlink": b"2", "char_device": b"3", "block_device": b"4",
             "directory": b"5", "fifo": b"6", "contiguous": b"7"}
NON_REGULAR = ("symlink", "hardlink", "directory", "fifo", "char_device", "block_device")
# Damage that sits between two entries, and damage to one entry's own header. A lone zero block ends tarfile's
# walk without a word; GNU tar warns ("A lone zero block at N"): the members after it may only go with an error.
INSERTED = ("garbage", "lone_zero_block")
IN_HEADER = ("bad_checksum", "base256_size", "base256_huge", "base256_negative", "size_past_end")
DAMAGE_KINDS = (*INSERTED, *IN_HEADER, "truncate")


class ShortRepr:
    """Hypothesis prints a falsifying example through ``_repr_pretty_``: the short repr, not every field."""

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


@dataclass(frozen=True)
class Entry(ShortRepr):
    """One tar member as the generator writes it."""

    name: str
    data: bytes = b""
    type: str = "file"
    claimed_size: int = 0  # the size field of a non-regular member, which tarfile ignores
    naming: str = "ustar"  # a name is stored in the ustar fields (split at '/' when long), or by a GNU 'L' or PAX 'x' header
    pax_size: bool = False  # the real size in a PAX record, 0 in the ustar field

    @property
    def regular(self) -> bool:
        return self.type in ("file", "contiguous")

    def __repr__(self) -> str:
        what = f"{len(self.data)}B" if self.regular else f"{self.type} claims {self.claimed_size}B"
        extra = f" {self.naming}" if self.naming != "ustar" else ""
        return f"Entry({self.name!r} {what}{extra}{' pax-size' if self.pax_size else ''})"


@dataclass(frozen=True)
class Damage(ShortRepr):
    """One thing wrong with an archive: before (inserted) or in (header) entry ``at``, or a cut."""

    kind: str
    at: int = 0
    garbage: bytes = b""
    cut_fraction: float = 0.0  # truncate: the share of the archive's bytes that is kept

    def __repr__(self) -> str:
        if self.kind == "truncate":
            return f"Damage(truncate keeps {self.cut_fraction:.3f})"
        if self.kind == "garbage":
            return f"Damage(garbage {self.garbage[:16]!r}{'...' if len(self.garbage) > 16 else ''} before entry {self.at})"
        return f"Damage({self.kind} at entry {self.at})"


@dataclass
class Placed:
    """Where an entry landed and what may become of it."""

    entry: Entry
    header_offset: int  # start of its record: the first extended header, as tarfile counts it
    data_offset: int
    fate: str  # intact | damaged | gone


def _octal(n: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, n)


def _base256(n: int) -> bytes:
    """GNU base-256 in a 12-byte field: 0x80 then the value, or 0xFF then its two's complement (negative)."""
    if n >= 0:
        return b"\x80" + n.to_bytes(11, "big")
    return b"\xff" + (256**11 + n).to_bytes(11, "big")


def _size_field(size: int, how: str) -> bytes:
    if how == "base256" or size >= 8**11 or size < 0:
        return _base256(size)
    return _octal(size, 12)


def header_block(name: bytes, size_field: bytes, typeflag: bytes, linkname: bytes = b"", prefix: bytes = b"",
                 bad_checksum: bool = False) -> bytes:
    """One ustar header block; ``bad_checksum`` stores a sum that matches neither way tarfile computes it."""
    buf = bytearray(BLOCK)

    def put(offset: int, width: int, value: bytes) -> None:
        buf[offset: offset + len(value[:width])] = value[:width]

    put(0, 100, name)
    put(100, 8, b"0000644\0")
    put(108, 8, b"0001750\0")
    put(116, 8, b"0001750\0")
    put(124, 12, size_field)
    put(136, 12, _octal(MTIME, 12))
    put(148, 8, b" " * 8)
    put(156, 1, typeflag)
    put(157, 100, linkname)
    put(257, 8, b"ustar\x0000")
    put(265, 32, b"fuzz")
    put(297, 32, b"fuzz")
    put(345, 155, prefix)
    checksum = sum(buf) + (1 if bad_checksum else 0)
    put(148, 8, b"%06o\0 " % checksum)
    return bytes(buf)


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def pax_records(records: dict[str, str]) -> bytes:
    """PAX extended header data: ``"<len> <key>=<value>\\n"``, the length counting itself."""
    out = b""
    for key, value in records.items():
        body = f" {key}={value}\n".encode()
        n = len(body) + 1
        while len(str(n).encode()) + len(body) != n:
            n = len(str(n).encode()) + len(body)
        out += str(n).encode() + body
    return out


def _ustar_split(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) when a long name can be split at a '/' into ustar's two fields."""
    for i in range(len(name) - 1, 0, -1):
        if name[i:i + 1] == b"/" and i <= 155 and len(name) - i - 1 <= 100 and len(name) - i - 1 > 0:
            return name[:i], name[i + 1:]
    return None


def entry_blocks(e: Entry, size_field: bytes | None = None, bad_checksum: bool = False) -> tuple[bytes, int]:
    """An entry's blocks (extended headers, header, data) and the offset of its data within them."""
    name = e.name.encode("utf-8", "surrogateescape")
    out = b""
    pax: dict[str, str] = {}
    naming = e.naming
    name_field, prefix = name, b""
    if naming == "ustar" and len(name) > 100:
        split = _ustar_split(name)
        if split is None:
            naming = "pax"
        else:
            prefix, name_field = split
    if naming == "gnu":
        long_name = name + b"\0"
        out += header_block(b"././@LongLink", _octal(len(long_name), 12), b"L") + _padded(long_name)
        name_field = name[:100]
    elif naming == "pax":
        pax["path"] = e.name
        name_field = name[:100]
    size = len(e.data) if e.regular else e.claimed_size
    if e.pax_size:
        pax["size"] = str(size)
    if pax:
        data = pax_records(pax)
        out += header_block(b"PaxHeader/" + name_field[:80], _octal(len(data), 12), b"x") + _padded(data)
    if size_field is None:
        size_field = _size_field(0 if e.pax_size else size, "octal")
    linkname = b"target.json" if e.type in ("symlink", "hardlink") else b""
    out += header_block(name_field, size_field, TYPEFLAGS[e.type], linkname, prefix, bad_checksum)
    data_at = len(out)
    if e.regular:
        out += _padded(e.data)
    return out, data_at


def _damaged_size_field(e: Entry, kind: str) -> bytes:
    true_size = len(e.data) if e.regular else e.claimed_size
    if kind == "base256_size":
        return _base256(true_size)
    if kind == "base256_huge":
        return _base256(2**80 + true_size)
    if kind == "base256_negative":
        return _base256(-(true_size + 512))
    return _octal(8**11 - 1, 12)  # size_past_end: 8 GiB, far past any generated archive


def build_archive(entries: list[Entry], damage: Damage | None, end_blocks: int = 2) -> tuple[bytes, list[Placed]]:
    """The archive's bytes and where each entry went, with its fate."""
    out = bytearray()
    placed: list[Placed] = []
    at = damage.at if damage is not None and damage.kind != "truncate" else len(entries) + 1
    for i, e in enumerate([*entries, None]):
        if i == at and damage is not None and damage.kind in INSERTED:
            out += damage.garbage if damage.kind == "garbage" else b"\0" * BLOCK
        if e is None:
            break
        size_field = bad = None
        if i == at and damage is not None and damage.kind in IN_HEADER:
            bad = damage.kind == "bad_checksum"
            size_field = None if bad else _damaged_size_field(e, damage.kind)
        blocks, data_at = entry_blocks(e, size_field, bool(bad))
        placed.append(Placed(e, len(out), len(out) + data_at, "intact" if i < at else "damaged"))
        out += blocks
    out += b"\0" * (BLOCK * end_blocks)
    data = bytes(out)
    if damage is not None and damage.kind == "truncate":
        keep = int(len(data) * damage.cut_fraction)
        data = data[:keep]
        for p in placed:
            end = p.data_offset + (len(p.entry.data) if p.entry.regular else 0)
            p.fate = "gone" if p.data_offset > keep else ("damaged" if end > keep else "intact")
    return data, placed
