"""The DICOMweb STOW-RS client: instances sent to ``{url}/studies`` in batches bounded by count and bytes.

The request body is streamed from the caller's bytes and local files, so a 50 MB batch is never joined in
memory. Each instance gets its own result; a request that fails as a whole (after retries) fails every
instance of its batch with one reason code (``http_503``, ``connection_error``...).
"""

from __future__ import annotations

import io
import logging
import os
import random
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Union

import requests
import requests.auth

from ..errors import ReassemblyError, StowError
from ..io.reads import read_bytes
from ..io.uris import is_s3
from .settings import StowAuth, StowSettings
from .wire import MultipartBody, parse_stow_response, retry_after

log = logging.getLogger(__name__)
SENT = "sent"
FAILED = "failed"
Payload = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]


@dataclass(frozen=True)
class StowItem:
    """One instance to send: its SOP Instance UID (None: read from the payload), the
    payload (bytes, a local path or an ``s3://`` URI) and the caller's key (default: the UID)."""

    sop_instance_uid: str | None
    payload: Payload
    key: Any = None


@dataclass(frozen=True)
class StowResult:
    """What happened to one instance. ``reason`` is a code (failures, warnings) or None."""

    key: Any
    sop_instance_uid: str | None
    status: str  # "sent" | "failed"
    reason: str | None = None
    http_status: int | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        """True when the endpoint stored the instance."""
        return self.status == SENT


@dataclass
class Part:
    item: StowItem
    uid: str
    size: int
    data: bytes | memoryview | None = None
    path: str | None = None


def _as_item(obj: Any) -> StowItem:
    if isinstance(obj, StowItem):
        return obj
    if isinstance(obj, tuple) and len(obj) in (2, 3):
        return StowItem(*obj)
    raise StowError("bad_item", "an instance is StowItem or (sop_instance_uid, payload[, key])")


def read_sop_instance_uid(payload: bytes | memoryview | str) -> str:
    """SOP Instance UID from a Part 10 payload (bytes or local path), reading the header only."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    source: Any = io.BytesIO(bytes(payload)) if isinstance(payload, (bytes, bytearray, memoryview)) else payload
    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise StowError("unreadable_dicom", type(exc).__name__) from exc
    uid = ds.get("SOPInstanceUID") or ds.file_meta.get("MediaStorageSOPInstanceUID")
    if not uid:
        raise StowError("no_sop_instance_uid", "the instance has no SOP Instance UID")
    return str(uid)


def _resolve(item: StowItem) -> Part:
    """Size the payload (and load it when remote) so it can join a batch."""
    payload = item.payload
    data: bytes | memoryview | None = None
    path: str | None = None
    if isinstance(payload, (bytes, bytearray, memoryview)):
        data = payload if isinstance(payload, bytes) else memoryview(payload)
        size = data.nbytes if isinstance(data, memoryview) else len(data)
    elif isinstance(payload, (str, os.PathLike)):
        uri = os.fspath(payload)
        if is_s3(uri):
            data = read_bytes(uri)
            size = len(data)
        else:
            try:
                size = os.path.getsize(uri)
            except FileNotFoundError as exc:
                raise StowError("not_found", "no such file", uri=uri) from exc
            except OSError as exc:
                raise StowError("os_error", exc.strerror or type(exc).__name__, uri=uri) from exc
            path = uri
    else:
        raise StowError("bad_payload", f"payload is bytes or a path, not {type(payload).__name__}")
    uid = item.sop_instance_uid or read_sop_instance_uid(data if data is not None else path)  # type: ignore[arg-type]
    return Part(item, uid, size, data, path)


class _BearerAuth(requests.auth.AuthBase):
    """``Authorization: Bearer``; the token stays out of ``repr``."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self._token}"
        return r

    def __repr__(self) -> str:
        return "_BearerAuth(***)"


class _BasicAuth(requests.auth.HTTPBasicAuth):
    """HTTP basic auth whose ``repr`` hides the password."""

    def __repr__(self) -> str:
        return "_BasicAuth(***)"


