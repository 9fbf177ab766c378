"""DICOMweb STOW-RS client (PS3.18 10.5) and the ``stow`` command.

Instances go to ``{url}/studies`` as ``multipart/related; type="application/dicom"``
in batches bounded by count and bytes. The request body is streamed from the
caller's bytes and local files, so a 50 MB batch is never joined in memory.
Each instance gets its own result from the response's ReferencedSOPSequence /
FailedSOPSequence; a request that fails as a whole (after retries) fails every
instance of its batch with one reason code (``http_503``, ``connection_error``...).

Credentials come from the environment (``DICOMWEB_TOKEN`` or
``DICOMWEB_USER``/``DICOMWEB_PASSWORD``) when a client is built, or from a
``StowAuth`` passed to it (read on the driver and shipped to executors), and never
appear in ``repr``, logs, exceptions or ledgers.
"""

from __future__ import annotations

import argparse
import dataclasses
import email.utils
import io
import logging
import os
import random
import re
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Union
from urllib.parse import urlsplit

import requests
import requests.auth

from .errors import ConfigError, ReassemblyError, StowError
from .io import arrow_io
from .io.listing import head, list_objects
from .io.reads import read_bytes
from .io.uris import is_s3, join_uri

log = logging.getLogger(__name__)

ENV_TOKEN = "DICOMWEB_TOKEN"
ENV_USER = "DICOMWEB_USER"
ENV_PASSWORD = "DICOMWEB_PASSWORD"

SENT = "sent"
FAILED = "failed"

MB = 1024 * 1024
DEFAULT_BATCH_COUNT = 50
DEFAULT_BATCH_BYTES = 50 * MB
DEFAULT_TIMEOUT = (10.0, 300.0)
# A server asking for a longer pause than this is treated as this long, so a
# bogus Retry-After cannot park an executor for hours.
MAX_RETRY_AFTER = 300.0
_CHUNK = 1 * MB

# Status codes of PS3.4 C.4.2.1.4 / PS3.18 Table 10.5.3-3, as short names.
_FAILURE_NAMES = {
    0x0110: "processing_failure",
    0x0111: "duplicate_sop_instance",
    0x0122: "sop_class_not_supported",
    0x0124: "not_authorized",
    0xC122: "transfer_syntax_not_supported",
    0xB000: "coercion_of_data_elements",
    0xB006: "elements_discarded",
    0xB007: "dataset_does_not_match_sop_class",
}

Payload = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]


def status_code_name(code: int) -> str:
    """A DICOM status code as a short reason: ``failure_c000_cannot_understand``."""
    name = _FAILURE_NAMES.get(code)
    if name is None:
        high = code & 0xFF00
        if high == 0xA700:
            name = "out_of_resources"
        elif high == 0xA900:
            name = "dataset_does_not_match_sop_class"
        elif code & 0xF000 == 0xC000:
            name = "cannot_understand"
    prefix = "warning" if code & 0xF000 == 0xB000 else "failure"
    return f"{prefix}_{code:04x}" + (f"_{name}" if name else "")


# --------------------------------------------------------------------------- settings and auth


@dataclass(frozen=True)
class StowSettings:
    """Where and how to send. Picklable, holds no secret, safe to ship to Spark executors.

    ``url`` is the DICOMweb root (``https://pacs/dicom-web``); ``/studies`` is appended
    unless already there. ``timeout`` is (connect, read) seconds. A request is tried
    ``1 + max_retries`` times, waiting ``backoff_base * 2**n`` seconds (with jitter,
    at most ``backoff_max``) or the server's Retry-After in between.
    """

    url: str
    batch_count: int = DEFAULT_BATCH_COUNT
    batch_bytes: int = DEFAULT_BATCH_BYTES
    timeout: tuple[float, float] = DEFAULT_TIMEOUT
    verify_tls: bool = True
    max_retries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 60.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("bad_stow_url", "the STOW-RS URL must be http(s)://host/...")
        if parts.username or parts.password:
            # The URL travels to logs, ledgers and Spark closures; credentials must not.
            raise ConfigError("credentials_in_url",
                              f"put credentials in {ENV_TOKEN} or {ENV_USER}/{ENV_PASSWORD}, not in the URL")
        if self.batch_count < 1 or self.batch_bytes < 1:
            raise ConfigError("bad_batch_limit", "batch count and bytes must be at least 1")
        if self.max_retries < 0 or self.backoff_base < 0 or self.backoff_max < 0:
            raise ConfigError("bad_retry_setting", "retries and backoff must not be negative")
        timeout = tuple(float(t) for t in self.timeout)
        if len(timeout) != 2 or min(timeout) <= 0:
            raise ConfigError("bad_timeout", "timeout is (connect, read) seconds, both positive")
        object.__setattr__(self, "timeout", timeout)

    @property
    def studies_url(self) -> str:
        """The STOW-RS endpoint: ``{url}/studies``."""
        base = self.url.rstrip("/")
        return base if base.endswith("/studies") else f"{base}/studies"


