"""Very large restores through S3 Batch Operations: the CSV manifest, the account settings and the CreateJob
request (built apart from its submission).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ..errors import ConfigError, NotFoundError, StorageError
from ..io import listing as io_listing
from ..io import uris as io_uris
from ..io import writes
from .requests import check_request_args

log = logging.getLogger(__name__)
DEFAULT_BATCH_THRESHOLD = 100_000


@dataclass(frozen=True)
class BatchManifest:
    """A written S3 Batch Operations manifest."""

    uri: str
    etag: str | None
    count: int


def batch_manifest_lines(uris: Iterable[str]) -> Iterator[str]:
    """``bucket,key`` CSV lines with URL-encoded keys (what S3BatchOperations_CSV_20180820 expects)."""
    for uri in uris:
        if not io_uris.is_s3(uri):
            raise ConfigError("batch_needs_s3", "S3 Batch Operations only act on s3:// objects", uri=uri)
        bucket, key = io_uris.split_s3(uri)
        # Encode everything (commas, spaces, '+', non-ASCII): the manifest is CSV and S3 URL-decodes the key.
        yield f"{bucket},{quote(key, safe='')}\n"


def write_batch_manifest(uris: Iterable[str], out_uri: str) -> BatchManifest:
    """Write the CSV manifest (no header row) and return its URI and ETag (needed by CreateJob)."""
    text = "".join(batch_manifest_lines(uris))
    count = text.count("\n")
    writes.write_bytes(out_uri, text.encode("utf-8"), writes.WriteOptions(content_type="text/csv"))
    info = io_listing.head(out_uri)
    etag = info.etag if info is not None and io_uris.is_s3(out_uri) else None
    return BatchManifest(out_uri, etag, count)


@dataclass(frozen=True)
class RestoreConfig:
    """Account settings for Batch Operations jobs (from ``--config``)."""

    account_id: str | None = None
    role_arn: str | None = None
    report_bucket: str | None = None
    report_prefix: str = "restore-reports"
    report_scope: str = "AllTasks"
    partition: str = "aws"
    region: str | None = None
    priority: int = 10


def read_restore_config(path: str | None) -> RestoreConfig:
    """Read the ``restore`` section (or the top level) of a JSON config file."""
    if not path:
        return RestoreConfig()
    from ..config import MAX_CONFIG_BYTES
    from ..io.json_document import DocumentTooDeep, DocumentTooLarge, loads_document, read_document_bytes

    try:
        raw = loads_document(read_document_bytes(path, MAX_CONFIG_BYTES).decode())
    except DocumentTooLarge as exc:
        raise ConfigError("config_too_large", str(exc), uri=path) from None
    except DocumentTooDeep as exc:
        raise ConfigError("config_too_deep", str(exc), uri=path) from None
    except ValueError as exc:
        raise ConfigError("bad_config", f"not JSON ({exc})", uri=path) from None
    except NotFoundError:
        raise ConfigError("config_not_found", "no such config file", uri=path) from None
    if not isinstance(raw, dict):
        raise ConfigError("bad_config", "the config must be a JSON object", uri=path)
    section = raw.get("restore", raw)
    known = set(RestoreConfig.__dataclass_fields__)
    values = {k: v for k, v in section.items() if k in known}
    return RestoreConfig(**values)


def _bucket_arn(bucket: str, partition: str) -> str:
    return bucket if bucket.startswith("arn:") else f"arn:{partition}:s3:::{bucket}"


def build_batch_restore_job(config: RestoreConfig, manifest: BatchManifest, *, tier: str = "Bulk", days: int = 7,
                            description: str = "dicom-reassembly restore") -> dict[str, Any]:
    """The s3control CreateJob request for an S3InitiateRestoreObject job over ``manifest``.

    The ClientRequestToken derives from the manifest and parameters, so submitting twice creates one job.
    """
    check_request_args(tier, days)
    if tier == "Expedited":
        raise ConfigError("bad_tier", "S3 Batch Operations restore supports Bulk and Standard, not Expedited")
    missing = [k for k in ("account_id", "role_arn", "report_bucket") if not getattr(config, k)]
    if missing:
        raise ConfigError("batch_config_missing", f"--config must give {', '.join(missing)} for a Batch Operations job")
    if not manifest.etag:
        raise ConfigError("batch_manifest_etag", "the manifest must be on S3 with an ETag", uri=manifest.uri)
    bucket, key = io_uris.split_s3(manifest.uri)
    token_src = f"{manifest.uri}|{manifest.etag}|{tier}|{days}|{config.account_id}"
    return {
        "AccountId": str(config.account_id),
        "ConfirmationRequired": False,
        "Operation": {"S3InitiateRestoreObject": {"ExpirationInDays": days, "GlacierJobTier": tier.upper()}},
        "Report": {
            "Bucket": _bucket_arn(str(config.report_bucket), config.partition),
            "Format": "Report_CSV_20180820",
            "Enabled": True,
            "Prefix": config.report_prefix,
            "ReportScope": config.report_scope,
        },
        "ClientRequestToken": hashlib.sha256(token_src.encode()).hexdigest()[:64],
        "Manifest": {
            "Spec": {"Format": "S3BatchOperations_CSV_20180820", "Fields": ["Bucket", "Key"]},
            "Location": {"ObjectArn": f"arn:{config.partition}:s3:::{bucket}/{key}", "ETag": manifest.etag},
        },
        "Description": f"{description} ({manifest.count} objects, {tier}, {days} days)"[:256],
        "Priority": int(config.priority),
        "RoleArn": str(config.role_arn),
    }


def submit_batch_job(client: Any, request: dict[str, Any]) -> str:
    """Create the Batch Operations job; returns its JobId."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        resp = client.create_job(**request)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "")) or "ClientError"
        log.error("CreateJob failed for account %s: %s", request.get("AccountId"), code)
        raise StorageError("batch_create_failed", code) from exc
    except BotoCoreError as exc:
        raise StorageError("s3control_unreachable", type(exc).__name__) from exc
    return str(resp["JobId"])
