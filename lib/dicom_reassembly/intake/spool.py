"""The spool: a local folder where each received instance lands before anything else happens to it.

A file is created exclusively (``O_CREAT | O_EXCL``) under a random name (122 random bits) ending
``.partial``, written, synced to disk, then renamed to the same name ending ``.dcm``, and the folder is
synced so the new name survives a power cut. So a ``.dcm`` file in the spool is always complete, and a
``.partial`` one is a receive that never finished: its sender got no success, and it is removed at start.
A ``.dcm`` file is deleted only once its instance is safe (see ``receiver``), so at restart every
``.dcm`` file left is work to pick up again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterable

from ..errors import StorageError

log = logging.getLogger(__name__)

PARTIAL = ".partial"
COMPLETE = ".dcm"


class SpoolFile:
    """One file being written into the spool; ``commit`` makes it visible as complete."""

    def __init__(self, folder: str) -> None:
        self.name = uuid.uuid4().hex
        self.folder = folder
        self.partial = os.path.join(folder, self.name + PARTIAL)
        self.path = os.path.join(folder, self.name + COMPLETE)
        self.size = 0
        try:
            self.fd: int | None = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise StorageError("spool_unwritable", exc.strerror or type(exc).__name__, uri=folder) from exc

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes (a short write is retried until all are written)."""
        view = memoryview(data).cast("B")
        try:
            while view:
                n = os.write(self.fd, view)  # type: ignore[arg-type]
                view = view[n:]
                self.size += n
        except OSError as exc:
            self.abort()
            raise StorageError("spool_unwritable", exc.strerror or type(exc).__name__, uri=self.folder) from exc

    def commit(self) -> str:
        """fsync, then publish under the ``.dcm`` name; returns its path."""
        try:
            os.fdatasync(self.fd)  # type: ignore[arg-type]
            os.close(self.fd)  # type: ignore[arg-type]
            self.fd = None
            # A rename, not link + unlink: one metadata operation fewer per instance (measured: unlink costs
            # ~2 ms here). The .dcm name is as random as the exclusive .partial one, so it replaces nothing.
            os.rename(self.partial, self.path)
            _fsync_folder(self.folder)
        except OSError as exc:
            self.abort()
            raise StorageError("spool_unwritable", exc.strerror or type(exc).__name__, uri=self.folder) from exc
        return self.path

    def abort(self) -> None:
        """Close and remove what was written."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.partial)


def _fsync_folder(folder: str) -> None:
    """Make the new name durable: without it a crash can lose the link although the data was synced."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The spool folder."""

    def __init__(self, folder: str) -> None:
        self.folder = os.path.abspath(folder)
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as exc:
            raise StorageError("spool_unwritable", exc.strerror or type(exc).__name__, uri=self.folder) from exc
        if not os.access(self.folder, os.W_OK):
            raise StorageError("spool_unwritable", "permission denied", uri=self.folder)

    def create(self) -> SpoolFile:
        """A new exclusive file to write into."""
        return SpoolFile(self.folder)

    def put(self, chunks: Iterable[bytes | memoryview]) -> str:
        """Write ``chunks`` as one complete spool file; returns its path."""
        f = self.create()
        for chunk in chunks:
            f.write(chunk)
        return f.commit()

    def path_of(self, name: str) -> str:
        """The complete file's path for a spool name."""
        return os.path.join(self.folder, name + COMPLETE)

    @staticmethod
    def name_of(path: str) -> str:
        """The spool name of a file path."""
        return os.path.basename(path)[: -len(COMPLETE)]

    def remove(self, name: str) -> None:
        """Delete a complete file; already gone is fine."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path_of(name))

    def complete(self) -> list[str]:
        """Names of the complete files, oldest first."""
        entries = [e for e in os.scandir(self.folder) if e.is_file() and e.name.endswith(COMPLETE)]
        entries.sort(key=lambda e: (e.stat().st_mtime_ns, e.name))
        return [e.name[: -len(COMPLETE)] for e in entries]

    def remove_partials(self) -> int:
        """Remove unfinished receives left by a process that died; call only before receiving."""
        n = 0
        for e in os.scandir(self.folder):
            if e.is_file() and e.name.endswith(PARTIAL):
                os.unlink(e.path)
                n += 1
        if n:
            log.warning("spool %s: removed %d unfinished receive(s) from an earlier run", self.folder, n)
        return n
