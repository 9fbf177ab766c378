"""The DICOMweb service (PS3.18): QIDO-RS, WADO-RS (objects, metadata, rendered, one tag) and STOW-RS.

``create_app`` builds a FastAPI app over the catalogue (DuckDB, ``query``) and the stored objects
(``objects``). Every route sits behind one dependency, ``authenticate``, which checks the bearer token
and leaves the caller's ``Principal`` on the request; routes only apply its patient scope. Answers:
401 without a valid token, 403 for another patient's data, 404 for unknown UIDs, 406 for a media type
or transfer syntax we cannot give, 415 for an upload that is not application/dicom, 422 for a malformed
tag, key or body. Every error body is ``{"error": "<one line>"}``; no stack trace reaches a client.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ReassemblyError
from ..io import listing
from ..io.uris import basename
from . import objects
from .auth import AuthError, AuthSettings, Principal, verify_token
from .query import BY_TAG, KEYS, LEVEL_KEYS, MAX_LIMIT, CatalogIndex, QueryError
from .stow import store_upload

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_RESERVED = {"limit", "offset", "includefield", "fuzzymatching"}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _principal(request: Request) -> Principal:
    return request.state.principal


def _parse_tag(text: str) -> int:
    if not _TAG.match(text):
        raise HTTPException(422, f"{text[:20]!r} is not a tag GGGGEEEE")
    return int(text, 16)


def _accepts_transfer_syntax(accept: str, stored: str) -> bool:
    """False when every ``transfer-syntax`` the client names differs from the stored one (no transcoding here)."""
    asked = re.findall(r"transfer-syntax\s*=\s*\"?([0-9.*]+)\"?", accept)
    return not asked or "*" in asked or stored in asked


def create_app(index: CatalogIndex, auth: AuthSettings, intake: Any = None) -> FastAPI:
    """The app; ``intake`` (an ``intake.receiver.Intake``) enables STOW-RS."""

    def authenticate(request: Request) -> None:
        """The one auth check: a valid bearer token, whose principal routes read from ``request.state``."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        try:
            request.state.principal = verify_token(token.strip(), auth)
        except AuthError as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from exc

    app = FastAPI(title="dicom-reassembly DICOMweb", docs_url=None, redoc_url=None, openapi_url=None)
    router = APIRouter(dependencies=[Depends(authenticate)])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail).splitlines()[0][:300], getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}"[:300])

    @app.exception_handler(Exception)
    async def fault(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return _error(500, f"internal error ({type(exc).__name__})")

    # -- access

    def check_uids(*uids: str) -> None:
        for uid in uids:
            if not re.fullmatch(r"[0-9.]{1,64}", uid):
                raise HTTPException(422, f"{uid[:70]!r} is not a UID")

    def instance_row(request: Request, study: str, series: str, sop: str) -> dict[str, Any]:
        check_uids(study, series, sop)
        row = index.instance(study, series, sop)
        if row is None:
            raise HTTPException(404, f"no instance {sop} in series {series} of study {study}")
        if not _principal(request).may_see(row["patient_id"]):
            raise HTTPException(403, "this instance belongs to a patient outside the token's patient_ids")
        return row

    def group_rows(request: Request, study: str, series: str | None = None) -> list[dict[str, Any]]:
        check_uids(study, *([series] if series else []))
        rows = index.instances(study, series)
        if not rows:
            raise HTTPException(404, f"no {'series ' + series if series else 'study ' + study}")
        visible = [r for r in rows if _principal(request).may_see(r["patient_id"])]
        if not visible:
            raise HTTPException(403, "this study belongs to a patient outside the token's patient_ids")
        return visible

    # -- QIDO-RS

    def qido(request: Request, level: str, fixed: dict[str, str]) -> JSONResponse:
        params = request.query_params
        try:
            limit = int(params.get("limit", "1000"))
            offset = int(params.get("offset", "0"))
        except ValueError:
            raise HTTPException(422, "limit and offset must be integers") from None
        if not 0 < limit <= MAX_LIMIT or offset < 0:
            raise HTTPException(422, f"limit must be 1-{MAX_LIMIT} and offset not negative")
        allowed = {k for lvl in ("study", "series", "instance") for k in LEVEL_KEYS[lvl]}
        matches: dict[str, str] = {}
        for key, value in params.multi_items():
            if key.lower() in _RESERVED:
                continue
            name = BY_TAG.get(key.upper(), key)
            if name not in KEYS:
                if not (_TAG.match(key) or re.fullmatch(r"[A-Za-z]+", key)):
                    raise HTTPException(422, f"{key[:40]!r} is neither an attribute keyword nor a tag")
                continue  # a key we do not index: ignored, as PS3.18 8.3.4 allows
            if name in allowed and value != "":
                matches[name] = value
        principal = _principal(request)
        if "PatientID" in matches and "*" not in matches["PatientID"] and not principal.may_see(matches["PatientID"]):
            raise HTTPException(403, "PatientID is outside the token's patient_ids")
        matches.update(fixed)
        try:
            found = index.search(level, matches, principal.patient_ids, limit, offset)
        except QueryError as exc:
            raise HTTPException(422, str(exc)) from exc
        return JSONResponse(found, media_type=DICOM_JSON)

    @router.get("/studies")
    def search_studies(request: Request) -> JSONResponse:
        return qido(request, "study", {})

    @router.get("/series")
    def search_all_series(request: Request) -> JSONResponse:
        return qido(request, "series", {})

    @router.get("/instances")
    def search_all_instances(request: Request) -> JSONResponse:
        return qido(request, "instance", {})

    @router.get("/studies/{study}/series")
    def search_series(request: Request, study: str) -> JSONResponse:
        group_rows(request, study)
        return qido(request, "series", {"StudyInstanceUID": study})

    @router.get("/studies/{study}/instances")
    def search_study_instances(request: Request, study: str) -> JSONResponse:
        group_rows(request, study)
        return qido(request, "instance", {"StudyInstanceUID": study})

    @router.get("/studies/{study}/series/{series}/instances")
    def search_instances(request: Request, study: str, series: str) -> JSONResponse:
        group_rows(request, study, series)
        return qido(request, "instance", {"StudyInstanceUID": study, "SeriesInstanceUID": series})

    # -- WADO-RS

    def retrieve(request: Request, rows: list[dict[str, Any]], single_ok: bool) -> Response:
        accept = request.headers.get("accept", "*/*")
        wants_multipart = "multipart/related" in accept or "*/*" in accept
        if not wants_multipart and not ("application/dicom" in accept and single_ok):
            raise HTTPException(406, 'offered: multipart/related; type="application/dicom" (or application/dicom '
                                     "for one instance)")
        for row in rows:
            if not _accepts_transfer_syntax(accept, row["transfer_syntax"] or ""):
                raise HTTPException(406, f"stored in transfer syntax {row['transfer_syntax']} only; ask for it "
                                         "or transfer-syntax=*")
        uris = [r["output_uri"] for r in rows]
        for uri in uris:  # before the first byte: a missing object must be a clear error, not a cut stream
            if listing.head(uri) is None:
                raise HTTPException(404, f"the stored object of {basename(uri)} is missing from the store")
        if not wants_multipart:
            return StreamingResponse(objects.stream_object(uris[0]), media_type="application/dicom")
        boundary = objects.multipart_boundary()
        ts = rows[0]["transfer_syntax"] if len({r["transfer_syntax"] for r in rows}) == 1 else None
        media = f'multipart/related; type="application/dicom"; boundary={boundary}'
        part_type = f"application/dicom; transfer-syntax={ts}" if ts else "application/dicom"
        return StreamingResponse(objects.stream_multipart(uris, boundary, part_type), media_type=media)

    @router.get("/studies/{study}")
    def retrieve_study(request: Request, study: str) -> Response:
        return retrieve(request, group_rows(request, study), False)

    @router.get("/studies/{study}/series/{series}")
    def retrieve_series(request: Request, study: str, series: str) -> Response:
        return retrieve(request, group_rows(request, study, series), False)

    @router.get("/studies/{study}/series/{series}/instances/{sop}")
    def retrieve_instance(request: Request, study: str, series: str, sop: str) -> Response:
        return retrieve(request, [instance_row(request, study, series, sop)], True)

    @router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
    def instance_metadata(request: Request, study: str, series: str, sop: str) -> JSONResponse:
        row = instance_row(request, study, series, sop)
        return JSONResponse([objects.metadata_json(read_header(row))], media_type=DICOM_JSON)

    @router.get("/studies/{study}/series/{series}/metadata")
    def series_metadata(request: Request, study: str, series: str) -> JSONResponse:
        rows = group_rows(request, study, series)
        return JSONResponse([objects.metadata_json(read_header(r)) for r in rows], media_type=DICOM_JSON)

    @router.get("/studies/{study}/metadata")
    def study_metadata(request: Request, study: str) -> JSONResponse:
        rows = group_rows(request, study)
        return JSONResponse([objects.metadata_json(read_header(r)) for r in rows], media_type=DICOM_JSON)

    def read_header(row: dict[str, Any]) -> Any:
        try:
            return objects.read_header(row["output_uri"])
        except ReassemblyError as exc:
            raise HTTPException(404 if exc.reason == "not_found" else 502, f"stored object: {exc.reason}") from exc

    @router.get("/studies/{study}/series/{series}/instances/{sop}/rendered")
    def rendered(request: Request, study: str, series: str, sop: str) -> Response:
        row = instance_row(request, study, series, sop)
        accept = request.headers.get("accept", "*/*")
        if not any(t in accept for t in ("image/png", "image/*", "*/*")):
            raise HTTPException(406, "rendered as image/png only")
        try:
            window = objects.parse_window(request.query_params.get("window"))
            ds = objects.read_object(row["output_uri"])
            png = objects.render_png(ds, window)
        except objects.RenderError as exc:
            raise HTTPException(422, str(exc)) from exc
        return Response(png, media_type="image/png")

    @router.get("/studies/{study}/series/{series}/instances/{sop}/tags/{tag}")
    def single_tag(request: Request, study: str, series: str, sop: str, tag: str) -> JSONResponse:
        number = _parse_tag(tag)
        row = instance_row(request, study, series, sop)
        ds = read_header(row) if number < objects.PIXEL_DATA else objects.read_object(row["output_uri"])
        found = objects.element_json(ds, number)
        if found is None:
            raise HTTPException(404, f"the instance has no element {tag.upper()}")
        return JSONResponse(found, media_type=DICOM_JSON)

    # -- STOW-RS

    @router.post("/studies")
    async def stow(request: Request) -> Response:
        if intake is None:
            raise HTTPException(405, "this server does not accept uploads")
        status, body = await store_upload(request, intake, _principal(request))
        await run_in_threadpool(intake.flush_records)
        index.refresh()
        return JSONResponse(body, status_code=status, media_type=DICOM_JSON)

    app.include_router(router)
    return app
