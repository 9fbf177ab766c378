"""STOW-RS uploads (PS3.18 10.5): a multipart/related body streamed part by part into the intake's spool.

Each part is parsed as it arrives (python-multipart's streaming parser) and written to a create-exclusive
spool file, so an upload is never held in memory; then each file goes through the same checks, write and
records as an instance received by C-STORE (``intake.receiver``). Instances of patients outside the
caller's token are refused (0x0124, not authorized). The answer is the usual STOW-RS body: 200 when every
instance was stored, 202 when some were, 409 when none were (403 when none were because of the token);
a body that is not a well-formed multipart/related of application/dicom parts is 415 or 422.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import HTTPException, Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState
from starlette.concurrency import run_in_threadpool

from ..intake.receiver import Intake, Outcome
from ..intake.spool import Spool, SpoolFile
from ..intake.validation import OUT_OF_RESOURCES
from .auth import Principal

log = logging.getLogger(__name__)

NOT_AUTHORIZED = 0x0124
SOURCE = "stow-rs"


def _boundary(content_type: str) -> str:
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "multipart/related":
        raise HTTPException(415, 'STOW-RS takes multipart/related; type="application/dicom"')
    kind = re.search(r'type\s*=\s*"?([^";]+)"?', content_type, re.IGNORECASE)
    if kind and kind.group(1).strip().lower() != "application/dicom":
        raise HTTPException(415, f"part type {kind.group(1).strip()[:40]} is not supported (application/dicom only)")
    found = re.search(r'boundary\s*=\s*"?([^";]+)"?', content_type, re.IGNORECASE)
    if not found:
        raise HTTPException(422, "multipart/related without a boundary")
    return found.group(1).strip()


async def spool_parts(request: Request, spool: Spool) -> list[str]:
    """Stream the body's parts into spool files; returns their spool names. Malformed bodies are 422."""
    boundary = _boundary(request.headers.get("content-type", ""))
    names: list[str] = []
    current: list[SpoolFile] = []

    def begin() -> None:
        current.append(spool.create())

    def data(buf: bytes, start: int, end: int) -> None:
        current[-1].write(memoryview(buf)[start:end])

    def end() -> None:
        names.append(Spool.name_of(current.pop().commit()))

    parser = MultipartParser(boundary, {"on_part_begin": begin, "on_part_data": data, "on_part_end": end})
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        if current or parser.state != MultipartState.END:
            raise MultipartParseError("the body ends inside a part (no closing boundary)")
        if not names:
            raise MultipartParseError("the body holds no part")
    except MultipartParseError as exc:
        for f in current:
            f.abort()
        for name in names:
            spool.remove(name)
        raise HTTPException(422, f"malformed multipart body: {str(exc)[:200]}") from exc
    return names


def _item(outcome: Outcome, base_url: str) -> dict[str, Any]:
    item: dict[str, Any] = {"00081150": {"vr": "UI", "Value": [outcome.sop_class_uid]} if outcome.sop_class_uid
                            else {"vr": "UI"},
                            "00081155": {"vr": "UI", "Value": [outcome.sop_instance_uid]} if outcome.sop_instance_uid
                            else {"vr": "UI"}}
    if not outcome.ok:
        item["00081197"] = {"vr": "US", "Value": [outcome.status]}
    return item


async def store_upload(request: Request, intake: Intake, principal: Principal) -> tuple[int, dict[str, Any]]:
    """Store every part of a STOW-RS request; returns (HTTP status, STOW-RS response body)."""
    if intake.backlog_full():
        raise HTTPException(503, "the intake backlog is full; retry later")
    names = await spool_parts(request, intake.spool)

    def admit(ds: Any) -> Outcome | None:
        patient = str(ds.get("PatientID", "") or "") or None
        if principal.may_see(patient):
            return None
        return Outcome(NOT_AUTHORIZED, "patient outside the token's patient_ids", str(ds.SOPInstanceUID),
                       sop_class_uid=str(ds.SOPClassUID))

    outcomes = []
    for name in names:
        try:
            outcomes.append(await run_in_threadpool(intake.process, name, SOURCE, None, None, admit))
        except Exception:  # a fault on one part: the spool keeps it for the next start, the others go on
            log.exception("STOW-RS part %s failed unexpectedly", name)
            outcomes.append(Outcome(OUT_OF_RESOURCES, "internal error"))
    base = str(request.base_url).rstrip("/")
    stored = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    body: dict[str, Any] = {}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_item(o, base) for o in stored]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_item(o, base) for o in failed]}
        for o in failed:
            log.warning("STOW-RS refused %s: 0x%04X %s", o.sop_instance_uid, o.status, o.reason)
    if not failed:
        return 200, body
    if stored:
        return 202, body
    if all(o.status == NOT_AUTHORIZED for o in failed):
        raise HTTPException(403, "every instance belongs to a patient outside the token's patient_ids")
    return 409, body
