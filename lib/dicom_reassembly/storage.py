"""Object storage: local paths and ``s3://bucket/key`` URIs behind one small API.

S3 goes through boto3 with the standard AWS environment, ``AWS_ENDPOINT_URL``
included, so any S3-compatible endpoint works. Clients are cached per process
and per settings, because creating one costs milliseconds and we read millions
of objects.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import hashlib
import logging
import mmap
import os
import stat
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .errors import AlreadyExistsError, NotFoundError, NotRestoredError, ReassemblyError, StorageError

log = logging.getLogger(__name__)

S3_PREFIX = "s3://"


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
class ObjectInfo:
    """One listed object: its URI, size, and a change fingerprint.

    ``error`` is set (with ``error_detail``) for an entry the listing found but
    could not use: a broken link (``broken_link``), a folder it may not read
    (``access_denied``), one that vanished (``not_found``), a linked folder it
    does not follow (``not_an_archive``). Listings report them instead of
    stopping or skipping them.
    """

    uri: str
    size: int
    etag: str
    mtime: datetime | None = None
    storage_class: str | None = None
    error: str | None = None
    error_detail: str | None = None


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


_clients: dict[S3Settings, Any] = {}
_clients_lock = threading.Lock()
_default_settings = S3Settings()


_read_settings: S3Settings | None = None
_read_buckets: frozenset[str] = frozenset()


def set_default_s3_settings(settings: S3Settings | None) -> None:
    """Make ``settings`` the process default for every S3 call."""
    global _default_settings
    _default_settings = settings or S3Settings()


def set_archive_s3_settings(settings: S3Settings | None, bucket: str | None) -> None:
    """Settings for the partner's input bucket only (the orchestrator's input_s3_parameters).

    Every other bucket (outputs, manifest, ledger, code) keeps the default chain,
    so input credentials never write anywhere else.
    """
    global _read_settings, _read_buckets
    _read_settings = settings
    _read_buckets = frozenset({bucket}) if settings is not None and bucket else frozenset()


def _client_for(uri: str) -> Any:
    if _read_settings is not None and split_s3(uri)[0] in _read_buckets:
        return s3_client(_read_settings)
    return s3_client()


def s3_client(settings: S3Settings | None = None) -> Any:
    """A cached boto3 S3 client with adaptive retries (SlowDown, 5xx)."""
    settings = settings or _default_settings
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


def translate_os_error(exc: OSError, path: str) -> ReassemblyError:
    """Map a local OSError onto our typed errors, keeping its cause: permission, broken link, absence."""
    if isinstance(exc, PermissionError):
        return StorageError("access_denied", "permission denied", uri=path)
    if exc.errno == errno.ELOOP:
        return NotFoundError("broken_link", "too many levels of symbolic links (a link loop)", uri=path)
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return NotFoundError("broken_link", f"symbolic link to {target!r}, which does not exist", uri=path)
        return NotFoundError("not_found", "no such file", uri=path)
    return StorageError("os_error", exc.strerror or type(exc).__name__, uri=path)


def _s3_call(uri: str, fn: Any, **kwargs: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except ClientError as exc:
        err = translate_client_error(exc, uri)
        log.debug("S3 %s failed on %s: %s", getattr(fn, "__name__", "call"), uri, err)
        raise err from exc
    except BotoCoreError as exc:
        raise StorageError("s3_unreachable", type(exc).__name__, uri=uri) from exc


def list_objects(prefix: str, suffixes: tuple[str, ...] = ()) -> Iterator[ObjectInfo]:
    """List the objects under a local folder or S3 prefix, paginated, sorted by key.

    ``suffixes`` filters by name ending; empty means everything. Entries that
    cannot be used come with ``error`` set, never as an exception and never
    dropped: a folder that cannot be read is listed whatever ``suffixes`` says,
    since archives may be inside it. Only a prefix that cannot be listed at all raises.
    """
    if is_s3(prefix):
        yield from _list_s3(prefix, suffixes)
        return
    if os.path.isdir(prefix):
        entries = _walk_local(prefix)
    elif os.path.lexists(prefix):
        entries = [(_local_entry(prefix), False)]
    else:
        raise NotFoundError("not_found", "no such folder", uri=prefix)
    for entry, folder in entries:
        if folder or not suffixes or entry.uri.endswith(suffixes):
            yield entry


def _list_s3(prefix: str, suffixes: tuple[str, ...]) -> Iterator[ObjectInfo]:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(prefix)
    if key and not key.endswith("/"):
        key += "/"
    pages = _client_for(prefix).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
    try:
        for page in pages:
            for obj in page.get("Contents", []):
                name = obj["Key"]
                if (name.endswith("/") and not obj["Size"]) or (suffixes and not name.endswith(suffixes)):
                    continue  # an empty key ending in "/" is a console folder marker, not data
                yield ObjectInfo(uri=f"s3://{bucket}/{name}", size=int(obj["Size"]),
                                 etag=str(obj.get("ETag", "")).strip('"'), mtime=obj.get("LastModified"),
                                 storage_class=obj.get("StorageClass"))
    except ClientError as exc:
        raise translate_client_error(exc, prefix) from exc
    except BotoCoreError as exc:
        raise StorageError("s3_unreachable", type(exc).__name__, uri=prefix) from exc


def _local_entry(path: str) -> ObjectInfo:
    """A listed local file; a broken link, a file that vanished or one we may not stat carries its error."""
    try:
        st = os.stat(path)
    except OSError as exc:
        err = translate_os_error(exc, path)
        try:
            lst = os.lstat(path)
            etag = f"link-{lst.st_mtime_ns:x}"  # changes when the link is replaced, so the next run retries it
        except OSError:
            etag = ""
        return ObjectInfo(os.path.abspath(path), 0, etag, error=err.reason, error_detail=err.detail)
    return ObjectInfo(os.path.abspath(path), st.st_size, f"{st.st_size:x}-{st.st_mtime_ns:x}",
                      datetime.fromtimestamp(st.st_mtime, tz=timezone.utc))


def _walk_local(top: str) -> list[tuple[ObjectInfo, bool]]:
    """(entry, is a folder) for every file under ``top`` in key order, and for each folder it cannot read.

    Linked folders are not followed (a link may loop): each is listed as ``not_an_archive``.
    """
    failures: list[OSError] = []
    entries: list[tuple[ObjectInfo, bool]] = []
    for root, dirs, files in os.walk(top, onerror=failures.append):
        entries.extend((_local_entry(os.path.join(root, f)), False) for f in files)
        for d in dirs:
            path = os.path.join(root, d)
            if os.path.islink(path):
                detail = f"a link to the folder {os.readlink(path)!r}: linked folders are not followed"
                entries.append((ObjectInfo(os.path.abspath(path), 0, "", error="not_an_archive", error_detail=detail),
                                True))
    for exc in failures:
        path = exc.filename or top
        err = translate_os_error(exc, path)
        if os.path.abspath(path) == os.path.abspath(top):
            raise err from exc
        entries.append((ObjectInfo(os.path.abspath(path), 0, "", error=err.reason,
                                   error_detail=f"folder cannot be listed: {err.detail}"), True))
    top = os.path.abspath(top)
    entries.sort(key=lambda e: os.path.relpath(e[0].uri, top))  # key order, as S3 lists
    return entries


def check_writable(uri: str) -> None:
    """Fail early, with one clear error, when an output location cannot be reached."""
    if is_s3(uri):
        bucket, _ = split_s3(uri)
        try:
            _s3_call(uri, _client_for(uri).head_bucket, Bucket=bucket)
        except NotFoundError as exc:  # HEAD has no body: a bare 404 here means the bucket
            raise StorageError("no_such_bucket", f"bucket {bucket!r} does not exist", uri=uri) from exc
        return
    try:
        os.makedirs(uri, exist_ok=True)
    except OSError as exc:
        raise StorageError("not_writable", exc.strerror or type(exc).__name__, uri=uri) from exc
    if not os.access(uri, os.W_OK):
        raise StorageError("not_writable", "permission denied", uri=uri)


def count_objects(prefix: str, suffixes: tuple[str, ...] = ()) -> tuple[int, int]:
    """How many objects are under ``prefix``, and their bytes."""
    n = total = 0
    for obj in list_objects(prefix, suffixes):
        n += 1
        total += obj.size
    return n, total


def head(uri: str) -> ObjectInfo | None:
    """Size and fingerprint of one object, or None when it does not exist."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            r = _s3_call(uri, _client_for(uri).head_object, Bucket=bucket, Key=key)
        except NotFoundError:
            return None
        return ObjectInfo(uri, int(r["ContentLength"]), str(r.get("ETag", "")).strip('"'),
                          r.get("LastModified"), r.get("StorageClass"))
    try:
        st = os.stat(uri)
    except OSError as exc:
        err = translate_os_error(exc, uri)
        if err.reason == "not_found":
            return None
        raise err from exc  # a broken link or a refusal is not "absent": keep the cause
    if not stat.S_ISREG(st.st_mode):
        return None
    return ObjectInfo(uri, st.st_size, f"{st.st_size:x}-{st.st_mtime_ns:x}",
                      datetime.fromtimestamp(st.st_mtime, tz=timezone.utc))


