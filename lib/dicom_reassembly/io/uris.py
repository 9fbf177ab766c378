"""Object locations: local paths and ``s3://bucket/key`` URIs, and the grammar that tells them apart."""

from __future__ import annotations

import logging
import os

from ..errors import StorageError

log = logging.getLogger(__name__)
S3_PREFIX = "s3://"


def is_s3(uri: str) -> bool:
    """True for ``s3://`` URIs."""
    return uri.startswith(S3_PREFIX)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    rest = uri[len(S3_PREFIX):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError("bad_uri", f"no bucket in {uri!r}")
    return bucket, key


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a local path or an S3 prefix."""
    if is_s3(base):
        out = base.rstrip("/")
        for p in parts:
            out = f"{out}/{p.strip('/')}"
        return out
    return os.path.join(base, *parts)


def basename(uri: str) -> str:
    """Last path segment of a URI."""
    return uri.rstrip("/").rsplit("/", 1)[-1]
