"""The campaign's parameters: the orchestrator brief's two keys plus where things live, validated up front.

The parameters object is what ``POST /api/deployments/{id}/create_flow_run`` sends and what
``campaign run --params FILE`` reads; ``{"parameters": {...}}`` is accepted as well as the bare object::

    {"input_s3_parameters": {"endpoint": "...", "bucket": "...", "credentials": "key_id:access_key", "region": "..."},
     "criteria": [{"dicom_tag": ["0008", "0020"], "operation": "GREATER", "reference": "2022-01-01"}],
     "text": "s3://...", "images": "s3://...", "out": "s3://...", "work": "s3://...", "poll_seconds": 600}

Prefect stores a flow run's parameters, so ``credentials_block`` (the name of a Prefect ``Secret`` block holding
``key_id:access_key``) is the recommended form: the run's parameters then hold a name, not the secret.
The secret itself lives in a :class:`SecretText`, which never shows in a repr and refuses to be pickled.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, CriteriaError
from ..io.uris import is_s3, split_s3
from ..restore.requests import TIERS

DEFAULT_POLL_SECONDS = 600.0
# Restore times AWS gives (Flexible Retrieval / Deep Archive): Expedited 1-5 min, Standard 3-5 h / 12 h,
# Bulk 5-12 h / 48 h; the bound leaves room for the slowest class, then fails the run so a person looks.
MAX_WAIT_BY_TIER = {"Expedited": 2 * 3600.0, "Standard": 24 * 3600.0, "Bulk": 72 * 3600.0}
EMR_KEYS = frozenset({"cluster_id", "serverless_app_id", "config", "region", "root"})
INPUT_KEYS = frozenset({"endpoint", "bucket", "credentials", "region"})
PARAMETER_NAMES = (
    "input_s3_parameters", "criteria", "text", "images", "out", "work", "poll_seconds", "max_wait_seconds",
    "tranche", "stow_url", "emr", "credentials_block", "config", "restore_tier", "restore_days", "include_unknown",
)


class SecretText:
    """A secret string: ``reveal()`` gives it; repr, str and pickling never do."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that must hand it on."""
        return self._value

    def __repr__(self) -> str:
        return "SecretText('***')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("SecretText is not picklable: a secret must not travel in task inputs or results")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretText) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("SecretText", self._value))


@dataclass(frozen=True)
class InputBucket:
    """``input_s3_parameters`` without the credentials: where the partner's archives are."""

    bucket: str
    region: str
    endpoint: str | None = None


@dataclass(frozen=True)
class EmrTarget:
    """Where the Spark jobs run when not on this machine: a running cluster or an EMR Serverless application."""

    cluster_id: str | None = None
    serverless_app_id: str | None = None
    config: str = "conf/emr.json"
    region: str | None = None
    root: str = "."  # the checkout with dist/ (``make dist``) and jobs/


@dataclass(frozen=True)
class CampaignParams:
    """Validated parameters of one flow run. ``credentials`` is set only for inline credentials."""

    text: str
    images: str
    out: str
    work: str
    criteria: tuple[dict[str, Any], ...] = ()
    input: InputBucket | None = None
    credentials: SecretText | None = field(default=None, repr=False)
    credentials_block: str | None = None
    poll_seconds: float = DEFAULT_POLL_SECONDS
    max_wait_seconds: float | None = None
    restore_tier: str = "Bulk"
    restore_days: int = 7
    config: str | None = None
    include_unknown: bool = True
    tranche: str | None = None
    stow_url: str | None = None
    emr: EmrTarget | None = None

    @property
    def wait_bound(self) -> float:
        """How long one wait for restores may last: ``max_wait_seconds``, else derived from the tier."""
        return self.max_wait_seconds if self.max_wait_seconds is not None else MAX_WAIT_BY_TIER[self.restore_tier]

    def public(self) -> dict[str, Any]:
        """The parameters with no secret in them (for reports and logs)."""
        out: dict[str, Any] = {
            "text": self.text, "images": self.images, "out": self.out, "work": self.work,
            "criteria": list(self.criteria), "poll_seconds": self.poll_seconds, "wait_bound_seconds": self.wait_bound,
            "restore_tier": self.restore_tier, "restore_days": self.restore_days,
            "include_unknown": self.include_unknown, "tranche": self.tranche, "stow_url": self.stow_url,
            "config": self.config, "credentials_block": self.credentials_block,
            "emr": None if self.emr is None else {k: v for k, v in vars(self.emr).items() if v is not None},
        }
        if self.input is not None:
            out["input_s3_parameters"] = {"bucket": self.input.bucket, "region": self.input.region,
                                          "endpoint": self.input.endpoint, "credentials": "***"}
        return out

    def criteria_document(self, credentials: SecretText | None) -> dict[str, Any]:
        """The criteria file our jobs read (``--criteria``): criteria plus input_s3_parameters with the secret."""
        doc: dict[str, Any] = {"criteria": list(self.criteria)}
        if self.input is not None:
            if credentials is None:
                raise ConfigError("credentials_missing", "input_s3_parameters needs credentials or credentials_block")
            s3: dict[str, Any] = {"bucket": self.input.bucket, "region": self.input.region,
                                  "credentials": credentials.reveal()}
            if self.input.endpoint:
                s3["endpoint"] = self.input.endpoint
            doc["input_s3_parameters"] = s3
        return doc


