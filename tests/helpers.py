"""Helpers the tests import (``from helpers import ...``): paths, tools, checks and small builders.

Fixtures stay in conftest.py; pytest finds them there without an import.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every JVM the tests start (the shared session, spark-submit) reads conf/ as its Spark configuration directory,
# as `make demo` and a hand run do through the venv's spark-submit (conf/venv-spark-submit): spark-defaults.conf
# (local[2], the C1-only JIT) and log4j2.properties (warnings only).
SPARK_CONF_DIR = os.path.join(ROOT, "conf")


def read_spark_defaults(path: str = os.path.join(SPARK_CONF_DIR, "spark-defaults.conf")) -> dict[str, str]:
    """A spark-defaults.conf as spark-submit reads it: ``key value`` lines, ``#`` comments."""
    settings = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition(" ")
                settings[key] = value.strip()
    return settings


# The driver options for commands that name them (spark-submit in test_e2e): spark-defaults.conf's, not a copy.
JAVA_OPTIONS = read_spark_defaults()["spark.driver.extraJavaOptions"]


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_tool(name: str) -> str:
    """Path of an external tool; missing fails under CI and skips elsewhere."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed; `make test` must install it (CI)")
    pytest.skip(f"{name} not installed (outside CI)")
    raise AssertionError  # unreachable



def debian_package_files(package: str) -> set[str]:
    """The files a Debian package installed (``dpkg -L``); missing fails under CI and skips elsewhere."""
    import subprocess

    out = subprocess.run([require_tool("dpkg"), "-L", package], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"{package} is not installed; `make test` must install it (CI)")
        pytest.skip(f"{package} not installed (outside CI)")
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}

def build_manifest(spark, text: str, images: str, manifest_uri: str) -> None:  # noqa: ANN001
    """Index the new or changed archives under two prefixes, as jobs/build_manifest.py does."""
    from dicom_reassembly.manifest import layout, listing
    from dicom_reassembly.manifest import spark as manifest_spark
    from dicom_reassembly.manifest.spark import build_manifest_df, indexed_archives
    from dicom_reassembly.run_id import new_run_id

    manifest_spark.prepare_manifest(spark, manifest_uri)
    todo = listing.archives_to_index(listing.list_archives(text, images), indexed_archives(spark, manifest_uri))
    if todo:
        at = datetime.now(timezone.utc)
        run = new_run_id(at)
        df = build_manifest_df(spark, todo, run, at, 4, 64 * 1024)
        manifest_spark.write_manifest(spark, df, manifest_uri, run, *layout.estimated_bytes(todo))


def work_item(root: str, inst: dict, uid: str) -> dict:
    """A reassembly work item for one sample instance, as the plan hands it to an executor."""
    import os
    import tarfile

    h_archive, h_member = inst["header"]
    p_archive, p_member = inst["pixels"]
    with tarfile.open(os.path.join(root, h_archive)) as tf:
        header_json = tf.extractfile(h_member).read().decode()
    with tarfile.open(os.path.join(root, p_archive)) as tf:
        m = tf.getmember(p_member)
    return {"sop_instance_uid": uid, "header_archive": h_archive, "header_member": h_member, "header_json": header_json,
            "pixel_archive": os.path.join(root, p_archive), "pixel_archive_size": os.path.getsize(os.path.join(root, p_archive)),
            "pixel_member": p_member, "pixel_offset": m.offset_data, "pixel_size": m.size, "dup_pixels": None,
            "study_instance_uid": "1.2", "series_instance_uid": "1.2.1", "modality": "CT"}


def read_tar_member(path: str, member: str) -> bytes:
    """A member's bytes through Python's tarfile: an independent reader for checks."""
    import tarfile

    with tarfile.open(path) as tf:
        f = tf.extractfile(member)
        if f is None:
            raise KeyError(member)
        return f.read()


def dciodvfy_errors(path: str) -> set[str]:
    """dciodvfy's Error lines for a file, without the file-specific prefix."""
    import subprocess

    tool = require_tool("dciodvfy")
    out = subprocess.run([tool, path], capture_output=True, text=True, timeout=60)
    return {line.strip() for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")}


def dcmftest_ok(path: str) -> bool:
    """dcmtk's verdict that a file is DICOM Part 10."""
    import subprocess

    tool = require_tool("dcmftest")
    out = subprocess.run([tool, path], capture_output=True, text=True, timeout=60)
    return out.returncode == 0 and out.stdout.startswith("yes:")


# Root reads any file whatever its mode, through CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, and CI runs as root.
# Tests of "permission denied" take those two capabilities away, so the refusal is the kernel's, root or not.
_DAC_CAPABILITIES = (1, 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
_CAP_VERSION_3 = 0x20080522
_PR_CAPBSET_DROP = 24


def _libc():  # noqa: ANN202 - a ctypes library handle
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def permissions_enforced() -> Iterator[None]:
    """File modes bind in this thread, root included, until the block ends.

    Drops the DAC capabilities from this thread's effective set and restores them
    after (they stay permitted). Capabilities are per thread on Linux: the moto
    server and Spark keep theirs.
    """
    if os.geteuid() != 0:
        yield
        return
    import ctypes

    libc = _libc()
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable; low then high 32 bits
    if libc.capget(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    saved = data[0]
    data[0] = saved & ~sum(1 << c for c in _DAC_CAPABILITIES)
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    try:
        yield
    finally:
        data[0] = saved
        libc.capset(header, data)


def permissions_enforced_in_child() -> Callable[[], None] | None:
    """A ``preexec_fn`` after which a subprocess obeys file modes, root included (None when not root).

    The DAC capabilities leave the child's bounding set before exec, so root's
    program starts without them.
    """
    if os.geteuid() != 0:
        return None
    libc = _libc()  # loaded before the fork: the child only makes the calls

    def drop() -> None:
        for cap in _DAC_CAPABILITIES:
            if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError("prctl(PR_CAPBSET_DROP) failed: the test needs CAP_SETPCAP when run as root")

    return drop


@contextlib.contextmanager
def s3_access_denied(bucket: str, denied_keys: list[str]) -> Iterator[Any]:
    """An ``ArchiveAccess`` to ``bucket`` as an IAM user who may list and read it except ``denied_keys`` (GetObject
    is denied on them); until the block ends the moto server enforces IAM: S3's real AccessDenied."""
    import json
    import uuid

    import boto3
    from moto.core.authorization import enable_iam_authentication

    from dicom_reassembly.io import clients

    iam = boto3.client("iam", region_name="us-east-1")
    user = f"reader-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="read-but-not-those", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject"],
             "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]},
            {"Effect": "Deny", "Action": "s3:GetObject", "Resource": [f"arn:aws:s3:::{bucket}/{k}" for k in denied_keys]},
        ]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    settings = clients.S3Settings(access_key_id=key["AccessKeyId"], secret_access_key=key["SecretAccessKey"],
                                  region="us-east-1", max_attempts=1)
    with enable_iam_authentication():
        yield clients.ArchiveAccess(settings, bucket)


def write_catalog_like_reassemble(manifest_uri: str, ledger_uri: str, catalog_uri: str) -> int:
    """Catalogue rows for a ledger's written instances from their headers in the manifest, as reassemble writes
    them (issue 20), with ``records.catalog``'s own row builder and writer; the number of rows."""
    import json

    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from dicom_reassembly.io import arrow_io
    from dicom_reassembly.records import catalog

    headers = arrow_io.read_manifest_table(manifest_uri, ["archive_uri", "member_name", "header_json"],
                                           pads.field("kind") == "header").to_pylist()
    by_member = {(h["archive_uri"], h["member_name"]): h["header_json"] for h in headers}
    (run,) = [d for d in os.listdir(ledger_uri) if d.startswith("run_id=")]
    rows = []
    for r in pq.read_table(os.path.join(ledger_uri, run)).to_pylist():
        if r["status"] == "written":
            header = json.loads(by_member[(r["header_archive"], r["header_member"])])
            rows.append(catalog.build_catalog_row(
                catalog.attributes_from_json(header), transfer_syntax=r["transfer_syntax"],
                output_uri=r["output_uri"], output_bytes=r["output_bytes"], output_checksum=r["output_checksum"],
                run_id=run[len("run_id="):], status="written", header_archive=r["header_archive"],
                pixel_archive=r["pixel_archive"]))
    return catalog.write_catalog_rows(catalog_uri, rows)
