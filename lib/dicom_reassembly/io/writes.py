"""Writing objects atomically (and create-exclusive when asked), deleting them, and checking a location is writable."""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import AlreadyExistsError, NotFoundError, StorageError
from .clients import s3_call, s3_client
from .uris import is_s3, split_s3

log = logging.getLogger(__name__)


def check_writable(uri: str) -> None:
    """Fail early, with one clear error, when an output location cannot be reached."""
    if is_s3(uri):
        bucket, _ = split_s3(uri)
        try:
            s3_call(uri, s3_client().head_bucket, Bucket=bucket)
        except NotFoundError as exc:  # HEAD has no body: a bare 404 here means the bucket
            raise StorageError("no_such_bucket", f"bucket {bucket!r} does not exist", uri=uri) from exc
        return
    try:
        os.makedirs(uri, exist_ok=True)
    except OSError as exc:
        raise StorageError("not_writable", exc.strerror or type(exc).__name__, uri=uri) from exc
    if not os.access(uri, os.W_OK):
        raise StorageError("not_writable", "permission denied", uri=uri)


@dataclass(frozen=True)
class WriteOptions:
    """How objects are written to S3; ignored for local paths."""

    checksum_algorithm: str = "SHA256"
    sse: str | None = None  # "AES256" or "aws:kms"
    sse_kms_key_id: str | None = None
    expected_bucket_owner: str | None = None
    multipart_threshold: int = 64 * 1024 * 1024
    content_type: str = "application/dicom"


def sha256_hex(parts: list[bytes] | tuple[bytes, ...]) -> str:
    """SHA-256 over a sequence of byte strings, as hex."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def _s3_extra_args(opts: WriteOptions, sha256: str, metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {"ContentType": opts.content_type, "Metadata": {**(metadata or {}), "sha256": sha256}}
    if opts.sse:
        extra["ServerSideEncryption"] = opts.sse
        if opts.sse.startswith("aws:kms") and opts.sse_kms_key_id:
            extra["SSEKMSKeyId"] = opts.sse_kms_key_id
    if opts.expected_bucket_owner:
        extra["ExpectedBucketOwner"] = opts.expected_bucket_owner
    return extra


def write_parts(uri: str, parts: list[Any], size: int, sha256: str, opts: WriteOptions = WriteOptions(),
                if_absent: bool = False, metadata: Mapping[str, str] | None = None) -> None:
    """Write an object made of byte strings (or memoryviews), atomically: readers see all of it or nothing.

    S3: one PutObject with a checksum S3 verifies, or a multipart upload above ``opts.multipart_threshold``;
    ``metadata`` joins the object's user metadata (beside ``sha256``). Local: a temp file in the same
    folder, then a rename over whatever is there.

    ``if_absent`` makes the write create-exclusive: it raises AlreadyExistsError instead of replacing an
    object, with no check beforehand, so of two writers racing for one key exactly one succeeds. S3: a
    conditional PutObject or CompleteMultipartUpload (If-None-Match: *). Local: the fully written temp
    file is hard-linked to its name, which fails if the name exists; where the file system has no hard
    links, the file is created with O_EXCL and written in place (a reader may then see it grow).
    """
    if is_s3(uri):
        bucket, key = split_s3(uri)
        extra = _s3_extra_args(opts, sha256, metadata)
        client = s3_client()
        if size < opts.multipart_threshold:
            if if_absent:
                extra["IfNoneMatch"] = "*"
            body = parts[0] if len(parts) == 1 else b"".join(parts)
            if opts.checksum_algorithm.upper() == "SHA256":
                # We hashed the object already: hand S3 the digest to verify instead of hashing twice.
                extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(sha256)).decode("ascii")
            else:
                extra["ChecksumAlgorithm"] = opts.checksum_algorithm
            s3_call(uri, client.put_object, Bucket=bucket, Key=key, Body=bytes(body) if isinstance(body, memoryview) else body,
                     **extra)
        elif if_absent:
            _write_multipart_if_absent(uri, client, bucket, key, parts, extra, opts)
        else:
            _write_multipart(uri, client, bucket, key, parts, extra, opts)
        return
    folder = os.path.dirname(uri) or "."
    if folder not in _FOLDERS_MADE:
        _make_folder(folder)
    # Unique per process and thread, so no random name is needed (mkstemp costs ~1 ms here).
    tmp = os.path.join(folder, f".tmp-{os.path.basename(uri)}.{os.getpid()}.{threading.get_ident()}.part")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileNotFoundError:  # the folder went away since we made it
            _make_folder(folder)
            fd = os.open(tmp, flags, 0o666)
        try:
            _write_all(fd, parts)
        finally:
            os.close(fd)
        if not if_absent:
            os.replace(tmp, uri)
            return
        try:
            os.link(tmp, uri)  # never replaces: EEXIST when the name is taken
        except FileExistsError:
            raise AlreadyExistsError("exists", "an object is already there", uri=uri) from None
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            _write_exclusive_in_place(uri, parts)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


# link(2) errors that mean "this file system has no hard links" (FAT, some network and FUSE mounts).
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}


def _write_exclusive_in_place(uri: str, parts: list[Any]) -> None:
    """Create ``uri`` with O_EXCL and write it; a failed write removes what it created."""
    try:
        fd = os.open(uri, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        raise AlreadyExistsError("exists", "an object is already there", uri=uri) from None
    try:
        try:
            _write_all(fd, parts)
        finally:
            os.close(fd)
    except BaseException:
        os.unlink(uri)
        raise


_FOLDERS_MADE: set[str] = set()


def _make_folder(folder: str) -> None:
    """makedirs, remembered: outputs share a few folders, and each call costs syscalls per instance."""
    os.makedirs(folder, exist_ok=True)
    if len(_FOLDERS_MADE) > 4096:
        _FOLDERS_MADE.clear()
    _FOLDERS_MADE.add(folder)


def _write_all(fd: int, parts: list[Any]) -> None:
    """Write every part with as few syscalls as the kernel allows (one writev when it takes everything)."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i:i + 1024])  # IOV_MAX
        if n == 0:
            raise OSError(f"write made no progress at part {i} of {len(views)}")
        while n:
            if n >= len(views[i]):
                n -= len(views[i])
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0


