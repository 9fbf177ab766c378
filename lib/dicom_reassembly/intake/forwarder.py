"""The forwarder: one background thread that sends stored instances by STOW-RS (``stow.StowClient``).

Instances reach it through a bounded in-memory queue of spool names; when the queue is full they simply
wait in the state file, which the thread scans whenever the queue is empty (so the queue bounds memory,
never what is accepted). The backlog itself is bounded by ``IntakeSettings.max_backlog``.

A failed instance stays in the spool, its ``stow_status`` becomes ``failed`` in the ledger, and it is
tried again after ``retry_base * 2**attempts`` seconds (at most ``retry_max``), for as long as it takes.
``stop`` drains: what is queued or due is sent once more before the thread ends, within a time limit;
whatever is still unsent is picked up at the next start.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from ..records.ledger import ledger_row, row_dict
from ..stow.client import StowClient, StowItem
from ..stow.settings import StowSettings
from .spool import Spool
from .state import IntakeState

log = logging.getLogger(__name__)


class Forwarder:
    """Sends waiting instances in STOW-RS batches and records each one's result."""

    def __init__(self, state: IntakeState, spool: Spool, settings: StowSettings, run_id: str, auth: Any = None,
                 queue_size: int = 1000, retry_base: float = 1.0, retry_max: float = 60.0) -> None:
        self.state = state
        self.spool = spool
        self.settings = settings
        self.run_id = run_id
        self.auth = auth
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.queue: queue.Queue[str] = queue.Queue(maxsize=max(1, queue_size))
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name="intake-forwarder", daemon=True)
        self.sent = 0
        self.failed = 0

    def enqueue(self, name: str) -> None:
        """Offer a waiting instance; when the queue is full it is found later in the state file."""
        try:
            self.queue.put_nowait(name)
        except queue.Full:
            log.debug("forward queue full; %s waits in the state file", name)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, drain_timeout: float) -> None:
        """Send what is queued or due (for at most ``drain_timeout`` seconds), then end the thread."""
        self._deadline = time.monotonic() + max(0.0, drain_timeout)
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=drain_timeout + self.settings.timeout[1] + 5)
        left = self.state.backlog()
        if left:
            log.warning("forwarder stopped with %d instance(s) still to send; they are sent at the next start", left)

    def _next_batch(self, tried: set[str]) -> list[str]:
        """Up to a batch of names: from the queue first, else those due for a retry in the state file."""
        names: list[str] = []
        limit = self.settings.batch_count
        try:
            names.append(self.queue.get(timeout=0 if self._stopping.is_set() else 0.2))
            while len(names) < limit:
                names.append(self.queue.get_nowait())
        except queue.Empty:
            pass
        if not names:
            names = self.state.due(time.time(), limit, exclude=tried)
        return names

    def _run(self) -> None:
        tried_in_drain: set[str] = set()
        with StowClient(self.settings, auth=self.auth) as client:
            while True:
                if self._stopping.is_set() and time.monotonic() >= self._deadline:
                    return
                names = self._next_batch(tried_in_drain if self._stopping.is_set() else set())
                if not names:
                    if self._stopping.is_set():
                        return  # drained: nothing queued and nothing due
                    continue
                if self._stopping.is_set():
                    tried_in_drain.update(names)
                try:
                    self._send(client, names)
                except Exception:  # a fault costs one batch a retry, never the thread
                    log.exception("forwarding a batch failed unexpectedly; it will be retried")
                    time.sleep(min(self.retry_max, self.retry_base))

    def _send(self, client: StowClient, names: list[str]) -> None:
        now = time.time()
        items: list[StowItem] = []
        rows: dict[str, dict[str, Any]] = {}
        for name in dict.fromkeys(names):
            row = self.state.waiting(name)
            if row is None or row["next_attempt"] > now:
                continue  # already forwarded, or a failed one queued again before its time
            rows[name] = row
            items.append(StowItem(row["sop_instance_uid"], self.spool.path_of(name), name))
        if not items:
            return
        for result in client.send(items):
            name = result.key
            row = rows[name]
            if result.ok:
                self.state.finish(name, [self._ledger(row, "sent", result.reason)])
                self.spool.remove(name)
                self.sent += 1
            else:
                wait = min(self.retry_max, self.retry_base * 2 ** row["attempts"])
                # A ledger row when the status changes, not at every retry.
                ledger = [self._ledger(row, "failed", result.reason)] if row["stow_status"] != "failed" else []
                self.state.retry_later(name, result.reason or "failed", time.time() + wait, ledger)
                self.failed += 1
                log.warning("STOW-RS of %s failed (%s); retry in %.1fs", row["sop_instance_uid"], result.reason, wait)

    def _ledger(self, row: dict[str, Any], stow_status: str, stow_reason: str | None) -> dict[str, Any]:
        return row_dict(ledger_row(self.run_id, "received", None, **{**row["base"], "stow_status": stow_status,
                                                                      "stow_reason": stow_reason}))
