"""Cohort selection criteria: load, validate, and evaluate them against DICOM JSON headers.

A criteria document is either a bare JSON list of criteria or an orchestrator object::

    {"input_s3_parameters": {"endpoint": "https://...", "bucket": "...", "credentials": "key_id:access_key",
                             "region": "..."},
     "criteria": [{"dicom_tag": ["0008", "0020"], "operation": "GREATER", "reference": "2022-01-01"}]}

or that object wrapped as the orchestrator's flow-run request carries it: ``{"parameters": {...}}``. A file is
bounded in size and nesting (``json_document``) before it is parsed.

Everything is validated when loading (no header is needed: the VR comes from the DICOM dictionary), so a bad
criterion stops the job before any work. Criteria are compiled once (parsed dates, durations, sets) because
evaluation runs once per header, on billions of headers.

Secrets: the credentials live only in ``CriteriaSpec.s3``; ``repr``, ``str``, ``to_public_json`` and every error
message leave them out, and a ``CriteriaSpec`` refuses to be pickled so it cannot be shipped to Spark executors by
accident. Ship ``spec.criteria`` (no secrets) instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import CriteriaError, ReassemblyError
from ..io import json_document
from ..io.clients import ArchiveAccess, S3Settings, archive_access
from ..io.secret_store import is_secret_arn, read_secret_bytes
from .criteria import Criterion, compile_criterion, show

log = logging.getLogger(__name__)
_S3_FIELDS = frozenset(("endpoint", "bucket", "credentials", "region"))
_TOP_LEVEL_FIELDS = frozenset(("input_s3_parameters", "criteria"))
# The orchestrator's other flow parameters (issue 19) ride in the same object: not ours, and not typos.
_FLOW_PARAMETERS = frozenset(("text", "images", "out", "work", "poll_seconds", "tranche", "stow_url", "emr"))


@dataclass(frozen=True)
class CriteriaSpec:
    """Validated criteria plus the optional S3 settings from ``input_s3_parameters``."""

    criteria: tuple[Criterion, ...]
    s3: S3Settings | None = None
    bucket: str | None = None

    def __repr__(self) -> str:  # explicit: S3Settings hides its secret, but be sure nothing else leaks
        return f"CriteriaSpec(criteria={len(self.criteria)}, sha256={self.sha256()[:12]}, s3={self.s3!r}, " \
               f"bucket={self.bucket!r})"

    def __reduce__(self) -> Any:
        # Pickling would carry the secret into Spark tasks; executors only need the criteria.
        raise TypeError("CriteriaSpec holds credentials and is not picklable; ship spec.criteria instead")

    @property
    def access(self) -> ArchiveAccess | None:
        """The input credentials for the input bucket only, to hand to whatever lists or reads the archives."""
        return archive_access(self.s3, self.bucket)

    @property
    def tag_keys(self) -> tuple[str, ...]:
        """The DICOM JSON keys (``GGGGEEEE``) the criteria read, in order, without repeats."""
        return tuple(dict.fromkeys(c.key for c in self.criteria))

    def criteria_public(self) -> list[dict[str, Any]]:
        """The criteria in canonical JSON form."""
        return [c.to_public() for c in self.criteria]

    def canonical_criteria_json(self) -> str:
        """Canonical JSON of the criteria only (sorted keys, no spaces): what ``sha256`` hashes."""
        return json.dumps(self.criteria_public(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def sha256(self) -> str:
        """Hex SHA-256 of the canonical criteria JSON; independent of key order and tag spelling."""
        return hashlib.sha256(self.canonical_criteria_json().encode("utf-8")).hexdigest()

    def to_public_dict(self) -> dict[str, Any]:
        """Criteria and S3 parameters with the credentials replaced by ``***``."""
        out: dict[str, Any] = {"criteria": self.criteria_public()}
        if self.s3 is not None:
            out["input_s3_parameters"] = {
                "endpoint": self.s3.endpoint_url,
                "bucket": self.bucket,
                "region": self.s3.region,
                "credentials": "***",
            }
        return out

    def to_public_json(self) -> str:
        """``to_public_dict`` as canonical JSON (for the runs table)."""
        return json.dumps(self.to_public_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def secrets(self) -> tuple[str, ...]:
        """The sensitive strings (key id, secret, both joined), longest first, for redaction."""
        if self.s3 is None:
            return ()
        found = {s for s in (self.s3.access_key_id, self.s3.secret_access_key) if s}
        if self.s3.access_key_id and self.s3.secret_access_key:
            found.add(f"{self.s3.access_key_id}:{self.s3.secret_access_key}")
        return tuple(sorted(found, key=lambda s: (-len(s), s)))


def redact(text: str, spec: CriteriaSpec | S3Settings | None) -> str:
    """Replace every secret of ``spec`` found in ``text`` by ``***`` (defence in depth for logs and tables)."""
    if spec is None or not text:
        return text
    if isinstance(spec, S3Settings):
        spec = CriteriaSpec(criteria=(), s3=spec)
    for secret in spec.secrets():
        text = text.replace(secret, "***")
    return text


def _parse_s3_parameters(raw: Any) -> tuple[S3Settings, str]:
    """S3 settings and bucket from ``input_s3_parameters``; values are never echoed (one of them is secret)."""
    where = "input_s3_parameters"
    if not isinstance(raw, Mapping):
        raise CriteriaError("bad_s3_parameters", f"{where}: expected an object, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in _S3_FIELDS)
    if unknown:
        raise CriteriaError("bad_s3_parameters", f"{where}: unknown field {show(unknown[0], 40)} (allowed: "
                                                 f"endpoint, bucket, credentials, region)")
    for name in ("bucket", "region", "credentials"):
        if name not in raw or raw[name] is None:
            raise CriteriaError("bad_credentials" if name == "credentials" else "bad_s3_parameters",
                                f"{where}: missing {name}")
    bucket, region, creds, endpoint = raw["bucket"], raw["region"], raw["credentials"], raw.get("endpoint")
    if not isinstance(bucket, str) or not bucket.strip() or "/" in bucket or any(c.isspace() for c in bucket.strip()):
        raise CriteriaError("bad_s3_parameters", f"{where}: bucket must be a bare bucket name (no s3://, no /)")
    if not isinstance(region, str) or not region.strip() or any(c.isspace() for c in region.strip()):
        raise CriteriaError("bad_s3_parameters", f"{where}: region must be a non-empty string such as eu-west-3")
    if endpoint is not None:
        # user info in the URL would put credentials wherever the endpoint is logged
        if not isinstance(endpoint, str) or not re.fullmatch(r"https?://[^\s@/]+(/[^\s@]*)?", endpoint.strip()):
            raise CriteriaError("bad_s3_parameters", f"{where}: endpoint must be an http(s) URL without user info")
        endpoint = endpoint.strip()
    if not isinstance(creds, str):
        raise CriteriaError("bad_credentials", f"{where}: credentials must be a string 'key_id:access_key'")
    key_id, sep, secret = creds.partition(":")
    key_id, secret = key_id.strip(), secret.strip()
    if not sep or not key_id or not secret:
        raise CriteriaError("bad_credentials", f"{where}: credentials must be 'key_id:access_key' with both parts "
                                               f"non-empty")
    settings = S3Settings(endpoint_url=endpoint or None, region=region.strip(), access_key_id=key_id,
                          secret_access_key=secret)
    return settings, bucket.strip()


def _warn_ignored(what: str, keys: list[Any]) -> None:
    """Log the fields a criteria document has that we leave alone (never their values)."""
    if keys:
        log.warning("criteria document: ignoring %s: %s", what, ", ".join(show(k, 40) for k in sorted(map(str, keys))))


def parse_criteria(obj: Any) -> CriteriaSpec:
    """Validate and compile an already-parsed criteria document (bare list or orchestrator object, bare or
    wrapped in ``{"parameters": ...}``)."""
    s3: S3Settings | None = None
    bucket: str | None = None
    if isinstance(obj, Mapping) and "parameters" in obj and "criteria" not in obj:
        _warn_ignored("fields beside 'parameters'", [k for k in obj if k != "parameters"])
        obj = obj["parameters"]
        if not isinstance(obj, Mapping):
            raise CriteriaError("criteria_bad_document", f"'parameters' must be an object, got {type(obj).__name__}")
    if isinstance(obj, list):
        raw_criteria: Any = obj
    elif isinstance(obj, Mapping):
        if "criteria" not in obj:
            raise CriteriaError("criteria_bad_document", "the parameters object has no 'criteria' list")
        # other orchestrator fields are not ours to reject, but a typo here must not pass silently
        _warn_ignored("unknown top-level fields", [k for k in obj if k not in _TOP_LEVEL_FIELDS | _FLOW_PARAMETERS])
        raw_criteria = obj["criteria"]
        if not isinstance(raw_criteria, list):
            raise CriteriaError("criteria_bad_document", f"'criteria' must be a list, got {type(raw_criteria).__name__}")
        if obj.get("input_s3_parameters") is not None:
            s3, bucket = _parse_s3_parameters(obj["input_s3_parameters"])
    else:
        raise CriteriaError("criteria_bad_document", f"expected a JSON list of criteria or an object with 'criteria', "
                                                     f"got {type(obj).__name__}")
    criteria = tuple(compile_criterion(i, c) for i, c in enumerate(raw_criteria))
    spec = CriteriaSpec(criteria=criteria, s3=s3, bucket=bucket)
    if not criteria:
        log.warning("criteria document has no criteria: every instance is selected")
    return spec


def load_criteria(source: str) -> CriteriaSpec:
    """Read, validate and compile a criteria file (local path, ``s3://`` or a Secrets Manager secret ARN);
    raises ``CriteriaError``."""
    try:
        data = read_secret_bytes(source) if is_secret_arn(source) else json_document.read_document_bytes(source)
    except json_document.DocumentTooLarge as exc:
        raise CriteriaError("criteria_too_large", f"the criteria file is {exc}", uri=source) from None
    except ReassemblyError as exc:
        raise CriteriaError("criteria_unreadable", f"cannot read the criteria file ({exc.reason})",
                            uri=source) from None
    except OSError as exc:
        raise CriteriaError("criteria_unreadable", f"cannot read the criteria file "
                                                   f"({exc.strerror or type(exc).__name__})", uri=source) from None
    try:
        obj = json_document.loads_document(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise CriteriaError("criteria_not_json", "the criteria file is not UTF-8 text", uri=source) from None
    except json_document.DocumentTooDeep as exc:
        raise CriteriaError("criteria_too_deep", f"the criteria file is {exc}", uri=source) from None
    except json.JSONDecodeError as exc:
        # ``from None``: the decode error carries the whole document, credentials included
        raise CriteriaError("criteria_not_json", f"not valid JSON ({exc.msg} at line {exc.lineno} column "
                                                 f"{exc.colno})", uri=source) from None
    try:
        spec = parse_criteria(obj)
    except CriteriaError as exc:
        raise CriteriaError(exc.reason, exc.detail, uri=source) from None
    log.info("loaded %d criteria from %s (sha256 %s, s3 parameters %s)", len(spec.criteria), source,
             spec.sha256()[:12], "given" if spec.s3 else "absent")
    return spec
