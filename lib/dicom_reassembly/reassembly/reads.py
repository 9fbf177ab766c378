"""Reading the wanted pixel members of one archive: range planning, then one forward pass per range.

One streaming GET when most of an archive is wanted, coalesced ranged GETs when little is; a member too large
for memory is spooled to a temporary file (or mapped in place, locally).
"""

from __future__ import annotations

import itertools
import logging
import mmap
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ArchiveError, ReassemblyError
from ..io import reads, tar_access
from ..io.clients import ArchiveAccess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadTuning:
    """How a task reads an archive: one stream when at least ``stream_fraction`` of it is wanted, else ranges
    joined across gaps up to ``coalesce_gap`` bytes; members above ``large_member_bytes`` are spooled to disk."""

    stream_fraction: float = 0.5
    coalesce_gap: int = tar_access.DEFAULT_COALESCE_GAP
    large_member_bytes: int = 256 * 1024 * 1024


@dataclass
class _Range:
    start: int
    end: int
    items: Iterable[dict[str, Any]]


# A coalesced range holds at most this many work items, so a task's memory stays
# bounded however many members an archive has.
MAX_RANGE_ITEMS = 1024


def plan_reads(items: Iterable[dict[str, Any]], archive_size: int | None, stream_fraction: float,
               coalesce_gap: int) -> Iterator[_Range]:
    """Group an archive's wanted members (sorted by offset) into the GETs that read them, lazily.

    One range from the first wanted member to the archive's last wanted byte
    when most of the archive is wanted (its items stream through, unbuffered);
    otherwise ranges split wherever the gap between members exceeds
    ``coalesce_gap``. The per-archive totals come with the first item
    (``archive_wanted``, ``archive_end``, computed by Spark); without them the
    items are gathered to compute them.
    """
    it = iter(items)
    first = next(it, None)
    if first is None:
        return
    archive_size = archive_size or first.get("pixel_archive_size")
    wanted, end = first.get("archive_wanted"), first.get("archive_end")
    if wanted is None or end is None:
        rest = list(it)
        everything = [first, *rest]
        wanted = sum(i["pixel_size"] for i in everything)
        end = max(i["pixel_offset"] + i["pixel_size"] for i in everything)
        it = iter(rest)
    if archive_size and wanted >= stream_fraction * archive_size:
        yield _Range(first["pixel_offset"], end, itertools.chain([first], it))
        return
    cur = _Range(first["pixel_offset"], first["pixel_offset"] + first["pixel_size"], [first])
    for item in it:
        start, stop = item["pixel_offset"], item["pixel_offset"] + item["pixel_size"]
        if start - cur.end <= coalesce_gap and len(cur.items) < MAX_RANGE_ITEMS:  # type: ignore[arg-type]
            cur.end = max(cur.end, stop)
            cur.items.append(item)  # type: ignore[union-attr]
        else:
            yield cur
            cur = _Range(start, stop, [item])
    yield cur


class Payload:
    """A member's bytes: in memory, or spooled to a temp file and mapped when large."""

    def __init__(self, stream: Any, size: int, large: int) -> None:
        self.file = None
        self.map = None
        if size <= large:
            # Copied, even from a local file: with the archive in the page cache, mapping each member
            # (faults, then an unmap that interrupts the other threads' CPUs) measured slower than the copy.
            self.data: Any = reads.read_exact(stream, size)
            return
        if getattr(stream, "maps_in_place", False):
            # A big member of a local archive is mapped where it lies instead of spooled to a temporary copy.
            self.data = stream.read_view(size)
            return
        self.file = tempfile.TemporaryFile(prefix="dcm-member-")  # noqa: SIM115 - closed by close()
        left = size
        while left:
            chunk = stream.read(min(left, 8 << 20))
            if not chunk:
                break
            self.file.write(chunk)
            left -= len(chunk)
        self.file.flush()
        self.map = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ) if size - left else None
        self.data = self.map if self.map is not None else b""

    def __len__(self) -> int:
        return len(self.data)

    def close(self) -> None:
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:  # views of it still alive (a caller kept parts): the GC closes it
                log.debug("member map still referenced; left to the garbage collector")
        if self.file is not None:
            self.file.close()
        # A mapped view unmaps when its last reference goes (the written parts may still hold one).
        self.data = b""


def _skip(stream: Any, n: int) -> None:
    while n > 0:
        chunk = stream.read(min(n, 1 << 20))
        if not chunk:
            raise ArchiveError("truncated_archive", "archive ended before a wanted member")
        n -= len(chunk)


def read_archive_members(uri: str, items: Iterable[dict[str, Any]], archive_size: int | None, tuning: ReadTuning,
                         access: ArchiveAccess | None = None
                         ) -> Iterator[tuple[dict[str, Any], Any, ReassemblyError | None]]:
    """Yield (item, payload or None, error) for each wanted member, in one forward pass per range.

    ``access`` carries the input credentials for the partner's bucket (see ``io.clients.ArchiveAccess``).
    """
    for rng in plan_reads(items, archive_size, tuning.stream_fraction, tuning.coalesce_gap):
        pending = iter(rng.items)
        try:
            stream = reads.open_read(uri, rng.start, rng.end, access)
        except ReassemblyError as exc:
            for it in pending:
                yield it, None, exc
            continue
        with stream:
            pos = rng.start
            for it in pending:
                try:
                    if it["pixel_offset"] < pos:  # two UIDs naming one member: read it again, separately
                        again = _ReadOnce(reads.read_range(uri, it["pixel_offset"], it["pixel_size"], access))
                        yield it, Payload(again, it["pixel_size"], tuning.large_member_bytes), None
                        continue
                    _skip(stream, it["pixel_offset"] - pos)
                    payload = Payload(stream, it["pixel_size"], tuning.large_member_bytes)
                    pos = it["pixel_offset"] + len(payload)
                    if len(payload) < it["pixel_size"]:
                        payload.close()
                        raise ArchiveError("truncated_archive", f"member cut at {len(payload)} of {it['pixel_size']} bytes")
                    yield it, payload, None
                except Exception as exc:  # the rest of this range is lost (a cut archive, a dropped connection), not the run
                    err = exc if isinstance(exc, ReassemblyError) else ArchiveError(
                        "read_error", f"{type(exc).__name__}: {str(exc)[:200]}", uri=uri)
                    yield it, None, err
                    for rest in pending:
                        yield rest, None, err
                    break


class _ReadOnce:
    """A stream over bytes already read (one member, by its own ranged read)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        n = len(self.data) - self.pos if n < 0 else n
        out = self.data[self.pos: self.pos + n]
        self.pos += len(out)
        return out