def head_metadata(uri: str) -> dict[str, Any] | None:
    """Raw head: size and user metadata, or None when absent."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            r = _s3_call(uri, _client_for(uri).head_object, Bucket=bucket, Key=key)
        except NotFoundError:
            return None
        return {"size": int(r["ContentLength"]), "metadata": r.get("Metadata", {})}
    if not os.path.isfile(uri):
        return None
    return {"size": os.path.getsize(uri), "metadata": {}}


class _Counter:
    """Process-wide I/O counters, so benchmarks and tests can see what was read."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gets = 0
        self.bytes_read = 0
        self.opens: dict[str, int] = {}

    def record(self, uri: str, nbytes: int = 0, open_: bool = True) -> None:
        with self.lock:
            if open_:
                self.gets += 1
                self.opens[uri] = self.opens.get(uri, 0) + 1
            self.bytes_read += nbytes

    def reset(self) -> None:
        with self.lock:
            self.gets = 0
            self.bytes_read = 0
            self.opens = {}


io_counter = _Counter()


class _CountingReader:
    """Wrap a readable stream to count bytes read into ``io_counter``."""

    def __init__(self, raw: Any, uri: str) -> None:
        self.raw = raw
        self.uri = uri

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read() if n is None or n < 0 else self.raw.read(n)
        io_counter.record(self.uri, len(data), open_=False)
        return data

    @property
    def maps_in_place(self) -> bool:
        """Whether ``read_view`` maps the source's pages instead of copying them into memory."""
        return hasattr(self.raw, "read_view")

    def read_view(self, n: int) -> Any:
        """Up to ``n`` bytes as a view of the source's pages (only when ``maps_in_place``)."""
        data = self.raw.read_view(n)
        io_counter.record(self.uri, len(data), open_=False)
        return data

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> _CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _LimitedFile:
    """A local file window [start, end) that reads like a stream."""

    def __init__(self, path: str, start: int, end: int | None) -> None:
        self.f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.size = os.fstat(self.f.fileno()).st_size
        self.f.seek(start)
        self.remaining = None if end is None else max(0, end - start)

    def read_view(self, n: int) -> Any:
        """Up to ``n`` bytes as a read-only view of the file's pages, without copying them.

        For members too big to hold in memory: the view costs address space,
        not memory, and no temporary copy is written. Views are clamped to the
        file's size at open: archives must not shrink during a run (reading a
        mapped page past the end is fatal).
        """
        pos = self.f.tell()
        n = min(n, max(0, self.size - pos))
        if self.remaining is not None:
            n = min(n, self.remaining)
        if n <= 0:  # mmap would take a length of 0 as "to the end of the file"
            return b""
        base = pos - pos % mmap.ALLOCATIONGRANULARITY
        pages = mmap.mmap(self.f.fileno(), pos - base + n, access=mmap.ACCESS_READ, offset=base)
        self.f.seek(pos + n)
        if self.remaining is not None:
            self.remaining -= n
        return memoryview(pages)[pos - base:]

    def read(self, n: int = -1) -> bytes:
        if self.remaining is None:
            return self.f.read(n)
        if n is None or n < 0 or n > self.remaining:
            n = self.remaining
        data = self.f.read(n)
        self.remaining -= len(data)
        return data

    def close(self) -> None:
        self.f.close()


