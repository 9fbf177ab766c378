"""Object storage: local files and S3 through a real moto server."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import permissions_enforced, s3_access_denied

from dicom_reassembly.errors import NotFoundError, NotRestoredError, StorageError
from dicom_reassembly.io import clients, listing, reads, writes
from dicom_reassembly.io.clients import S3Settings
from dicom_reassembly.io.writes import WriteOptions


@pytest.fixture()
def bucket(s3: Any) -> str:
    name = f"st-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def _leftovers(folder: str) -> list[str]:
    return [n for n in os.listdir(folder) if n.startswith(".tmp-")]


# ---------------------------------------------------------------- local writes


def test_local_write_is_complete_and_leaves_no_temp_file(tmp_path: Any) -> None:
    target = os.path.join(tmp_path, "out", "nested", "1.2.3.dcm")
    parts = [b"head", memoryview(b"-pixels-"), b"tail"]
    writes.write_parts(target, parts, 16, writes.sha256_hex([b"head-pixels-tail"]))
    with open(target, "rb") as f:
        assert f.read() == b"head-pixels-tail"
    assert _leftovers(os.path.dirname(target)) == []
    writes.write_bytes(target, b"second")
    assert reads.read_bytes(target) == b"second"
    assert _leftovers(os.path.dirname(target)) == []


class _Boom:
    """A part that is not a buffer: the write fails after earlier parts went out."""


def test_local_write_failing_midway_leaves_no_partial_file(tmp_path: Any) -> None:
    target = os.path.join(tmp_path, "1.2.3.dcm")
    with pytest.raises(TypeError):
        writes.write_parts(target, [b"x" * 100_000, _Boom(), b"never"], 100_010, "0" * 64)
    assert not os.path.exists(target)
    assert _leftovers(tmp_path) == []
    # An existing object is not replaced by a failed write.
    writes.write_bytes(target, b"good")
    with pytest.raises(TypeError):
        writes.write_parts(target, [b"bad", _Boom()], 3, "0" * 64)
    assert reads.read_bytes(target) == b"good"
    assert _leftovers(tmp_path) == []


def test_local_write_completes_after_short_writes(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.writev
    calls = []

    def at_most_seven_bytes(fd: int, buffers: list) -> int:
        calls.append(len(buffers))
        return real(fd, [bytes(buffers[0][:7])])

    monkeypatch.setattr(os, "writev", at_most_seven_bytes)
    parts = [b"head", memoryview(b"-pixels-" * 5), b"", bytearray(b"tail")]
    target = os.path.join(tmp_path, "1.2.3.dcm")
    writes.write_parts(target, parts, 48, "0" * 64)
    assert reads.read_bytes(target) == b"head" + b"-pixels-" * 5 + b"tail"
    assert len(calls) == 8  # 4 + 40 + 4 bytes, seven at a time, each short write resumed where it stopped


def test_local_write_remakes_a_folder_removed_since_the_last_write(tmp_path: Any) -> None:
    import shutil

    target = os.path.join(tmp_path, "out", "1.2.3.dcm")
    writes.write_bytes(target, b"one")
    shutil.rmtree(os.path.join(tmp_path, "out"))
    writes.write_bytes(target, b"two")
    assert reads.read_bytes(target) == b"two"


def _race(write: Any, contenders: list[bytes]) -> list[Any]:
    """Run ``write(data)`` for each contender at once; each result is None (it wrote) or the exception raised."""
    import threading

    barrier = threading.Barrier(len(contenders))
    results: list[Any] = [None] * len(contenders)

    def one(i: int) -> None:
        barrier.wait()
        try:
            write(contenders[i])
        except Exception as exc:  # collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(contenders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_a_create_exclusive_local_write_never_replaces(tmp_path: Any) -> None:
    from dicom_reassembly.errors import AlreadyExistsError

    target = os.path.join(tmp_path, "out", "1.2.3.dcm")
    writes.write_parts(target, [b"first"], 5, "0" * 64, if_absent=True)
    with pytest.raises(AlreadyExistsError):
        writes.write_parts(target, [b"second"], 6, "0" * 64, if_absent=True)
    assert reads.read_bytes(target) == b"first"
    assert _leftovers(os.path.dirname(target)) == []
    writes.write_parts(target, [b"third"], 5, "0" * 64)  # a plain write still replaces
    assert reads.read_bytes(target) == b"third"


def test_local_writers_racing_for_one_name_leave_one_winner(tmp_path: Any) -> None:
    from dicom_reassembly.errors import AlreadyExistsError

    target = os.path.join(tmp_path, "race.dcm")
    contenders = [bytes([i]) * (200_000 + i) for i in range(8)]  # large enough that writes overlap
    results = _race(lambda d: writes.write_parts(target, [d], len(d), "0" * 64, if_absent=True), contenders)
    winners = [i for i, r in enumerate(results) if r is None]
    assert len(winners) == 1 and all(isinstance(r, AlreadyExistsError) for r in results if r is not None)
    assert reads.read_bytes(target) == contenders[winners[0]]
    assert _leftovers(tmp_path) == []


def test_without_hard_links_a_local_write_is_still_exclusive(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from dicom_reassembly.errors import AlreadyExistsError

    def no_links(*_a: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    target = os.path.join(tmp_path, "1.2.3.dcm")
    writes.write_parts(target, [b"fi", b"rst"], 5, "0" * 64, if_absent=True)
    with pytest.raises(AlreadyExistsError):
        writes.write_parts(target, [b"second"], 6, "0" * 64, if_absent=True)
    assert reads.read_bytes(target) == b"first"
    other = os.path.join(tmp_path, "1.2.4.dcm")
    with pytest.raises(TypeError):  # a failed in-place write removes what it created
        writes.write_parts(other, [b"x" * 1000, _Boom()], 1000, "0" * 64, if_absent=True)
    assert not os.path.exists(other) and _leftovers(tmp_path) == []


# ---------------------------------------------------------------- local listing and reads


def test_local_listing_with_suffix_filter(tmp_path: Any) -> None:
    for rel, body in [("a.tar", b"1"), ("b/c.tar", b"22"), ("b/d.json", b"3"), ("b/e/f.tar", b"4444")]:
        path = os.path.join(tmp_path, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(body)
    listed = {os.path.relpath(o.uri, tmp_path): o.size for o in listing.list_objects(str(tmp_path), (".tar",))}
    assert listed == {"a.tar": 1, os.path.join("b", "c.tar"): 2, os.path.join("b", "e", "f.tar"): 4}
    everything = [o.uri for o in listing.list_objects(str(tmp_path))]
    assert len(everything) == 4
    single = list(listing.list_objects(os.path.join(tmp_path, "a.tar")))
    assert [o.size for o in single] == [1]
    with pytest.raises(NotFoundError):
        list(listing.list_objects(os.path.join(tmp_path, "missing")))


def test_local_head_and_ranges(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "x.bin")
    writes.write_bytes(path, bytes(range(256)))
    info = listing.head(path)
    assert info is not None and info.size == 256
    assert listing.head(os.path.join(tmp_path, "nope")) is None
    assert reads.read_range(path, 10, 5) == bytes(range(10, 15))
    assert reads.read_range(path, 250, 100) == bytes(range(250, 256))  # short only at the end
    with pytest.raises(NotFoundError):
        reads.read_bytes(os.path.join(tmp_path, "nope"))


# ---------------------------------------------------------------- S3


@pytest.fixture()
def small_pages() -> Iterator[list[int]]:
    """Make the shared client list 50 keys a page (S3 allows any MaxKeys); count the pages.

    Over 1000 keys would exercise the default page size, but takes moto several seconds to create.
    """
    client = clients.s3_client()
    pages: list[int] = []

    def set_page(params: dict[str, Any], **_: Any) -> None:
        params["MaxKeys"] = 50

    def count(**_: Any) -> None:
        pages.append(1)

    client.meta.events.register("provide-client-params.s3.ListObjectsV2", set_page)
    client.meta.events.register("after-call.s3.ListObjectsV2", count)
    try:
        yield pages
    finally:
        client.meta.events.unregister("provide-client-params.s3.ListObjectsV2", set_page)
        client.meta.events.unregister("after-call.s3.ListObjectsV2", count)


def test_s3_listing_follows_every_page(s3: Any, bucket: str, small_pages: list[int]) -> None:
    keys = [f"deliveries/text/{i:04d}.tar" for i in range(120)]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=b"t" * (len(k) % 7))
    s3.put_object(Bucket=bucket, Key="deliveries/text/", Body=b"")  # a "folder" marker
    s3.put_object(Bucket=bucket, Key="deliveries/text/readme.txt", Body=b"r")
    s3.put_object(Bucket=bucket, Key="deliveries/text2/other.tar", Body=b"o")  # a sibling prefix
    listed = list(listing.list_objects(f"s3://{bucket}/deliveries/text", (".tar",)))
    assert len(small_pages) == 3
    assert [o.uri for o in listed] == [f"s3://{bucket}/{k}" for k in keys]
    assert [o.size for o in listed] == [len(k) % 7 for k in keys]
    assert all(o.etag and '"' not in o.etag and o.mtime is not None for o in listed)
    everything = [o.uri.rsplit("/", 1)[-1] for o in listing.list_objects(f"s3://{bucket}/deliveries/text/")]
    assert len(everything) == 121 and "readme.txt" in everything and "" not in everything


def test_s3_head_read_and_missing(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="a/b.bin", Body=bytes(range(100)))
    info = listing.head(f"s3://{bucket}/a/b.bin")
    assert info is not None and info.size == 100 and info.etag == hashlib.md5(bytes(range(100))).hexdigest()
    assert listing.head(f"s3://{bucket}/a/missing.bin") is None
    assert reads.read_range(f"s3://{bucket}/a/b.bin", 90, 50) == bytes(range(90, 100))
    with pytest.raises(NotFoundError) as exc:
        reads.read_bytes(f"s3://{bucket}/a/missing.bin")
    assert exc.value.reason == "not_found" and exc.value.uri == f"s3://{bucket}/a/missing.bin"
    with pytest.raises(StorageError) as exc:
        reads.read_bytes(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x")
    assert exc.value.reason == "no_such_bucket"


def test_s3_glacier_object_is_not_restored(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="cold/a.tar", Body=b"x" * 1024, StorageClass="GLACIER")
    uri = f"s3://{bucket}/cold/a.tar"
    for read in (lambda: reads.read_bytes(uri), lambda: reads.read_range(uri, 0, 512)):
        with pytest.raises(NotRestoredError) as exc:
            read()
        assert exc.value.reason == "not_restored" and exc.value.status == "not_restored"
    info = listing.head(uri)
    assert info is not None and info.storage_class == "GLACIER"
    assert [o.storage_class for o in listing.list_objects(f"s3://{bucket}/cold")] == ["GLACIER"]


def test_s3_small_write_stores_its_sha256(s3: Any, bucket: str) -> None:
    data = b"DICM" * 1000
    uri = f"s3://{bucket}/out/1.2.3.dcm"
    writes.write_bytes(uri, data)
    r = s3.head_object(Bucket=bucket, Key="out/1.2.3.dcm")
    assert r["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert r["ContentType"] == "application/dicom"
    assert "-" not in r["ETag"]  # a single PutObject
    assert reads.read_bytes(uri) == data


def test_s3_multipart_write(s3: Any, bucket: str) -> None:
    head = b"H" * 1000
    body = bytes(range(256)) * (6 * 1024 * 1024 // 256)
    tail = b"T" * 77
    parts = [head, memoryview(body), tail]
    whole = head + body + tail
    sha = writes.sha256_hex(parts)
    assert sha == hashlib.sha256(whole).hexdigest()
    uri = f"s3://{bucket}/out/big.dcm"
    writes.write_parts(uri, parts, len(whole), sha, WriteOptions(multipart_threshold=5 * 1024 * 1024))
    r = s3.head_object(Bucket=bucket, Key="out/big.dcm")
    assert "-" in r["ETag"].strip('"')  # a multipart upload's ETag is <md5 of md5s>-<part count>
    assert r["ContentLength"] == len(whole)
    assert r["Metadata"]["sha256"] == hashlib.sha256(whole).hexdigest()
    assert reads.read_bytes(uri) == whole


def test_s3_settings_repr_hides_the_secret() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"
    settings = S3Settings(endpoint_url="http://127.0.0.1:9", region="eu-west-1", access_key_id="AKIAEXAMPLEKEYID",
                          secret_access_key=secret)
    for text in (repr(settings), str(settings), f"{settings}", repr([settings])):
        assert secret not in text
        assert "AKIAEXAMPLEKEYID" not in text
        assert "eu-west-1" in text
    assert settings.secret_access_key == secret  # still usable, only hidden


def test_s3_metadata_joins_the_checksum(s3: Any, bucket: str) -> None:
    uri = f"s3://{bucket}/m/1.2.3.dcm"
    writes.write_parts(uri, [b"data"], 4, hashlib.sha256(b"data").hexdigest(), metadata={"sop-instance-uid": "1.2.3"})
    meta = s3.head_object(Bucket=bucket, Key="m/1.2.3.dcm")["Metadata"]
    assert meta == {"sop-instance-uid": "1.2.3", "sha256": hashlib.sha256(b"data").hexdigest()}


def test_a_conditional_multipart_write_never_replaces(s3: Any, bucket: str) -> None:
    from dicom_reassembly.errors import AlreadyExistsError

    opts = WriteOptions(multipart_threshold=5 * 1024 * 1024)
    first = [b"H" * 100, memoryview(bytes(range(256)) * (40 * 1024)), b"T" * 7]  # 10 MiB: two parts
    whole = b"".join(bytes(p) for p in first)
    uri = f"s3://{bucket}/mp/big.dcm"
    writes.write_parts(uri, first, len(whole), hashlib.sha256(whole).hexdigest(), opts, if_absent=True,
                        metadata={"sop-instance-uid": "1.2"})
    head = s3.head_object(Bucket=bucket, Key="mp/big.dcm")
    assert head["ETag"].strip('"').endswith("-2") and head["Metadata"]["sop-instance-uid"] == "1.2"
    assert reads.read_bytes(uri) == whole
    other = b"O" * (6 * 1024 * 1024)
    with pytest.raises(AlreadyExistsError):
        writes.write_parts(uri, [other], len(other), hashlib.sha256(other).hexdigest(), opts, if_absent=True)
    assert reads.read_bytes(uri) == whole
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # the refused upload was aborted


def test_conditional_write_refuses_to_replace_and_sends_our_checksum(s3: Any, bucket: str) -> None:
    import base64
    import hashlib

    from dicom_reassembly.errors import AlreadyExistsError

    sent: list[dict] = []
    client = clients.s3_client()

    def capture(params: dict, **_: Any) -> None:
        sent.append(dict(params))

    client.meta.events.register("provide-client-params.s3.PutObject", capture)
    try:
        uri = f"s3://{bucket}/cond/a.dcm"
        data = b"DICM-ish bytes"
        digest = hashlib.sha256(data).hexdigest()
        writes.write_parts(uri, [data], len(data), digest, if_absent=True)
        with pytest.raises(AlreadyExistsError):
            writes.write_parts(uri, [b"other"], 5, hashlib.sha256(b"other").hexdigest(), if_absent=True)
        assert s3.get_object(Bucket=bucket, Key="cond/a.dcm")["Body"].read() == data
        assert sent[0]["IfNoneMatch"] == "*"
        assert sent[0]["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    finally:
        client.meta.events.unregister("provide-client-params.s3.PutObject", capture)


# ---------------------------------------------------------------- errors keep their cause; listings go on


def _tree(root: Any) -> None:
    for rel in ("a.tar", "sub/b.tar", "locked/c.tar", "elsewhere/d.tar", "readme.txt"):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"x" * 10)
    os.symlink(os.path.join(root, "gone.tar"), os.path.join(root, "broken.tar"))
    os.symlink(os.path.join(root, "loop.tar"), os.path.join(root, "loop.tar"))
    os.symlink(os.path.join(root, "elsewhere"), os.path.join(root, "sub", "linked"))
    os.chmod(os.path.join(root, "locked"), 0)


def test_local_listing_reports_what_it_cannot_use_and_goes_on(tmp_path: Any) -> None:
    _tree(tmp_path)
    with permissions_enforced():
        listed = [(os.path.relpath(o.uri, tmp_path), o.size, o.error) for o in listing.list_objects(str(tmp_path), (".tar",))]
    # Folders it cannot read or follow are listed whatever the suffix: archives may be inside.
    assert listed == [("a.tar", 10, None), ("broken.tar", 0, "broken_link"), ("elsewhere/d.tar", 10, None),
                      ("locked", 0, "access_denied"), ("loop.tar", 0, "broken_link"), ("sub/b.tar", 10, None),
                      ("sub/linked", 0, "not_an_archive")]
    with permissions_enforced():
        details = {os.path.basename(o.uri): o.error_detail for o in listing.list_objects(str(tmp_path)) if o.error}
    assert "gone.tar" in details["broken.tar"] and "permission denied" in details["locked"]
    assert "not followed" in details["linked"]
    # A prefix that cannot be listed at all is one clear error, not an empty delivery.
    with permissions_enforced(), pytest.raises(StorageError) as exc:
        list(listing.list_objects(os.path.join(tmp_path, "locked")))
    assert exc.value.reason == "access_denied"


def test_local_reads_keep_their_cause(tmp_path: Any) -> None:
    _tree(tmp_path)
    denied = os.path.join(tmp_path, "denied.bin")
    writes.write_bytes(denied, b"secret")
    os.chmod(denied, 0)
    cases = {denied: (StorageError, "access_denied"), os.path.join(tmp_path, "broken.tar"): (NotFoundError, "broken_link"),
             os.path.join(tmp_path, "loop.tar"): (NotFoundError, "broken_link"),
             os.path.join(tmp_path, "missing.tar"): (NotFoundError, "not_found"),
             os.path.join(tmp_path, "locked", "c.tar"): (StorageError, "access_denied")}
    with permissions_enforced():
        for path, (kind, reason) in cases.items():
            for read in (reads.read_bytes, lambda p: reads.read_range(p, 0, 4), reads.open_read):
                with pytest.raises(kind) as exc:
                    read(path)
                assert (exc.value.reason, exc.value.uri) == (reason, path)
            if reason == "not_found":
                assert listing.head(path) is None
            elif path == denied:  # its size is no secret: only reading it is refused
                assert listing.head(path) is not None
            else:
                with pytest.raises(kind) as exc:
                    listing.head(path)
                assert exc.value.reason == reason


def test_input_credentials_reach_the_input_bucket_only(s3: Any, bucket: str) -> None:
    """ArchiveAccess's settings (pointing nowhere here) serve the partner's bucket only: any other bucket, ours,
    goes through the default chain even when the access is passed along."""
    s3.put_object(Bucket=bucket, Key="t/ours.bin", Body=b"ours")
    settings = S3Settings(endpoint_url="http://127.0.0.1:9", region="us-east-1", access_key_id="input",
                          secret_access_key="input-secret", max_attempts=1)
    access = clients.ArchiveAccess(settings, "partner-input")
    assert reads.read_bytes(f"s3://{bucket}/t/ours.bin", access) == b"ours"
    assert [o.uri for o in listing.list_objects(f"s3://{bucket}/t", access=access)] == [f"s3://{bucket}/t/ours.bin"]
    assert listing.head(f"s3://{bucket}/t/ours.bin", access).size == 4
    with pytest.raises(StorageError) as exc:
        reads.read_bytes("s3://partner-input/t/any.tar", access)
    assert exc.value.reason == "s3_unreachable"
    assert clients.archive_access(settings, None) is None  # without a bucket, input settings apply nowhere
    assert "input-secret" not in repr(access)


def test_s3_reads_keep_their_cause(s3: Any, bucket: str) -> None:
    for key in ("t/open.tar", "t/secret.tar"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x" * 100)
    with s3_access_denied(bucket, ["t/secret.tar"]) as access:
        assert [o.uri.rsplit("/", 1)[-1] for o in listing.list_objects(f"s3://{bucket}/t", access=access)] == [
            "open.tar", "secret.tar"]
        assert reads.read_range(f"s3://{bucket}/t/open.tar", 0, 4, access) == b"xxxx"
        for read in (lambda u: reads.read_bytes(u, access), lambda u: reads.read_range(u, 0, 4, access),
                     lambda u: listing.head(u, access)):
            with pytest.raises(StorageError) as exc:
                read(f"s3://{bucket}/t/secret.tar")
            assert exc.value.reason == "access_denied"
        with pytest.raises(NotFoundError) as exc:
            reads.read_bytes(f"s3://{bucket}/t/missing.tar", access)
        assert exc.value.reason == "not_found"
