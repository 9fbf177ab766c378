"""A pyarrow filesystem that counts what is read through it: files opened and bytes, per file.

Wraps a local filesystem (or any pyarrow one) in ``pyarrow.fs.PyFileSystem``; every read of an opened file passes
through Python and is counted. For measurements and tests only: it is much slower than the filesystem it wraps.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pyarrow as pa
from pyarrow import fs as pafs


class ReadCounter:
    """Bytes read and files opened, in all and per path."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes = 0
        self.reads = 0
        self.opens: Counter[str] = Counter()
        self.bytes_by_path: Counter[str] = Counter()
        self.ranges: list[tuple[str, int, int]] = []  # (path, offset, bytes) of every read

    def add(self, path: str, offset: int, n: int) -> None:
        with self.lock:
            self.bytes += n
            self.reads += 1
            self.bytes_by_path[path] += n
            self.ranges.append((path, offset, n))

    def reset(self) -> None:
        with self.lock:
            self.bytes = self.reads = 0
            self.opens.clear()
            self.bytes_by_path.clear()
            self.ranges.clear()


class _CountedFile:
    """A file object pyarrow's PythonFile can drive: reads are counted."""

    def __init__(self, inner: Any, path: str, counter: ReadCounter) -> None:
        self.inner, self.path, self.counter = inner, path, counter
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        at = self.inner.tell()
        data = self.inner.read() if n is None or n < 0 else self.inner.read(n)
        self.counter.add(self.path, at, len(data))
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.inner.seek(pos, whence)

    def tell(self) -> int:
        return self.inner.tell()

    def size(self) -> int:
        return self.inner.size()

    def close(self) -> None:
        self.closed = True
        self.inner.close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False


class _CountingHandler(pafs.FileSystemHandler):
    def __init__(self, inner: Any, counter: ReadCounter) -> None:
        self.inner, self.counter = inner, counter

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def get_type_name(self) -> str:
        return "counting"

    def normalize_path(self, path: str) -> str:
        return self.inner.normalize_path(path)

    def get_file_info(self, paths: Any) -> Any:
        return self.inner.get_file_info(paths)

    def get_file_info_selector(self, selector: Any) -> Any:
        return self.inner.get_file_info(selector)

    def open_input_file(self, path: str) -> Any:
        with self.counter.lock:
            self.counter.opens[path] += 1
        return pa.PythonFile(_CountedFile(self.inner.open_input_file(path), path, self.counter), mode="r")

    def open_input_stream(self, path: str) -> Any:
        return self.open_input_file(path)

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise OSError("the counting filesystem is read-only")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = _read_only
    move = copy_file = open_output_stream = open_append_stream = _read_only


def counting_filesystem(inner: Any = None) -> tuple[Any, ReadCounter]:
    """(a pyarrow filesystem over ``inner`` (local by default) that counts reads, its counter)."""
    counter = ReadCounter()
    return pafs.PyFileSystem(_CountingHandler(inner or pafs.LocalFileSystem(), counter)), counter
