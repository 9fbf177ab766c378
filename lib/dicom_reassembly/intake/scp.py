"""The C-STORE SCP: a pynetdicom Application Entity whose handlers hand each instance to the ``Intake``.

It accepts every storage SOP class pynetdicom knows, in the transfer syntaxes the project writes
(Explicit VR Little Endian, JPEG 2000 and HTJ2K, lossless and lossy) plus Implicit VR Little Endian,
the default every SCP must accept (PS3.5 10.1); other syntaxes are rejected per presentation context. Verification (C-ECHO) is answered. With an allow list
(``require_calling_aet``), other calling AE titles are rejected at association.

The dataset is taken as the sender encoded it (``event.encoded_dataset``), behind file meta built here,
so the stored file holds the received bytes. Each association runs in its own thread; a refused
instance gets its error status and the association stays up.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ..dicom.part10 import build_file_meta
from .receiver import Intake
from .validation import CANNOT_UNDERSTAND, OUT_OF_RESOURCES

log = logging.getLogger(__name__)

# pynetdicom accepts the first of these that a proposed context lists, so the order is a preference: the
# lossless compressed syntaxes first (a sender proposes them only for data it holds compressed, which is
# then stored as sent), the uncompressed ones next, and the lossy ones last, so that a sender offering a
# lossy syntax as an alternative is never asked to compress lossily what it holds uncompressed.
TRANSFER_SYNTAXES = [JPEG2000Lossless, HTJ2KLossless, HTJ2KLosslessRPCL, ExplicitVRLittleEndian,
                     ImplicitVRLittleEndian, JPEG2000, HTJ2K]
ERROR_COMMENT_MAX = 64  # ErrorComment is LO


def build_ae(ae_title: str, allow: Iterable[str] = ()) -> AE:
    """The Application Entity: storage SCP for every storage SOP class, and Verification SCP."""
    ae = AE(ae_title=ae_title)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    allowed = [a.strip() for a in allow if a.strip()]
    if allowed:
        ae.require_calling_aet = allowed
    return ae


def _file_meta(event: Any) -> bytes:
    """Preamble, prefix and file meta for the received dataset (PS3.10 7.1)."""
    request = event.request
    meta = build_file_meta(FileMetaDataset(), str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID),
                           str(event.context.transfer_syntax))
    calling = (event.assoc.requestor.ae_title or "").strip()
    if calling:
        meta.SourceApplicationEntityTitle = calling[:16]
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buf.getvalue()


def _status(code: int, comment: str | None) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:ERROR_COMMENT_MAX]
    return status


def handle_store(event: Any, intake: Intake) -> Dataset:
    """EVT_C_STORE: spool, check, store; answer 0x0000 or the refusal's status with an ErrorComment."""
    request = event.request
    calling = (event.assoc.requestor.ae_title or "").strip()
    try:
        chunks = [_file_meta(event), event.encoded_dataset(include_meta=False)]
    except Exception as exc:  # a command set pydicom cannot encode as file meta (e.g. a malformed UID)
        log.warning("C-STORE from %s: cannot frame the dataset: %s", calling, exc)
        return _status(CANNOT_UNDERSTAND, f"cannot frame dataset: {type(exc).__name__}")
    try:
        outcome = intake.receive(chunks, f"dimse:{calling}", str(request.AffectedSOPClassUID),
                                 str(request.AffectedSOPInstanceUID))
    except Exception as exc:  # a fault, not bad input: a spooled copy is picked up at the next start
        log.exception("C-STORE from %s failed unexpectedly", calling)
        return _status(OUT_OF_RESOURCES, f"internal error: {type(exc).__name__}")
    if not outcome.ok:
        log.warning("C-STORE from %s refused (0x%04X): %s", calling, outcome.status, outcome.reason)
    return _status(outcome.status, outcome.reason)


def handle_open(event: Any) -> None:
    """EVT_CONN_OPEN: answers leave at once. With Nagle's algorithm on, each small C-STORE-RSP waits for the
    peer's delayed ACK (about 40 ms on Linux), which caps one association at about 20 instances a second."""
    raw = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if raw is not None:
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # a closed or non-TCP socket: the association still works, only slower
            log.debug("TCP_NODELAY not set: %s", exc)


def handlers(intake: Intake) -> list[tuple[Any, Any, list[Any]] | tuple[Any, Any]]:
    """The event handlers to pass to ``AE.start_server``; C-ECHO uses pynetdicom's default (success)."""
    return [(evt.EVT_CONN_OPEN, handle_open), (evt.EVT_C_STORE, handle_store, [intake])]