@dataclass(frozen=True)
class StowAuth:
    """Credentials for the endpoint; ``repr`` shows only the kind.

    It pickles, so a driver can read it once with ``from_env`` and ship it to executors, which (on YARN) do not
    inherit the driver's environment. The pickled bytes hold the secret: ship them, never log them.
    """

    kind: str | None = None  # "bearer" | "basic" | None
    user: str | None = None
    secret: str | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in (None, "bearer", "basic"):
            raise ConfigError("bad_auth", f"auth kind must be bearer, basic or None, not {self.kind!r}")
        if self.kind == "bearer" and not self.secret:
            raise ConfigError("bad_auth", "bearer auth needs a token")
        if self.kind == "basic" and (not self.user or self.secret is None):
            raise ConfigError("bad_auth", "basic auth needs a user and a password")

    def __repr__(self) -> str:
        return f"StowAuth(kind={self.kind!r})"

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Any = None) -> StowAuth:
        """Bearer from ``DICOMWEB_TOKEN``, else basic from ``DICOMWEB_USER``/``DICOMWEB_PASSWORD``, else none."""
        env = os.environ if environ is None else environ
        token = env.get(ENV_TOKEN)
        if token:
            return cls("bearer", None, token)
        user, password = env.get(ENV_USER), env.get(ENV_PASSWORD)
        if user and password is not None:
            return cls("basic", user, password)
        if user or password:
            raise ConfigError("incomplete_auth", f"set both {ENV_USER} and {ENV_PASSWORD}")
        return cls()


# --------------------------------------------------------------------------- items and results


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
class _Part:
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


def _resolve(item: StowItem) -> _Part:
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
    return _Part(item, uid, size, data, path)


# --------------------------------------------------------------------------- multipart body