def open_read(uri: str, start: int = 0, end: int | None = None) -> Any:
    """Open a forward-only stream over bytes [start, end) of an object: one GET on S3."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        r = _s3_call(uri, _client_for(uri).get_object, **kwargs)
        io_counter.record(uri)
        return _CountingReader(r["Body"], uri)
    try:
        reader = _LimitedFile(uri, start, end)
    except OSError as exc:
        raise translate_os_error(exc, uri) from exc
    io_counter.record(uri)
    return _CountingReader(reader, uri)


def read_range(uri: str, start: int, length: int) -> bytes:
    """Read ``length`` bytes at ``start`` with a single ranged read."""
    if length <= 0:
        return b""
    with open_read(uri, start, start + length) as stream:
        return read_exact(stream, length)


def read_exact(stream: Any, n: int) -> bytes:
    """Read up to n bytes, looping over short reads; shorter only at end of stream."""
    chunks = []
    got = 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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
        client = _client_for(uri)
        if size < opts.multipart_threshold:
            if if_absent:
                extra["IfNoneMatch"] = "*"
            body = parts[0] if len(parts) == 1 else b"".join(parts)
            if opts.checksum_algorithm.upper() == "SHA256":
                # We hashed the object already: hand S3 the digest to verify instead of hashing twice.
                extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(sha256)).decode("ascii")
            else:
                extra["ChecksumAlgorithm"] = opts.checksum_algorithm
            _s3_call(uri, client.put_object, Bucket=bucket, Key=key, Body=bytes(body) if isinstance(body, memoryview) else body,
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
    _s3_call(uri, client.upload_fileobj, Fileobj=_PartsReader(parts), Bucket=bucket, Key=key,
             ExtraArgs=extra, Config=cfg)


def _write_multipart_if_absent(uri: str, client: Any, bucket: str, key: str, parts: list[Any],
                               extra: dict[str, Any], opts: WriteOptions) -> None:
    """A multipart upload completed with If-None-Match, part by part (boto3's transfer manager cannot pass it)."""
    owner = {"ExpectedBucketOwner": extra["ExpectedBucketOwner"]} if "ExpectedBucketOwner" in extra else {}
    algorithm = opts.checksum_algorithm.upper()
    upload = _s3_call(uri, client.create_multipart_upload, Bucket=bucket, Key=key, ChecksumAlgorithm=algorithm,
                      **extra)["UploadId"]
    try:
        done = []
        reader = _PartsReader(parts)
        while chunk := reader.read(_multipart_chunk(opts)):
            number = len(done) + 1
            r = _s3_call(uri, client.upload_part, Bucket=bucket, Key=key, UploadId=upload, PartNumber=number,
                         Body=chunk, ChecksumAlgorithm=algorithm, **owner)
            part = {"PartNumber": number, "ETag": r["ETag"]}
            if r.get(f"Checksum{algorithm}"):
                part[f"Checksum{algorithm}"] = r[f"Checksum{algorithm}"]
            done.append(part)
        _s3_call(uri, client.complete_multipart_upload, Bucket=bucket, Key=key, UploadId=upload,
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


def read_bytes(uri: str) -> bytes:
    """Read a whole (small) object."""
    with open_read(uri) as s:
        return s.read()


def delete(uri: str) -> None:
    """Delete an object; missing is fine."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _s3_call(uri, _client_for(uri).delete_object, Bucket=bucket, Key=key)
    elif os.path.exists(uri):
        os.unlink(uri)