class StowClient:
    """Sends instances over one ``requests.Session`` (kept-alive connections).

    Not thread-safe: use one client per thread or Spark partition.
    """

    def __init__(self, settings: StowSettings, *, auth: StowAuth | None = None) -> None:
        self.settings = settings
        self._auth = auth if auth is not None else StowAuth.from_env()
        self._session = requests.Session()
        self._session.verify = settings.verify_tls
        self._session.headers["Accept"] = "application/dicom+json"
        # Auth objects rather than a session header: requests would let ~/.netrc override a bare header.
        if self._auth.kind == "bearer":
            self._session.auth = _BearerAuth(self._auth.secret or "")
        elif self._auth.kind == "basic":
            self._session.auth = _BasicAuth(self._auth.user or "", self._auth.secret or "")
        if not settings.verify_tls:
            log.warning("TLS verification is disabled for %s", settings.url)
        self._sleep = time.sleep

    def __repr__(self) -> str:
        return f"StowClient(url={self.settings.url!r}, auth={self._auth.kind!r})"

    __str__ = __repr__

    def __enter__(self) -> StowClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    # -- batching

    def send(self, instances: Iterable[Any]) -> Iterator[StowResult]:
        """Send instances, yielding one result per instance as each batch completes.

        ``instances`` are :class:`StowItem` or ``(sop_instance_uid, payload[, key])``
        tuples; payload is bytes, a local path or an ``s3://`` URI; a None UID is read
        from the payload. Items that cannot be read fail at once (reason ``not_found``,
        ``unreadable_dicom``...) and are yielded before the batch they would have joined.
        """
        batcher = self.batcher()
        for obj in instances:
            yield from batcher.add(obj)
        yield from batcher.flush()

    def batcher(self) -> StowBatcher:
        """A push-style batcher over this client, for loops that cannot be turned into generators."""
        return StowBatcher(self)

    def send_batch(self, parts: list[Part]) -> list[StowResult]:
        """POST one batch (with retries) and map the response onto its instances."""
        s = self.settings
        total = sum(p.size for p in parts)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            boundary = f"dcmreasm-{uuid.uuid4().hex}"
            headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
            retry_reason: str | None = None
            wait: float | None = None
            try:
                # No redirects: the streamed body cannot be replayed, and a 302 would turn the POST into a GET.
                response = self._session.post(s.studies_url, data=MultipartBody(parts, boundary),
                                              headers=headers, timeout=s.timeout, allow_redirects=False)
            except StowError as exc:
                return self._fail_all(parts, exc.reason, None, attempt)
            except requests.exceptions.SSLError:
                return self._fail_all(parts, "tls_error", None, attempt)
            except requests.exceptions.Timeout:
                retry_reason = "timeout"
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError):
                retry_reason = "connection_error"
            except requests.exceptions.RequestException as exc:
                log.warning("STOW-RS request failed: %s", type(exc).__name__)
                return self._fail_all(parts, "request_error", None, attempt)
            else:
                code = response.status_code
                if code == 429 or code >= 500:
                    retry_reason = f"http_{code}"
                    wait = retry_after(response.headers.get("Retry-After"))
                    response.close()
                else:
                    results = self._results(parts, code, response.headers.get("Content-Type", ""),
                                            response.content, attempt)
                    sent = sum(r.ok for r in results)
                    log.info("STOW-RS batch of %d (%d bytes): HTTP %d, %d sent, %d failed, %d attempt(s), %.2fs",
                             len(parts), total, code, sent, len(results) - sent, attempt,
                             time.monotonic() - started)
                    return results
            if attempt > s.max_retries:
                log.warning("STOW-RS batch of %d failed after %d attempt(s): %s", len(parts), attempt, retry_reason)
                return self._fail_all(parts, retry_reason or "request_error",
                                      int(retry_reason[5:]) if retry_reason.startswith("http_") else None, attempt)
            if wait is None:
                ceiling = min(s.backoff_max, s.backoff_base * (2 ** (attempt - 1)))
                wait = ceiling / 2 + random.uniform(0, ceiling / 2)
            log.warning("STOW-RS batch of %d: %s, retry %d/%d in %.2fs",
                        len(parts), retry_reason, attempt, s.max_retries, wait)
            self._sleep(wait)

    @staticmethod
    def _fail_all(parts: list[Part], reason: str, http_status: int | None, attempts: int) -> list[StowResult]:
        return [StowResult(_key(p.item, p.uid), p.uid, FAILED, reason, http_status, attempts) for p in parts]

    @staticmethod
    def _results(parts: list[Part], code: int, content_type: str, body: bytes, attempts: int) -> list[StowResult]:
        """Per-instance results. 4xx bodies are parsed too: Orthanc answers 400 to a
        batch with any failure while listing what it stored."""
        parsed = parse_stow_response(content_type, body)
        ok_status = 200 <= code < 300
        out = []
        for p in parts:
            key = _key(p.item, p.uid)
            if parsed is not None and p.uid in parsed.failed:
                out.append(StowResult(key, p.uid, FAILED, parsed.failed[p.uid], code, attempts))
            elif parsed is not None and p.uid in parsed.referenced:
                out.append(StowResult(key, p.uid, SENT, parsed.referenced[p.uid], code, attempts))
            elif ok_status:
                reason = "not_in_response" if parsed is not None else "bad_response"
                out.append(StowResult(key, p.uid, FAILED, reason, code, attempts))
            else:
                out.append(StowResult(key, p.uid, FAILED, f"http_{code}", code, attempts))
        return out