class _MultipartBody:
    """A file-like multipart/related body with a known length, read in chunks.

    ``requests`` sends a Content-Length for objects with ``__len__`` and ``read``,
    then streams them; local files are opened only while their part is being sent.
    """

    def __init__(self, parts: list[_Part], boundary: str) -> None:
        head_ = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        self._segments: list[tuple[bytes | memoryview | None, str | None, int]] = []
        for p in parts:
            self._segments.append((head_, None, len(head_)))
            self._segments.append((p.data, p.path, p.size))
            self._segments.append((b"\r\n", None, 2))
        tail = f"--{boundary}--\r\n".encode("ascii")
        self._segments.append((tail, None, len(tail)))
        self._length = sum(s[2] for s in self._segments)
        self._chunks = self._iter_chunks()
        self._pending = memoryview(b"")

    def __len__(self) -> int:
        return self._length

    def _iter_chunks(self) -> Iterator[memoryview]:
        for data, path, size in self._segments:
            if data is not None:
                view = memoryview(data)
                for i in range(0, size, _CHUNK):
                    yield view[i: i + _CHUNK]
                continue
            yield from self._iter_file(path or "", size)

    @staticmethod
    def _iter_file(path: str, size: int) -> Iterator[memoryview]:
        # OSError is converted: urllib3 would take it for a socket error and we would retry in vain.
        try:
            with open(path, "rb") as f:
                left = size
                while left > 0:
                    chunk = f.read(min(_CHUNK, left))
                    if not chunk:
                        raise StowError("payload_changed", "file shrank while being sent", uri=path)
                    left -= len(chunk)
                    yield memoryview(chunk)
        except OSError as exc:
            raise StowError("os_error", exc.strerror or type(exc).__name__, uri=path) from exc

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes of the body (all that is left when ``n`` < 0)."""
        want = self._length if n is None or n < 0 else n
        out: list[memoryview] = []
        got = 0
        while got < want:
            if not self._pending:
                nxt = next(self._chunks, None)
                if nxt is None:
                    break
                self._pending = nxt
            take = self._pending[: want - got]
            self._pending = self._pending[len(take):]
            out.append(take)
            got += len(take)
        return b"".join(out)


# --------------------------------------------------------------------------- response parsing


@dataclass
class StowResponse:
    """The per-instance content of a STOW-RS response body."""

    referenced: dict[str, str | None]  # uid -> warning reason or None
    failed: dict[str, str]  # uid -> failure reason


def _json_first(elem: Any) -> Any:
    if not isinstance(elem, dict):
        return None
    values = elem.get("Value")
    return values[0] if isinstance(values, list) and values else None


def _as_code(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            # Four characters are the status as written in the standard ("0110", "C000").
            return int(value, 16) if re.fullmatch(r"[0-9A-Fa-f]{4}", value) else int(value)
        except ValueError:
            return None
    return None


def parse_stow_json(body: bytes) -> StowResponse | None:
    """Parse a DICOM JSON STOW-RS response; None when it has neither sequence."""
    import json

    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(doc, list) and len(doc) == 1:
        doc = doc[0]
    if not isinstance(doc, dict) or ("00081199" not in doc and "00081198" not in doc):
        return None
    out = StowResponse({}, {})
    for item in (doc.get("00081199") or {}).get("Value") or []:
        uid = _json_first(item.get("00081155")) if isinstance(item, dict) else None
        if uid:
            warning = _as_code(_json_first(item.get("00081196")))
            out.referenced[str(uid)] = status_code_name(warning) if warning is not None else None
    for item in (doc.get("00081198") or {}).get("Value") or []:
        uid = _json_first(item.get("00081155")) if isinstance(item, dict) else None
        if uid:
            code = _as_code(_json_first(item.get("00081197")))
            out.failed[str(uid)] = status_code_name(code) if code is not None else "failure_unspecified"
    return out


def parse_stow_xml(body: bytes) -> StowResponse | None:
    """Parse a Native DICOM Model (XML) STOW-RS response; None when it is not one."""
    try:
        root = ET.fromstring(body)  # stdlib ET expands no external entities
    except ET.ParseError:
        return None

    def attr(node: ET.Element, tag: str) -> ET.Element | None:
        for a in node.findall("DicomAttribute"):
            if a.get("tag", "").upper() == tag:
                return a
        return None

    def first_value(node: ET.Element, tag: str) -> str | None:
        a = attr(node, tag)
        v = a.find("Value") if a is not None else None
        return v.text.strip() if v is not None and v.text else None

    ref, fail = attr(root, "00081199"), attr(root, "00081198")
    if ref is None and fail is None:
        return None
    out = StowResponse({}, {})
    for item in ref.findall("Item") if ref is not None else []:
        uid = first_value(item, "00081155")
        if uid:
            warning = _as_code(first_value(item, "00081196"))
            out.referenced[uid] = status_code_name(warning) if warning is not None else None
    for item in fail.findall("Item") if fail is not None else []:
        uid = first_value(item, "00081155")
        if uid:
            code = _as_code(first_value(item, "00081197"))
            out.failed[uid] = status_code_name(code) if code is not None else "failure_unspecified"
    return out


def parse_stow_response(content_type: str, body: bytes) -> StowResponse | None:
    """Parse a STOW-RS response body (DICOM JSON or XML); None when it is neither."""
    if not body:
        return None
    if "xml" in (content_type or "").lower() or body.lstrip()[:1] == b"<":
        return parse_stow_xml(body)
    return parse_stow_json(body)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return min(max(0.0, (when - datetime.now(timezone.utc)).total_seconds()), MAX_RETRY_AFTER)


# --------------------------------------------------------------------------- client


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

    def send_batch(self, parts: list[_Part]) -> list[StowResult]:
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
                response = self._session.post(s.studies_url, data=_MultipartBody(parts, boundary),
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
                    wait = _retry_after(response.headers.get("Retry-After"))
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
    def _fail_all(parts: list[_Part], reason: str, http_status: int | None, attempts: int) -> list[StowResult]:
        return [StowResult(_key(p.item, p.uid), p.uid, FAILED, reason, http_status, attempts) for p in parts]

    @staticmethod
    def _results(parts: list[_Part], code: int, content_type: str, body: bytes, attempts: int) -> list[StowResult]:
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
        self._batch: list[_Part] = []
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


# --------------------------------------------------------------------------- the stow command (library part)


def read_failed_from_ledger(ledger_uri: str, from_uri: str | None = None) -> list[StowItem]:
    """Instances whose latest ledger row has ``stow_status == 'failed'``, as items to resend.

    The object is ``output_uri`` when present, else ``{from_uri}/{uid}.dcm``. When the
    ledger has ``finished_at``, only each UID's newest row counts, so a ledger that
    accumulates runs does not resend what a later run delivered.
    """
    import pyarrow.compute as pc

    try:
        dataset = arrow_io.open_dataset(ledger_uri, partitioning="hive")
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise ConfigError("bad_ledger", type(exc).__name__, uri=ledger_uri) from exc
    names = set(dataset.schema.names)
    missing = {"sop_instance_uid", "stow_status"} - names
    if missing:
        raise ConfigError("bad_ledger", f"missing columns {sorted(missing)}", uri=ledger_uri)
    columns = [c for c in ("sop_instance_uid", "stow_status", "output_uri", "finished_at") if c in names]
    table = dataset.to_table(columns=columns, filter=pc.field("sop_instance_uid").is_valid())
    rows = table.to_pylist()
    if "finished_at" in names:
        newest: dict[str, dict[str, Any]] = {}
        for row in rows:
            cur = newest.get(row["sop_instance_uid"])
            if cur is None or (row["finished_at"] is not None
                               and (cur["finished_at"] is None or row["finished_at"] >= cur["finished_at"])):
                newest[row["sop_instance_uid"]] = row
        rows = list(newest.values())
    items: list[StowItem] = []
    seen: set[str] = set()
    for row in rows:
        uid = row["sop_instance_uid"]
        if row["stow_status"] != FAILED or uid in seen:
            continue
        seen.add(uid)
        source = row.get("output_uri") or (join_uri(from_uri, f"{uid}.dcm") if from_uri else None)
        items.append(StowItem(uid, source, source))
    log.info("ledger %s: %d instance(s) to resend", ledger_uri, len(items))
    return items


def list_instances(from_uri: str) -> Iterator[StowItem]:
    """Items for every .dcm under a local folder or S3 prefix (or one file/object)."""
    if is_s3(from_uri) and from_uri.lower().endswith(".dcm") and head(from_uri) is not None:
        yield StowItem(None, from_uri, from_uri)
        return
    suffixes = () if os.path.isfile(from_uri) else (".dcm", ".DCM")
    for info in list_objects(from_uri, suffixes):
        yield StowItem(None, info.uri, info.uri)


def write_stow_ledger(path: str, results: list[StowResult], finished_at: datetime | None = None) -> str:
    """Write results as Parquet: a file when ``path`` ends in .parquet, else a new part
    file in the ``path`` dataset folder (so runs accumulate). Returns the file written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    finished = finished_at or datetime.now(timezone.utc)
    schema = pa.schema([
        ("sop_instance_uid", pa.string()),
        ("source_uri", pa.string()),
        ("stow_status", pa.string()),
        ("stow_reason", pa.string()),
        ("finished_at", pa.timestamp("us", tz="UTC")),
    ])
    table = pa.table({
        "sop_instance_uid": [r.sop_instance_uid for r in results],
        "source_uri": [None if r.key is None else str(r.key) for r in results],
        "stow_status": [r.status for r in results],
        "stow_reason": [r.reason for r in results],
        "finished_at": [finished] * len(results),
    }, schema=schema)
    if not path.endswith(".parquet"):
        stamp = finished.strftime("%Y%m%dT%H%M%S")
        path = join_uri(path, f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet")
    filesystem, fs_path = arrow_io.arrow_filesystem(path)
    try:
        if not is_s3(path):
            os.makedirs(os.path.dirname(fs_path) or ".", exist_ok=True)
        pq.write_table(table, fs_path, filesystem=filesystem)
    except OSError as exc:
        raise StowError("ledger_write_failed", type(exc).__name__, uri=path) from exc
    return path


def send_objects(items: Iterable[Any], settings: StowSettings, ledger_out: str | None = None,
                 client: StowClient | None = None) -> dict[str, Any]:
    """Send items and summarise: ``{"sent": n, "failed": n, "reasons": {reason: n}, "ledger": uri}``."""
    own = client is None
    client = client or StowClient(settings)
    try:
        results = list(client.send(items))
    finally:
        if own:
            client.close()
    summary: dict[str, Any] = {SENT: 0, FAILED: 0, "reasons": {}, "ledger": None}
    for r in results:
        summary[r.status] += 1
        if r.status == FAILED:
            summary["reasons"][r.reason] = summary["reasons"].get(r.reason, 0) + 1
    if ledger_out:
        summary["ledger"] = write_stow_ledger(ledger_out, results)
    return summary


# --------------------------------------------------------------------------- the stow command (CLI part)


def parse_size(text: str) -> int:
    """``50MB``, ``512k``, ``1G`` or bytes -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)[iI]?[bB]?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    factor = {"": 1, "k": 1024, "m": MB, "g": 1024 * MB}[m.group(2).lower()]
    value = int(float(m.group(1)) * factor)
    if value < 1:
        raise argparse.ArgumentTypeError("size must be at least 1 byte")
    return value


def parse_timeout(text: str) -> tuple[float, float]:
    """``30`` (both) or ``10,300`` (connect, read) seconds."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a timeout: {text!r}") from exc
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) <= 0:
        raise argparse.ArgumentTypeError("timeout is SECONDS or CONNECT,READ, positive")
    return values[0], values[1]


