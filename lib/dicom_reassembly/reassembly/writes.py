"""Writing instances: the key an instance goes to, the write that never replaces another instance's object, and
the bounded pool of writer threads.

Every write is create-exclusive first (``write_parts(if_absent=True)``: a conditional PUT on S3, a hard link
locally), so of two writers racing for one key exactly one writes. When the key is taken:

- the same object (size and SHA-256) is ``skipped_existing``;
- an object of another instance, or one whose instance cannot be read, is a ``conflict`` naming both
  instances, and stays as it is;
- a different object of the same instance is replaced only when asked (``replace_same_instance``, the
  jobs' ``skip_existing: false``, the CLI's ``--replace``); otherwise it is a ``conflict`` too.

The instance an object holds is read from its S3 user metadata (``sop-instance-uid``, written with every
object), else from its own header (the first 64 KiB).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from ..dicom.part10 import Part10
from ..dicom.uids import uid_problem
from ..errors import AlreadyExistsError, NotFoundError, ReassemblyError
from ..io import listing, reads, uris, writes
from ..io.listing import ObjectInfo
from ..io.throttle import TokenBucket

log = logging.getLogger(__name__)

INSTANCE_METADATA = "sop-instance-uid"  # S3 user metadata: hyphens, because proxies may drop underscored headers
HEADER_BYTES = 64 * 1024  # enough for the file meta and SOPInstanceUID, which come first
_MODALITY = re.compile(r"[A-Z0-9_]{1,16}")


@dataclass(frozen=True)
class WritePolicy:
    """Where and how a run writes its objects: small and picklable (it travels to the executors).

    ``out`` None writes nothing (the ledger still says what would have been written). ``put_rate`` is writes per
    second per task (0: no limit). ``existing_check``: on S3, ``conditional`` PUTs first and HEADs only when
    refused; ``head`` looks first (cheaper when re-running over mostly written outputs).
    """

    out: str | None
    key_template: str = "{sop_instance_uid}.dcm"
    write_options: writes.WriteOptions = writes.WriteOptions()
    skip_existing: bool = True
    existing_check: str = "conditional"
    put_rate: float = 0.0
    upload_threads: int = 8


def output_key(template: str, item: dict[str, Any]) -> str:
    """The object key for an instance from the configured template."""
    uid = item["sop_instance_uid"]  # validated when the manifest was built

    def safe_uid(value: str | None, missing: str) -> str:
        return value if value and uid_problem(value) is None else missing

    modality = item.get("modality") or ""
    fields = {
        "sop_instance_uid": uid,
        # Header values reach the key: only well-formed ones, so none can climb out of --out.
        "study_instance_uid": safe_uid(item.get("study_instance_uid"), "unknown_study"),
        "series_instance_uid": safe_uid(item.get("series_instance_uid"), "unknown_series"),
        "modality": modality if _MODALITY.fullmatch(modality) else "OT",
        "uid_hash": hashlib.sha256(uid.encode()).hexdigest()[:4],
    }
    return template.format(**fields)


@dataclass(frozen=True)
class WriteOutcome:
    """What became of one write: ``written``, ``skipped_existing`` or ``conflict``, and why."""

    status: str
    reason: str | None = None


def write_once(uri: str, obj: Part10, *, replace_same_instance: bool = False, existing_check: str = "conditional",
               options: writes.WriteOptions | None = None,
               before_write: Callable[[], None] = lambda: None) -> WriteOutcome:
    """Write ``obj`` to ``uri`` unless the key holds something else; see the module docstring.

    On S3, ``existing_check="head"`` looks first (a HEAD is cheaper than a refused PUT when re-running over
    mostly written outputs); the write itself stays conditional either way. ``before_write`` is called before
    each write request (a rate limit).
    """
    options = options or writes.WriteOptions()
    uid = obj.sop_instance_uid
    metadata = {INSTANCE_METADATA: uid}
    if existing_check == "head" and uris.is_s3(uri):
        found = _existing(uri)
        if found is not None:
            return _settle(uri, obj, found, replace_same_instance, options, before_write)
    for _ in range(3):  # the key can be freed and retaken between our tries; each turn settles or writes
        before_write()
        try:
            writes.write_parts(uri, obj.parts, obj.size, obj.sha256, options, if_absent=True, metadata=metadata)
            return WriteOutcome("written")
        except AlreadyExistsError:
            pass
        found = _existing(uri)
        if found is not None:
            return _settle(uri, obj, found, replace_same_instance, options, before_write)
    return WriteOutcome("conflict", f"{uri} was taken and freed again while {uid} was being written")


def _existing(uri: str) -> ObjectInfo | None:
    """What holds the key, or None when nothing usable does (a dangling link at the key counts as nothing)."""
    try:
        return listing.head(uri)
    except NotFoundError:
        return None


def _settle(uri: str, obj: Part10, found: ObjectInfo, replace_same_instance: bool,
            options: writes.WriteOptions, before_write: Callable[[], None]) -> WriteOutcome:
    """The outcome when ``uri`` already holds an object (``found``: its size and metadata)."""
    uid = obj.sop_instance_uid
    if not replace_same_instance and _same_object(uri, obj, found):
        return WriteOutcome("skipped_existing")
    theirs = instance_at(uri, found.metadata)
    if theirs != uid:
        held = f"SOP Instance UID {theirs}" if theirs else "an object whose SOP Instance UID cannot be read"
        return WriteOutcome("conflict", f"{uri} already holds {held}; not replaced by {uid}")
    if not replace_same_instance:
        return WriteOutcome("conflict", f"{uri} holds a different object of {uid}; not replaced "
                                        "(skip_existing false, or the CLI's --replace, replaces it)")
    before_write()
    writes.write_parts(uri, obj.parts, obj.size, obj.sha256, options, metadata={INSTANCE_METADATA: uid})
    return WriteOutcome("written", "replaced an earlier, different object of this instance")


def _same_object(uri: str, obj: Part10, found: ObjectInfo) -> bool:
    """Whether the object at ``uri`` is byte for byte ``obj``: its recorded SHA-256 on S3, its bytes locally."""
    if found.size != obj.size:
        return False
    if uris.is_s3(uri):
        return found.metadata.get("sha256") == obj.sha256
    h = hashlib.sha256()
    try:
        with open(uri, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return False
    return h.hexdigest() == obj.sha256


def instance_at(uri: str, metadata: Mapping[str, str] | None = None) -> str | None:
    """The SOP Instance UID of the object at ``uri``: from its user metadata, else its header; None if unreadable."""
    uid = (metadata or {}).get(INSTANCE_METADATA)
    if uid:
        return str(uid)
    try:
        head = reads.read_range(uri, 0, HEADER_BYTES)
    except (ReassemblyError, OSError) as exc:
        log.info("cannot read the object at %s: %s", uri, exc)
        return None
    return instance_uid_of(head)


def instance_uid_of(head: bytes) -> str | None:
    """SOPInstanceUID (or the file meta's MediaStorageSOPInstanceUID) from the start of a Part 10 file."""
    from pydicom import dcmread

    try:
        with warnings.catch_warnings():  # a foreign or cut file: None, not a flood of pydicom warnings
            warnings.simplefilter("ignore")
            ds = dcmread(io.BytesIO(head), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            uid = ds.get("SOPInstanceUID") or ds.file_meta.get("MediaStorageSOPInstanceUID")
    except Exception:  # noqa: BLE001 - whatever pydicom makes of a foreign file, we only need "unknown"
        return None
    text = str(uid).strip() if uid else ""
    return text or None


class WriterPool:
    """Runs writes on a bounded thread pool and hands back their ledger rows in order of completion.

    At most twice ``threads`` writes are queued, so a task's memory stays bounded; ``rate`` (writes per second,
    0: no limit) is shared by the pool's threads through ``before_write``.
    """

    def __init__(self, threads: int, rate: float = 0.0) -> None:
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="dcm-put")
        self.limit = threading.BoundedSemaphore(2 * max(1, threads))
        self._bucket = TokenBucket(rate, burst=1) if rate > 0 else None
        self.futures: set[Future] = set()

    def before_write(self) -> None:
        """Wait for the rate limit, if there is one."""
        if self._bucket is not None:
            self._bucket.acquire()

    def submit(self, fn: Callable[[], list[tuple]]) -> None:
        self.limit.acquire()
        fut = self.pool.submit(fn)
        fut.add_done_callback(lambda _f: self.limit.release())
        self.futures.add(fut)

    def done(self, block: bool = False) -> Iterator[tuple]:
        if not self.futures:
            return
        finished, _ = wait(self.futures, timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for fut in finished:
            self.futures.discard(fut)
            yield from fut.result()

    def drain(self) -> Iterator[tuple]:
        while self.futures:
            yield from self.done(block=True)
        self.pool.shutdown(wait=True)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True)
