"""S3 clients: how to reach S3 (``S3Settings``), one cached boto3 client per settings, and S3 errors made ours.

S3 goes through boto3 with the standard AWS environment, ``AWS_ENDPOINT_URL`` included, so any S3-compatible
endpoint works. Clients are cached per process and per settings, because creating one costs milliseconds and we
read millions of objects.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from typing import Any

from ..errors import AlreadyExistsError, NotFoundError, NotRestoredError, StorageError
from .uris import is_s3, split_s3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3. Empty fields fall back to the default AWS chain.

    The secret never appears in ``repr`` so that a settings object can be logged.
    """

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = dataclasses.field(default=None, repr=False)
    max_pool_connections: int = 32
    max_attempts: int = 10

    def __repr__(self) -> str:  # explicit, so no secret leaks through dataclass repr
        key = "***" if self.access_key_id else None
        return f"S3Settings(endpoint_url={self.endpoint_url!r}, region={self.region!r}, access_key_id={key!r})"


@dataclass(frozen=True)
class ArchiveAccess:
    """The partner's input bucket and the settings that reach it (``input_s3_parameters``).

    Handed explicitly to whatever lists or reads the archives: on the driver as an argument, on the executors
    inside the task's closure; never kept in module state. Every other bucket (outputs, manifest, ledger, code)
    goes through the default AWS chain, so input credentials never reach anything else. ``repr`` hides the
    secret (``S3Settings`` does); the pickled form holds it: ship it to executors, never log it.
    """

    settings: S3Settings
    bucket: str

    def settings_for(self, uri: str) -> S3Settings | None:
        """The input settings for an object of the input bucket; None (the default chain) for any other."""
        return self.settings if is_s3(uri) and split_s3(uri)[0] == self.bucket else None


def archive_access(settings: S3Settings | None, bucket: str | None) -> ArchiveAccess | None:
    """An ``ArchiveAccess`` when both are given, else None: without a bucket, input settings apply nowhere."""
    return ArchiveAccess(settings, bucket) if settings is not None and bucket else None


# A cache of connections, keyed by the settings each was made with; which settings reach an object is always the
# caller's explicit choice (``client_for``).
_clients: dict[S3Settings, Any] = {}
_clients_lock = threading.Lock()


def client_for(uri: str, access: ArchiveAccess | None = None) -> Any:
    """The client for ``uri``: the input settings for the input bucket (``access``), else the default chain."""
    return s3_client(access.settings_for(uri) if access is not None else None)


def s3_client(settings: S3Settings | None = None) -> Any:
    """A cached boto3 S3 client with adaptive retries (SlowDown, 5xx)."""
    settings = settings or S3Settings()
    with _clients_lock:
        client = _clients.get(settings)
        if client is None:
            import boto3
            from botocore.config import Config

            cfg = Config(
                retries={"mode": "adaptive", "max_attempts": settings.max_attempts},
                max_pool_connections=settings.max_pool_connections,
                region_name=settings.region,
            )
            session = boto3.session.Session(
                aws_access_key_id=settings.access_key_id,
                aws_secret_access_key=settings.secret_access_key,
                region_name=settings.region,
            )
            client = session.client("s3", endpoint_url=settings.endpoint_url, config=cfg)
            _clients[settings] = client
        return client


def translate_client_error(exc: Exception, uri: str) -> Exception:
    """Map a botocore error onto our typed errors, keeping the S3 code."""
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    if code == "InvalidObjectState":
        return NotRestoredError("not_restored", "object is in Glacier and not restored", uri=uri)
    if code in ("NoSuchKey", "404", "NotFound"):
        return NotFoundError("not_found", "no such object", uri=uri)
    if code in ("PreconditionFailed", "412"):
        return AlreadyExistsError("exists", "an object is already there", uri=uri)
    if code == "NoSuchBucket":
        return StorageError("no_such_bucket", "bucket does not exist", uri=uri)
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return StorageError("access_denied", code, uri=uri)
    return StorageError("s3_error", code or type(exc).__name__, uri=uri)


def s3_call(uri: str, fn: Any, **kwargs: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except ClientError as exc:
        err = translate_client_error(exc, uri)
        log.debug("S3 %s failed on %s: %s", getattr(fn, "__name__", "call"), uri, err)
        raise err from exc
    except BotoCoreError as exc:
        raise StorageError("s3_unreachable", type(exc).__name__, uri=uri) from exc
