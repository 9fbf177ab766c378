"""Forwarding a task's written instances by STOW-RS, their ledger rows completed with each one's result."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterable, Iterator

from ..dicom.part10 import Part10
from ..records.ledger import LEDGER_NAMES
from ..stow.client import StowClient, StowItem, StowResult
from ..stow.settings import StowAuth, StowSettings

log = logging.getLogger(__name__)

_STATUS, _REASON = LEDGER_NAMES.index("stow_status"), LEDGER_NAMES.index("stow_reason")


class StowForward:
    """Hands written instances to the STOW-RS batcher and completes their ledger rows with the results.

    Writer threads only queue (``add``); the task's own thread feeds the batcher (``ready``, ``flush``), which
    sends a batch as soon as one is full, so the HTTP session is never shared between threads.
    """

    def __init__(self, settings: StowSettings, auth: StowAuth | None) -> None:
        self.client = StowClient(settings, auth=auth)
        self.batcher = self.client.batcher()
        self.lock = threading.Lock()
        self.queued: list[tuple[str, bytes, tuple]] = []
        self.waiting: dict[int, tuple] = {}  # the rows of instances in the batcher, by key
        self.keys = itertools.count()

    def add(self, uid: str, obj: Part10, row: tuple) -> None:
        """Queue a written instance and its ledger row (any thread)."""
        data = obj.tobytes()
        with self.lock:
            self.queued.append((uid, data, row))

    def ready(self) -> Iterator[tuple]:
        """Feed the queue to the batcher; the rows of the batches it sent come back completed."""
        with self.lock:
            queued, self.queued = self.queued, []
        for uid, data, row in queued:
            key = next(self.keys)
            self.waiting[key] = row
            yield from self._completed(self.batcher.add(StowItem(uid, data, key)))

    def flush(self) -> Iterator[tuple]:
        """Send everything left; every row comes back completed."""
        yield from self.ready()
        yield from self._completed(self.batcher.flush())
        for row in self.waiting.values():  # no result came back for these
            yield _with_stow(row, "failed", "no result")
        self.waiting.clear()
        self.client.close()

    def _completed(self, results: Iterable[StowResult]) -> Iterator[tuple]:
        for r in results:
            row = self.waiting.pop(r.key, None)
            if row is not None:
                yield _with_stow(row, r.status, r.reason)


def _with_stow(row: tuple, status: str, reason: str | None) -> tuple:
    values = list(row)
    values[_STATUS], values[_REASON] = status, reason or None
    return tuple(values)
