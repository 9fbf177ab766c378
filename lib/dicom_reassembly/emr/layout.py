"""Where a run keeps its state and code under ``--work``, and the build outputs uploaded there."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, StorageError
from ..io.clients import translate_client_error
from ..io.uris import is_s3, join_uri, split_s3
from .config import EmrConfig

log = logging.getLogger(__name__)
JOB_NAMES = ("build_manifest", "reassemble")


def _under(*parts: str) -> property:
    """A path under ``work``, as a read-only property."""
    return property(lambda self: join_uri(self.work, *parts), doc=f"``{{work}}/{'/'.join(parts)}``")


@dataclass(frozen=True)
class WorkLayout:
    """Where a run keeps its state and code under ``work`` (an s3:// prefix on EMR; a local folder will do for a
    campaign run here). One layout, so a campaign and ``emr/submit.py`` can share a work prefix."""

    work: str

    manifest = _under("manifest")
    ledger = _under("ledger")
    runs = _under("runs")
    computations = _under("computations")
    restore_ledger = _under("restore_ledger")
    reports = _under("campaign", "reports")  # one JSON report per finished campaign flow run (counts only)
    code = _under("code")
    bootstrap = _under("code", "bootstrap.sh")
    criteria = _under("code", "criteria.json")
    job_config = _under("code", "job-config.json")

    @property
    def wheelhouse(self) -> str:
        return join_uri(self.code, "wheelhouse") + "/"

    @property
    def logs(self) -> str:
        return join_uri(self.work, "logs") + "/"

    def script(self, job: str) -> str:
        return join_uri(self.code, f"{job}.py")

    def code_file(self, name: str) -> str:
        return join_uri(self.code, name)


def work_layout(work: str, *, s3_only: bool = True) -> WorkLayout:
    """The layout of ``work``, trailing slashes dropped (keys get no empty segments).

    ``s3_only``: EMR needs an S3 prefix, since the cluster cannot see local paths.
    """
    if s3_only and not is_s3(work):
        raise ConfigError("bad_argument", f"--work must be an s3:// prefix, got {work!r}")
    if is_s3(work):
        split_s3(work)
    return WorkLayout(work.rstrip("/") or work)


@dataclass(frozen=True)
class Upload:
    """One local file to copy to S3 before submission."""

    source: str
    uri: str
    kind: str  # code | dependency | bootstrap | criteria | job_config
    extra_args: Mapping[str, str] = field(default_factory=dict)  # boto3 ExtraArgs, e.g. server-side encryption

    def describe(self) -> dict[str, Any]:
        """JSON-safe view for --dry-run: criteria are shown by URI only (they may hold credentials)."""
        shown: dict[str, Any] = {"kind": self.kind, "uri": self.uri}
        if self.kind != "criteria":
            shown["source"] = self.source
        if self.extra_args:
            shown["extra_args"] = dict(self.extra_args)
        return shown


def build_upload_encryption(kms_key_id: str | None) -> dict[str, str]:
    """ExtraArgs that encrypt an upload at rest: SSE-KMS with ``kms_key_id``, else SSE-S3 (AES256).

    Used for the criteria file, which may hold ``input_s3_parameters`` credentials. With a customer key, access
    to the object also needs ``kms:Decrypt`` on the key, so only the roles granted it can read the credentials.
    """
    if kms_key_id:
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id}
    return {"ServerSideEncryption": "AES256"}


@dataclass(frozen=True)
class Artifacts:
    """Local build outputs of ``make dist`` / ``make wheelhouse``; ``missing`` lists what is absent."""

    wheel: str
    py_files: str
    scripts: Mapping[str, str]
    bootstrap: str
    dependencies: tuple[str, ...]
    missing: tuple[str, ...] = field(default=())


def find_artifacts(config: EmrConfig, root: str, version: str) -> Artifacts:
    """Locate the wheel, the ``--py-files`` zip, the job scripts, the bootstrap and the wheelhouse.

    Relative paths in the config are relative to ``root`` (the repository).
    """
    def path(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(root, p)

    dist = path(config.artifacts["dist_dir"])
    missing: list[str] = []
    wanted = os.path.join(dist, f"dicom_reassembly-{version}-py3-none-any.whl")
    wheels = sorted(glob.glob(os.path.join(dist, "dicom_reassembly-*-py3-none-any.whl")))
    wheel = wanted if os.path.isfile(wanted) else (wheels[-1] if wheels else wanted)
    if not os.path.isfile(wheel):
        missing.append(wheel)
    py_files = os.path.join(dist, config.artifacts["py_files"])
    scripts = {job: os.path.join(path(config.artifacts["jobs_dir"]), f"{job}.py") for job in JOB_NAMES}
    bootstrap = path(config.artifacts["bootstrap"])
    missing += [p for p in (py_files, *scripts.values(), bootstrap) if not os.path.isfile(p)]
    wheelhouse = path(config.artifacts["wheelhouse_dir"])
    deps = tuple(sorted(p for p in glob.glob(os.path.join(wheelhouse, "*.whl"))
                        if os.path.basename(p) != os.path.basename(wheel)))
    if not deps:
        missing.append(os.path.join(wheelhouse, "*.whl"))
    return Artifacts(wheel, py_files, scripts, bootstrap, deps, tuple(missing))


def build_uploads(layout: WorkLayout, artifacts: Artifacts, *, with_cluster_bootstrap: bool,
                  criteria_path: str | None = None, job_config_path: str | None = None,
                  kms_key_id: str | None = None) -> list[Upload]:
    """The files a submission copies to ``{work}/code/``.

    The wheelhouse and bootstrap are only needed when a cluster is created here:
    an existing cluster was bootstrapped when it started. The criteria file is
    encrypted at rest (``build_upload_encryption``).
    """
    uploads = [Upload(artifacts.py_files, layout.code_file(os.path.basename(artifacts.py_files)), "code")]
    uploads += [Upload(artifacts.scripts[job], layout.script(job), "code") for job in JOB_NAMES]
    if with_cluster_bootstrap:
        uploads.append(Upload(artifacts.bootstrap, layout.bootstrap, "bootstrap"))
        uploads.append(Upload(artifacts.wheel, layout.wheelhouse + os.path.basename(artifacts.wheel), "code"))
        uploads += [Upload(p, layout.wheelhouse + os.path.basename(p), "dependency") for p in artifacts.dependencies]
    if criteria_path:
        uploads.append(Upload(criteria_path, layout.criteria, "criteria", build_upload_encryption(kms_key_id)))
    if job_config_path:
        uploads.append(Upload(job_config_path, layout.job_config, "job_config"))
    return uploads


def write_uploads(s3: Any, uploads: Iterable[Upload]) -> int:
    """Copy the files to S3; returns how many were sent.

    Dependency wheels are immutable by file name, so one of the same size is not
    re-sent. Project code is always sent, because its version may not change.
    """
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    sent = 0
    for up in uploads:
        bucket, key = split_s3(up.uri)
        try:
            if up.kind == "dependency" and _same_size(s3, bucket, key, os.path.getsize(up.source)):
                continue
            s3.upload_file(up.source, bucket, key, ExtraArgs=dict(up.extra_args) or None)
        except FileNotFoundError as exc:
            raise ConfigError("missing_artifact", "file not found (run `make dist`)", uri=up.source) from exc
        except ClientError as exc:
            log.error("upload of %s to %s failed: %s", up.kind, up.uri, exc)
            raise translate_client_error(exc, up.uri) from exc
        except S3UploadFailedError as exc:
            # boto3's transfer manager flattens the ClientError into text; the code is not recoverable.
            log.error("upload of %s to %s failed: %s", up.kind, up.uri, exc)
            raise StorageError("upload_failed", str(exc).split(":")[-1].strip(), uri=up.uri) from exc
        except BotoCoreError as exc:
            raise StorageError("s3_unreachable", type(exc).__name__, uri=up.uri) from exc
        sent += 1
    return sent


def _same_size(s3: Any, bucket: str, key: str, size: int) -> bool:
    from botocore.exceptions import ClientError

    try:
        return int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"]) == size
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
