"""Reading objects: forward-only streams over byte ranges (one GET on S3), whole small objects, and I/O counters."""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
from typing import Any

from ..errors import NotFoundError, ReassemblyError, StorageError
from .clients import ArchiveAccess, client_for, s3_call
from .uris import is_s3, split_s3

log = logging.getLogger(__name__)


def translate_os_error(exc: OSError, path: str) -> ReassemblyError:
    """Map a local OSError onto our typed errors, keeping its cause: permission, broken link, absence."""
    if isinstance(exc, PermissionError):
        return StorageError("access_denied", "permission denied", uri=path)
    if exc.errno == errno.ELOOP:
        return NotFoundError("broken_link", "too many levels of symbolic links (a link loop)", uri=path)
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return NotFoundError("broken_link", f"symbolic link to {target!r}, which does not exist", uri=path)
        return NotFoundError("not_found", "no such file", uri=path)
    return StorageError("os_error", exc.strerror or type(exc).__name__, uri=path)


class _Counter:
    """Process-wide I/O counters, so benchmarks and tests can see what was read."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gets = 0
        self.bytes_read = 0
        self.opens: dict[str, int] = {}

    def record(self, uri: str, nbytes: int = 0, open_: bool = True) -> None:
        with self.lock:
            if open_:
                self.gets += 1
                self.opens[uri] = self.opens.get(uri, 0) + 1
            self.bytes_read += nbytes

    def reset(self) -> None:
        with self.lock:
            self.gets = 0
            self.bytes_read = 0
            self.opens = {}


io_counter = _Counter()


class _CountingReader:
    """Wrap a readable stream to count bytes read into ``io_counter``."""

    def __init__(self, raw: Any, uri: str) -> None:
        self.raw = raw
        self.uri = uri

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read() if n is None or n < 0 else self.raw.read(n)
        io_counter.record(self.uri, len(data), open_=False)
        return data

    @property
    def maps_in_place(self) -> bool:
        """Whether ``read_view`` maps the source's pages instead of copying them into memory."""
        return hasattr(self.raw, "read_view")

    def read_view(self, n: int) -> Any:
        """Up to ``n`` bytes as a view of the source's pages (only when ``maps_in_place``)."""
        data = self.raw.read_view(n)
        io_counter.record(self.uri, len(data), open_=False)
        return data

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> _CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _LimitedFile:
    """A local file window [start, end) that reads like a stream."""

    def __init__(self, path: str, start: int, end: int | None) -> None:
        self.f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.size = os.fstat(self.f.fileno()).st_size
        self.f.seek(start)
        self.remaining = None if end is None else max(0, end - start)

    def read_view(self, n: int) -> Any:
        """Up to ``n`` bytes as a read-only view of the file's pages, without copying them.

        For members too big to hold in memory: the view costs address space,
        not memory, and no temporary copy is written. Views are clamped to the
        file's size at open: archives must not shrink during a run (reading a
        mapped page past the end is fatal).
        """
        pos = self.f.tell()
        n = min(n, max(0, self.size - pos))
        if self.remaining is not None:
            n = min(n, self.remaining)
        if n <= 0:  # mmap would take a length of 0 as "to the end of the file"
            return b""
        base = pos - pos % mmap.ALLOCATIONGRANULARITY
        pages = mmap.mmap(self.f.fileno(), pos - base + n, access=mmap.ACCESS_READ, offset=base)
        self.f.seek(pos + n)
        if self.remaining is not None:
            self.remaining -= n
        return memoryview(pages)[pos - base:]

    def read(self, n: int = -1) -> bytes:
        if self.remaining is None:
            return self.f.read(n)
        if n is None or n < 0 or n > self.remaining:
            n = self.remaining
        data = self.f.read(n)
        self.remaining -= len(data)
        return data

    def close(self) -> None:
        self.f.close()


def open_read(uri: str, start: int = 0, end: int | None = None, access: ArchiveAccess | None = None) -> Any:
    """Open a forward-only stream over bytes [start, end) of an object: one GET on S3 (``access``: see clients)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        r = s3_call(uri, client_for(uri, access).get_object, **kwargs)
        io_counter.record(uri)
        return _CountingReader(r["Body"], uri)
    try:
        reader = _LimitedFile(uri, start, end)
    except OSError as exc:
        raise translate_os_error(exc, uri) from exc
    io_counter.record(uri)
    return _CountingReader(reader, uri)


def read_range(uri: str, start: int, length: int, access: ArchiveAccess | None = None) -> bytes:
    """Read ``length`` bytes at ``start`` with a single ranged read."""
    if length <= 0:
        return b""
    with open_read(uri, start, start + length, access) as stream:
        return read_exact(stream, length)


def read_exact(stream: Any, n: int) -> bytes:
    """Read up to n bytes, looping over short reads; shorter only at end of stream."""
    chunks = []
    got = 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_bytes(uri: str, access: ArchiveAccess | None = None) -> bytes:
    """Read a whole (small) object."""
    with open_read(uri, access=access) as s:
        return s.read()