def add_stow_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``stow`` on an argparse subparsers object; sets ``func=run_stow``."""
    p = subparsers.add_parser(
        "stow", help="send .dcm files or objects to a DICOMweb STOW-RS endpoint",
        description=f"Send Part 10 files to {{URL}}/studies. Auth: {ENV_TOKEN} (bearer) or "
                    f"{ENV_USER}/{ENV_PASSWORD} (basic) in the environment.")
    p.add_argument("--from", dest="from_uri", metavar="URI",
                   help="local folder/file or s3:// prefix of .dcm objects")
    p.add_argument("--url", required=True, help="DICOMweb root, e.g. https://pacs/dicom-web")
    p.add_argument("--only-failed", metavar="LEDGER",
                   help="Parquet ledger: resend only rows with stow_status = failed")
    p.add_argument("--ledger-out", metavar="PATH", help="write per-instance results as Parquet here")
    p.add_argument("--batch-count", type=int, default=DEFAULT_BATCH_COUNT, help="instances per request")
    p.add_argument("--batch-bytes", type=parse_size, default=DEFAULT_BATCH_BYTES, help="bytes per request (50MB)")
    p.add_argument("--timeout", type=parse_timeout, default=DEFAULT_TIMEOUT, help="SECONDS or CONNECT,READ")
    p.add_argument("--max-retries", type=int, default=5, help="retries on connection errors, 5xx and 429")
    p.add_argument("--backoff", type=float, default=1.0, help="first retry wait in seconds (doubles)")
    p.add_argument("--insecure", action="store_true", help="do not verify the server's TLS certificate")
    p.set_defaults(func=run_stow, command="stow")
    return p


def settings_from_args(args: argparse.Namespace) -> StowSettings:
    """StowSettings from parsed ``stow`` arguments."""
    return StowSettings(
        url=args.url, batch_count=args.batch_count, batch_bytes=args.batch_bytes, timeout=args.timeout,
        verify_tls=not args.insecure, max_retries=getattr(args, "max_retries", 5),
        backoff_base=getattr(args, "backoff", 1.0))


def run_stow(args: argparse.Namespace) -> int:
    """The ``stow`` command: 0 when every instance was sent, 1 when some failed, 2 on bad input."""
    import sys

    try:
        if not args.from_uri and not args.only_failed:
            raise ConfigError("missing_source", "give --from URI or --only-failed LEDGER")
        settings = settings_from_args(args)
        if args.insecure:
            import urllib3

            print(f"warning: TLS certificate verification is disabled for {settings.url}", file=sys.stderr)
            # One warning above is enough; urllib3 would repeat it on every request.
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        if args.only_failed:
            items: Iterable[StowItem] = read_failed_from_ledger(args.only_failed, args.from_uri)
        else:
            items = list_instances(args.from_uri)
        summary = send_objects(items, settings, args.ledger_out)
    except ReassemblyError as exc:
        print(f"stow: {exc.one_line()}", file=sys.stderr)
        return 2
    print(f"{SENT}: {summary[SENT]}")
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(summary["reasons"].items(), key=lambda kv: str(kv[0])))
    print(f"{FAILED}: {summary[FAILED]}" + (f" ({reasons})" if reasons else ""))
    if summary["ledger"]:
        print(f"ledger: {summary['ledger']}")
    return 0 if summary[FAILED] == 0 else 1


__all__ = [
    "StowAuth", "StowBatcher", "StowClient", "StowItem", "StowResponse", "StowResult", "StowSettings", "add_stow_parser",
    "list_instances", "parse_stow_response", "read_failed_from_ledger", "read_sop_instance_uid",
    "run_stow", "send_objects", "send_partition", "settings_from_args", "write_stow_ledger",
]