class StowBatcher:
    """Collects instances and sends a batch as soon as it is full (count or bytes).

    ``add`` returns the results of whatever got sent (often none); ``flush`` sends the
    rest. At most one batch is held, so with temporary files at most ``batch_bytes``
    of them wait on disk.
    """

    def __init__(self, client: StowClient) -> None:
        self.client = client
        self._batch: list[Part] = []
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._batch)

    def add(self, instance: Any) -> list[StowResult]:
        """Queue one instance (StowItem or tuple); returns the results of any batch sent now."""
        item = _as_item(instance)
        try:
            part = _resolve(item)
        except ReassemblyError as exc:
            log.debug("STOW-RS: cannot read %r: %s", item.key, exc.reason)
            return [StowResult(_key(item), item.sop_instance_uid, FAILED, exc.reason)]
        s = self.client.settings
        out: list[StowResult] = []
        if self._batch and self._bytes + part.size > s.batch_bytes:
            out.extend(self.flush())
        self._batch.append(part)
        self._bytes += part.size
        if len(self._batch) >= s.batch_count or self._bytes >= s.batch_bytes:
            out.extend(self.flush())
        return out

    def flush(self) -> list[StowResult]:
        """Send what is queued; returns its results."""
        if not self._batch:
            return []
        batch, self._batch, self._bytes = self._batch, [], 0
        return self.client.send_batch(batch)


def _key(item: StowItem, uid: str | None = None) -> Any:
    """The caller's key, else the UID, else a path payload: something to tell results apart."""
    if item.key is not None:
        return item.key
    uid = uid or item.sop_instance_uid
    if uid:
        return uid
    return os.fspath(item.payload) if isinstance(item.payload, (str, os.PathLike)) else None


def send_partition(items: Iterable[Any], settings: StowSettings,
                   auth: StowAuth | None = None) -> Iterator[StowResult]:
    """Send a Spark partition's instances with one client; results stream per batch.

    Intended for ``mapPartitions`` / a write loop: pass a generator, and act on each
    result (ledger row, temp-file deletion) as it comes. Pass the driver's ``auth``
    (it pickles); without it auth is read from the executor's environment.
    """
    with StowClient(settings, auth=auth) as client:
        yield from client.send(items)