class _PartsReader:
    """A file-like view over a list of buffers, for streaming uploads without joining."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = [memoryview(p) for p in parts]
        self.i = 0
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        out = []
        want = float("inf") if n is None or n < 0 else n
        while want > 0 and self.i < len(self.parts):
            cur = self.parts[self.i]
            take = cur[self.pos: self.pos + int(min(want, len(cur) - self.pos))]
            out.append(take)
            self.pos += len(take)
            want -= len(take)
            if self.pos >= len(cur):
                self.i += 1
                self.pos = 0
        return b"".join(out)


def _multipart_chunk(opts: WriteOptions) -> int:
    return max(8 * 1024 * 1024, opts.multipart_threshold // 4)


def _write_multipart(uri: str, client: Any, bucket: str, key: str, parts: list[Any],
                     extra: dict[str, Any], opts: WriteOptions) -> None:
    from boto3.s3.transfer import TransferConfig

    cfg = TransferConfig(multipart_threshold=opts.multipart_threshold, multipart_chunksize=_multipart_chunk(opts),
                         max_concurrency=4, use_threads=True)
    extra = dict(extra, ChecksumAlgorithm=opts.checksum_algorithm)
    s3_call(uri, client.upload_fileobj, Fileobj=_PartsReader(parts), Bucket=bucket, Key=key,
             ExtraArgs=extra, Config=cfg)


def _write_multipart_if_absent(uri: str, client: Any, bucket: str, key: str, parts: list[Any],
                               extra: dict[str, Any], opts: WriteOptions) -> None:
    """A multipart upload completed with If-None-Match, part by part (boto3's transfer manager cannot pass it)."""
    owner = {"ExpectedBucketOwner": extra["ExpectedBucketOwner"]} if "ExpectedBucketOwner" in extra else {}
    algorithm = opts.checksum_algorithm.upper()
    upload = s3_call(uri, client.create_multipart_upload, Bucket=bucket, Key=key, ChecksumAlgorithm=algorithm,
                      **extra)["UploadId"]
    try:
        done = []
        reader = _PartsReader(parts)
        while chunk := reader.read(_multipart_chunk(opts)):
            number = len(done) + 1
            r = s3_call(uri, client.upload_part, Bucket=bucket, Key=key, UploadId=upload, PartNumber=number,
                         Body=chunk, ChecksumAlgorithm=algorithm, **owner)
            part = {"PartNumber": number, "ETag": r["ETag"]}
            if r.get(f"Checksum{algorithm}"):
                part[f"Checksum{algorithm}"] = r[f"Checksum{algorithm}"]
            done.append(part)
        s3_call(uri, client.complete_multipart_upload, Bucket=bucket, Key=key, UploadId=upload,
                 MultipartUpload={"Parts": done}, IfNoneMatch="*", **owner)
    except BaseException:
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, **owner)
        except Exception:  # the upload's parts expire with the bucket's lifecycle rule; the first error matters
            log.debug("could not abort multipart upload on %s", uri)
        raise


def write_bytes(uri: str, data: bytes, opts: WriteOptions = WriteOptions()) -> None:
    """Write one small object atomically."""
    write_parts(uri, [data], len(data), sha256_hex([data]), opts)


def delete(uri: str) -> None:
    """Delete an object; missing is fine."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_call(uri, s3_client().delete_object, Bucket=bucket, Key=key)
    elif os.path.exists(uri):
        os.unlink(uri)


def move(src: str, dst: str) -> None:
    """Move one object within a store: a rename locally (atomic), a server-side copy then a delete on S3."""
    if is_s3(src):
        bucket, key = split_s3(src)
        dst_bucket, dst_key = split_s3(dst)
        client = s3_client()
        # The managed copy switches to a multipart copy for large objects (a single CopyObject stops at 5 GB).
        s3_call(dst, client.copy, CopySource={"Bucket": bucket, "Key": key}, Bucket=dst_bucket, Key=dst_key)
        delete(src)
        return
    try:
        os.replace(src, dst)
    except OSError as exc:
        raise StorageError("not_writable", f"{exc.strerror or type(exc).__name__} moving {src}", uri=dst) from exc


def delete_tree(uri: str) -> None:
    """Delete a folder (a local tree, or every key under an S3 prefix); missing is fine."""
    if not is_s3(uri):
        import shutil

        shutil.rmtree(uri, ignore_errors=True)
        return
    bucket, key = split_s3(uri)
    client = s3_client()
    prefix = key.rstrip("/") + "/"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3_call(uri, client.delete_objects, Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
