"""Where the tar walker's bytes come from: one forward stream, a local file it seeks in, or an S3 object read by
ranged GETs that coalesce small gaps. Each answers ``read_at(offset, n)``."""

from __future__ import annotations

from typing import Any

from ..errors import ArchiveError
from . import reads
from .clients import ArchiveAccess

BLOCK = 512  # a tar header block


class StreamSource:
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
        data = reads.read_exact(self.stream, n)
        self.pos += len(data)
        return data


class LocalSeekSource:
    """Random access to a local file: headers are read by seeking."""

    def __init__(self, path: str) -> None:
        try:
            self.f = open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise reads.translate_os_error(exc, path) from exc
        reads.io_counter.record(path)
        self.path = path

    def read_at(self, offset: int, n: int) -> bytes:
        self.f.seek(offset)
        data = self.f.read(n)
        reads.io_counter.record(self.path, len(data), open_=False)
        return data

    def close(self) -> None:
        self.f.close()


class RangedSource:
    """Headers of a remote archive by ranged GETs, coalescing small gaps.

    When members are small, one window spans many headers; when they are large,
    each GET fetches a few header blocks only, so member data is not read.
    """

    def __init__(self, uri: str, size: int, coalesce_gap: int, access: ArchiveAccess | None = None) -> None:
        self.uri = uri
        self.access = access
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
        self.buf = reads.read_range(self.uri, offset, window, self.access)
        self.buf_start = offset
        return self.buf[:n]
