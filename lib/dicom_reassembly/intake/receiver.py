"""The intake's core, shared by ``listen`` (C-STORE) and ``serve`` (STOW-RS): spool, check, store, record, forward.

For each instance, in this order:

1. its bytes go to a create-exclusive spool file (``spool``), fsynced: from here on nothing is lost;
2. it is checked with the reassembly's header rules (``validation``); a refused one is deleted from the
   spool and gets a ledger row (``invalid_header``) and an error status for the sender;
3. it is written to ``--out`` as received, under the job's key template, idempotently
   (``reassembly``'s write: an identical object already there is kept, a different one is a ``conflict``);
4. its ledger row (status ``received``) and catalogue row are queued in the state file (``state``);
5. with a STOW-RS URL it waits there for the forwarder (``forwarder``), and its spool file is deleted once
   sent; without one the spool file is deleted at once.

At start, ``recover`` picks up every complete spool file an earlier process left.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..dicom.part10 import Part10
from ..errors import ReassemblyError
from ..io import uris, writes
from ..reassembly.writes import output_key, write_once
from ..records import catalog
from ..records.ledger import ledger_row, row_dict
from .forwarder import Forwarder
from .records import Recorder
from .spool import Spool
from .state import IntakeState
from .validation import OUT_OF_RESOURCES, SUCCESS, Refused, check_dataset, read_dataset

log = logging.getLogger(__name__)

RECEIVED = "received"
CONFLICT = "conflict"


@dataclass(frozen=True)
class IntakeSettings:
    """Where received instances go and how they are forwarded. ``stow`` None: no forwarding."""

    out: str
    ledger: str
    catalog: str
    run_id: str
    key_template: str = "{sop_instance_uid}.dcm"
    write_options: writes.WriteOptions = writes.WriteOptions()
    stow: Any = None  # stow.StowSettings
    max_backlog: int = 10000  # instances waiting to be forwarded before new ones are refused (0xA700)
    queue_size: int = 1000  # the forwarder's in-memory queue; more wait in the state file
    retry_base: float = 1.0
    retry_max: float = 60.0


@dataclass(frozen=True)
class Outcome:
    """What happened to one instance: the DIMSE status to answer, and a one-line reason unless it succeeded."""

    status: int
    reason: str | None = None
    sop_instance_uid: str | None = None
    output_uri: str | None = None
    sop_class_uid: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


class Intake:
    """Receives instances into the spool and sees each one through to the output, the records and STOW-RS."""

    def __init__(self, settings: IntakeSettings, spool_folder: str, stow_auth: Any = None) -> None:
        self.settings = settings
        self.spool = Spool(spool_folder)
        self.state = IntakeState(self.spool.folder)
        self.recorder = Recorder(self.state, settings.ledger, settings.catalog)
        self.forwarder = (Forwarder(self.state, self.spool, settings.stow, settings.run_id, stow_auth,
                                    settings.queue_size, settings.retry_base, settings.retry_max)
                          if settings.stow is not None else None)

    # -- lifecycle

    def start(self) -> int:
        """Start the recorder and forwarder, then pick up what an earlier process left; returns that count."""
        self.spool.remove_partials()
        self.recorder.start()
        if self.forwarder is not None:
            self.forwarder.start()
        return self.recover()

    def recover(self) -> int:
        """Process every complete spool file: forward the waiting ones, store and record the others."""
        names = self.spool.complete()
        waiting = self.state.waiting_names()
        for name in waiting - set(names):
            self.state.drop_waiting(name)  # its file is gone: it was forwarded just before a crash
        for name in names:
            if name in waiting and self.forwarder is not None:
                self.forwarder.enqueue(name)
            else:
                outcome = self.process(name, "spool")
                log.info("picked up %s from the spool: %s", name, outcome.reason or "stored")
        if names:
            log.warning("spool %s: picked up %d instance(s) left by an earlier run", self.spool.folder, len(names))
        return len(names)

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Drain the forwarder's queue (up to ``drain_timeout`` seconds), record everything, close the state."""
        if self.forwarder is not None:
            self.forwarder.stop(drain_timeout)
        self.recorder.stop()
        self.state.close()

    def flush_records(self) -> int:
        """Append queued ledger and catalogue rows now (``serve`` does so before answering a STOW-RS)."""
        return self.recorder.flush()

    # -- one instance

    def backlog_full(self) -> bool:
        """True when so many instances wait to be forwarded that new ones must be refused."""
        return self.forwarder is not None and self.state.backlog() >= self.settings.max_backlog

    def receive(self, chunks: Iterable[bytes | memoryview], source: str, sop_class_uid: str | None = None,
                sop_instance_uid: str | None = None) -> Outcome:
        """Spool a Part 10 byte stream and process it."""
        if self.backlog_full():
            return Outcome(OUT_OF_RESOURCES, "out_of_resources: the forward backlog is full; retry later",
                           sop_instance_uid)
        try:
            path = self.spool.put(chunks)
        except ReassemblyError as exc:
            log.error("cannot spool an instance: %s", exc)
            return Outcome(OUT_OF_RESOURCES, exc.one_line(), sop_instance_uid)
        return self.process(Spool.name_of(path), source, sop_class_uid, sop_instance_uid)

    def process(self, name: str, source: str, sop_class_uid: str | None = None,
                sop_instance_uid: str | None = None, admit: Callable[[Any], Outcome | None] | None = None) -> Outcome:
        """Check, store, record and queue one complete spool file; returns the answer for its sender.

        ``admit(dataset)`` may refuse a valid instance (``serve``: a patient outside the caller's token);
        such a refusal is not a data problem and gets no ledger row.
        """
        path = self.spool.path_of(name)
        base: dict[str, Any] = {"sop_instance_uid": sop_instance_uid, "header_archive": source}
        try:
            ds = read_dataset(path)
            check_dataset(ds, sop_class_uid, sop_instance_uid)
        except Refused as exc:
            self._refuse(name, "invalid_header", exc.one_line(), base)
            return Outcome(exc.dimse_status, exc.one_line(), sop_instance_uid, sop_class_uid=sop_class_uid)
        if admit is not None:
            refusal = admit(ds)
            if refusal is not None:
                log.warning("not admitted: %s", refusal.reason)
                self.spool.remove(name)
                return refusal
        uid = str(ds.SOPInstanceUID)
        item = {"sop_instance_uid": uid, "study_instance_uid": str(ds.StudyInstanceUID),
                "series_instance_uid": str(ds.SeriesInstanceUID), "modality": str(ds.get("Modality", "") or "")}
        base.update(sop_instance_uid=uid, study_instance_uid=item["study_instance_uid"],
                    series_instance_uid=item["series_instance_uid"])
        uri = uris.join_uri(self.settings.out, output_key(self.settings.key_template, item))
        ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
        attributes = catalog.attributes_from_dataset(ds)
        del ds  # the pixels are not needed again: the file is written as it was spooled
        try:
            status, conflict, size, checksum = self._write(path, uri, uid, ts)
        except ReassemblyError as exc:
            log.error("cannot store %s at %s: %s", uid, uri, exc)
            self._refuse(name, "failed", exc.one_line(), base)
            return Outcome(OUT_OF_RESOURCES, exc.one_line(), uid, uri, sop_class_uid)
        if status == CONFLICT:
            reason = f"conflict: {conflict}"
            self._refuse(name, CONFLICT, reason, base)
            return Outcome(0xC000, reason, uid, uri, sop_class_uid)
        base.update(output_uri=uri, output_bytes=size, output_checksum=checksum, transfer_syntax=ts)
        reason = "identical object already stored" if status == "skipped_existing" else None
        row = catalog.build_catalog_row(attributes, transfer_syntax=ts, output_uri=uri, output_bytes=size,
                                        output_checksum=checksum, run_id=self.settings.run_id, status=RECEIVED,
                                        header_archive=source)
        if self.forwarder is None:
            self.state.record([self._ledger(RECEIVED, reason, base)], [row])
            self.spool.remove(name)
        else:
            self.state.add_waiting(name, uid, base, [self._ledger(RECEIVED, reason, base, stow_status="pending")],
                                   [row])
            self.forwarder.enqueue(name)
        return Outcome(SUCCESS, None, uid, uri, str(attributes.get("sop_class_uid") or ""))

    # -- helpers

    def _ledger(self, status: str, reason: str | None, base: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return row_dict(ledger_row(self.settings.run_id, status, reason, **{**base, **extra}))

    def _refuse(self, name: str, status: str, reason: str, base: dict[str, Any]) -> None:
        """Nothing is stored: the spool file goes, and the ledger says why (the sender keeps its copy)."""
        log.warning("refused %s: %s", base.get("sop_instance_uid") or name, reason)
        self.state.record([self._ledger(status, reason, base)])
        self.spool.remove(name)

    def _write(self, path: str, uri: str, uid: str, ts: str) -> tuple[str, str | None, int, str]:
        """Write the spool file to ``uri`` with reassembly's create-exclusive write: (status, reason, bytes, checksum).

        The file is mapped, not read into memory. A different object already at the key is a conflict
        and is never replaced.
        """
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    sha = hashlib.sha256(view).hexdigest()
                    obj = Part10(uid, [view], size, sha, ts, 1)
                    outcome = write_once(uri, obj, options=self.settings.write_options)
                    obj.parts = []
                finally:
                    view.release()
        return outcome.status, outcome.reason, size, f"sha256:{sha}"
