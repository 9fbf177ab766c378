"""STOW-RS on the wire (PS3.18 10.5): the streamed ``multipart/related`` request body, and the response
parsed into one result per instance (DICOM JSON or XML), with DICOM status codes as short reasons.
"""

from __future__ import annotations

import email.utils
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..errors import StowError
from .settings import MB

if TYPE_CHECKING:  # the client imports this module
    from .client import Part

log = logging.getLogger(__name__)
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


class MultipartBody:
    """A file-like multipart/related body with a known length, read in chunks.

    ``requests`` sends a Content-Length for objects with ``__len__`` and ``read``,
    then streams them; local files are opened only while their part is being sent.
    """

    def __init__(self, parts: list[Part], boundary: str) -> None:
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


def retry_after(value: str | None) -> float | None:
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