def _fail(reason: str, detail: str) -> ConfigError:
    return ConfigError(reason, detail)


def _uri(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _fail("missing_parameter", f"{name}: a local folder or an s3://bucket/prefix is required")
    value = value.strip()
    if is_s3(value):
        split_s3(value)  # refuses s3:// without a bucket
        return value
    if "://" in value:
        raise _fail("bad_parameter", f"{name}: only local paths and s3:// URIs are supported, got {value!r}")
    return os.path.abspath(value)  # served runs may start elsewhere than the caller's folder


def _number(raw: Mapping[str, Any], name: str, default: float | None) -> float | None:
    value = raw.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise _fail("bad_parameter", f"{name}: expected a positive number of seconds, got {json.dumps(value)}")
    return float(value)


def _emr(raw: Any) -> EmrTarget | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise _fail("bad_parameter", "emr: expected an object with cluster_id or serverless_app_id")
    unknown = sorted(str(k) for k in raw if k not in EMR_KEYS)
    if unknown:
        raise _fail("bad_parameter", f"emr: unknown field {unknown[0]!r} (allowed: {', '.join(sorted(EMR_KEYS))})")
    targets = [k for k in ("cluster_id", "serverless_app_id") if raw.get(k)]
    if len(targets) != 1:
        raise _fail("bad_parameter", "emr: give exactly one of cluster_id and serverless_app_id")
    for k, v in raw.items():
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise _fail("bad_parameter", f"emr.{k}: expected a non-empty string")
    return EmrTarget(cluster_id=raw.get("cluster_id"), serverless_app_id=raw.get("serverless_app_id"),
                     config=raw.get("config") or "conf/emr.json", region=raw.get("region"),
                     root=os.path.abspath(raw.get("root") or "."))


def _input(raw: Any, block: str | None, criteria: list[Any]) -> tuple[InputBucket | None, SecretText | None]:
    """The input bucket and inline credentials, checked with the criteria by the parser the jobs use."""
    from ..selection.spec import parse_criteria

    if raw is None:
        if block:
            raise _fail("bad_parameter", "credentials_block is given but input_s3_parameters is not")
        parse_criteria(criteria)
        return None, None
    if not isinstance(raw, Mapping):
        raise _fail("bad_parameter", "input_s3_parameters: expected an object")
    inline = raw.get("credentials")
    if inline is not None and block:
        raise _fail("bad_parameter", "give input_s3_parameters.credentials or credentials_block, not both")
    if inline is None and not block:
        raise CriteriaError("bad_credentials", "input_s3_parameters: missing credentials (or give credentials_block)")
    # A stand-in secret when the block is resolved later: the parser checks everything else the same way.
    probe = dict(raw, credentials=inline if inline is not None else "block:resolved-at-run-time")
    spec = parse_criteria({"input_s3_parameters": probe, "criteria": criteria})
    s3 = spec.s3
    if s3 is None or spec.bucket is None:  # parse_criteria sets both whenever the object is given
        raise CriteriaError("bad_s3_parameters", "input_s3_parameters could not be read")
    bucket = InputBucket(bucket=spec.bucket, region=str(s3.region), endpoint=s3.endpoint_url)
    return bucket, (SecretText(str(inline).strip()) if inline is not None else None)


def parse_params(obj: Any) -> CampaignParams:
    """Validate a parameters object (bare, or wrapped in ``{"parameters": ...}``); raises ConfigError/CriteriaError."""
    if isinstance(obj, Mapping) and list(obj) == ["parameters"]:
        obj = obj["parameters"]
    if not isinstance(obj, Mapping):
        raise _fail("bad_parameters", f"expected a JSON object of parameters, got {type(obj).__name__}")
    raw = {k: v for k, v in obj.items() if v is not None}
    unknown = sorted(str(k) for k in raw if k not in PARAMETER_NAMES)
    if unknown:
        raise _fail("unknown_parameter", f"{unknown[0]!r} is not a campaign parameter "
                                         f"(known: {', '.join(PARAMETER_NAMES)})")
    criteria = raw.get("criteria", [])
    if not isinstance(criteria, list):
        raise CriteriaError("criteria_bad_document", f"'criteria' must be a list, got {type(criteria).__name__}")
    block = raw.get("credentials_block")
    if block is not None and (not isinstance(block, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", block)):
        raise _fail("bad_parameter", "credentials_block: the name of a Prefect Secret block (lower case, digits, -)")
    # Every criterion and the input parameters are checked before anything is restored.
    bucket, inline = _input(raw.get("input_s3_parameters"), block, criteria)
    text, images, out, work = (_uri(raw, n) for n in ("text", "images", "out", "work"))
    if bucket is not None:
        for name, uri in (("text", text), ("images", images)):
            if is_s3(uri) and split_s3(uri)[0] != bucket.bucket:
                raise _fail("input_bucket_mismatch", f"{name} is in bucket {split_s3(uri)[0]!r} but "
                                                     f"input_s3_parameters names {bucket.bucket!r}")
    tier = raw.get("restore_tier", "Bulk")
    if tier not in TIERS:
        raise _fail("bad_parameter", f"restore_tier: one of {', '.join(TIERS)}, got {json.dumps(tier)}")
    days = raw.get("restore_days", 7)
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise _fail("bad_parameter", f"restore_days: a whole number of days >= 1, got {json.dumps(days)}")
    include_unknown = raw.get("include_unknown", True)
    if not isinstance(include_unknown, bool):
        raise _fail("bad_parameter", "include_unknown: true or false")
    tranche = raw.get("tranche")
    if tranche is not None and (not isinstance(tranche, str) or not tranche.strip()):
        raise _fail("bad_parameter", "tranche: a non-empty string, passed to reassemble's --tranche as is")
    stow_url = raw.get("stow_url")
    if stow_url is not None and (not isinstance(stow_url, str)
                                 or not re.fullmatch(r"https?://[^\s@/]+(/\S*)?", stow_url)):
        raise _fail("bad_parameter", "stow_url: an http(s) DICOMweb root without user info")
    config = raw.get("config")
    if config is not None and (not isinstance(config, str) or not config.strip()):
        raise _fail("bad_parameter", "config: the path of a JSON job config (conf/local.json)")
    emr = _emr(raw.get("emr"))
    if emr is not None:
        local = [n for n, u in (("text", text), ("images", images), ("out", out), ("work", work)) if not is_s3(u)]
        if local:
            raise _fail("bad_parameter", f"emr: {', '.join(local)} must be s3:// URIs (the cluster cannot see "
                                         f"this machine's folders)")
    return CampaignParams(
        text=text, images=images, out=out, work=work, criteria=tuple(criteria), input=bucket, credentials=inline,
        credentials_block=block, poll_seconds=float(_number(raw, "poll_seconds", DEFAULT_POLL_SECONDS) or 0),
        max_wait_seconds=_number(raw, "max_wait_seconds", None), restore_tier=tier, restore_days=days,
        include_unknown=include_unknown, tranche=tranche.strip() if tranche else None, stow_url=stow_url,
        emr=emr, config=os.path.abspath(config) if config and not is_s3(config) else config)


def read_params(path: str) -> CampaignParams:
    """Read and validate a ``--params`` file; errors name the file, never its content."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            obj = json.load(fh)
    except FileNotFoundError:
        raise ConfigError("params_not_found", "no such file", uri=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("params_unreadable", type(exc).__name__, uri=path) from None
    except json.JSONDecodeError as exc:  # ``from None``: the error would carry the document, secret included
        raise ConfigError("params_not_json", f"{exc.msg} at line {exc.lineno} column {exc.colno}", uri=path) from None
    try:
        return parse_params(obj)
    except (ConfigError, CriteriaError) as exc:
        raise type(exc)(exc.reason, exc.detail, uri=path) from None


def resolve_credentials(params: CampaignParams) -> SecretText | None:
    """The input credentials: inline, or read from the Prefect Secret block ``credentials_block``."""
    if params.input is None:
        return None
    if params.credentials is not None:
        return params.credentials
    from prefect.blocks.system import Secret

    try:
        block = Secret.load(params.credentials_block)
    except ValueError:  # Prefect's "Unable to find block document named ..."
        raise ConfigError("credentials_block_not_found", f"no Prefect Secret block named "
                                                         f"{params.credentials_block!r}") from None
    value = block.get()
    if isinstance(value, Mapping):
        value = value.get("credentials")
    if not isinstance(value, str) or ":" not in value:
        raise CriteriaError("bad_credentials", f"Secret block {params.credentials_block!r} must hold "
                                               f"'key_id:access_key'")
    return SecretText(value.strip())
