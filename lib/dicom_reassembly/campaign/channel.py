"""How the input credentials reach a Spark job: never on its command line, in Spark settings, or under ``work``.

Command lines show in ``ps``, the Spark UI and EMR step arguments; Spark settings in the UI and event logs;
``work`` is read by many. So:

- **local spark-submit**: the criteria document (``input_s3_parameters`` included) is written to a file of mode
  0600 in a private temporary folder (mode 0700) and the job gets its path as ``--criteria``. The folder is
  removed when the step ends; one left by a killed process is swept by the next step (its name carries the
  owner's pid).
- **EMR**: the driver runs on the cluster, where no local file reaches. The document goes into a Secrets
  Manager secret and the job gets the secret's ARN as ``--criteria`` (``criteria.load_criteria`` reads it with
  the cluster's role). The secret is deleted after the step.

In both cases the job's driver hands the settings to its executors in the task closure, as reassemble does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from ..errors import StorageError

log = logging.getLogger(__name__)

TEMP_PREFIX = "dicom-reassembly-criteria-"
SECRET_PREFIX = "dicom-reassembly/campaign/"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_stale_criteria(tmp: str | None = None) -> int:
    """Remove criteria folders whose owning process is gone (a killed flow); returns how many."""
    root = tmp or tempfile.gettempdir()
    removed = 0
    for name in os.listdir(root):
        if not name.startswith(TEMP_PREFIX):
            continue
        pid_text = name[len(TEMP_PREFIX):].split("-", 1)[0]
        path = os.path.join(root, name)
        if pid_text.isdigit() and not _alive(int(pid_text)) and os.stat(path).st_uid == os.getuid():
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


@contextlib.contextmanager
def criteria_file(document: dict[str, Any], tmp: str | None = None) -> Iterator[str]:
    """A private file holding ``document`` for the length of the ``with`` block; yields its path."""
    sweep_stale_criteria(tmp)
    folder = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=tmp)  # mkdtemp makes it 0700
    path = os.path.join(folder, "criteria.json")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(document, fh)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def secret_name(work: str) -> str:
    """The secret of one campaign, named after its work prefix (so a rerun overwrites it)."""
    return SECRET_PREFIX + hashlib.sha256(work.encode("utf-8")).hexdigest()[:24]


def _call(what: str, fn: Any, **kwargs: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "")) or "ClientError"
        raise StorageError("secret_" + what, code, uri=kwargs.get("SecretId") or kwargs.get("Name")) from None
    except BotoCoreError as exc:
        raise StorageError("secret_unreachable", type(exc).__name__) from None


def put_criteria_secret(client: Any, name: str, document: dict[str, Any], kms_key_id: str | None = None) -> str:
    """Create or update the secret ``name`` with ``document``; returns its ARN."""
    from botocore.exceptions import ClientError

    text = json.dumps(document)
    try:
        kwargs: dict[str, Any] = {"Name": name, "SecretString": text,
                                  "Description": "dicom-reassembly campaign: input_s3_parameters for the jobs"}
        if kms_key_id:
            kwargs["KmsKeyId"] = kms_key_id
        arn = client.create_secret(**kwargs)["ARN"]
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) != "ResourceExistsException":
            raise StorageError("secret_write_failed", str(exc.response.get("Error", {}).get("Code")), uri=name) \
                from None
        arn = _call("write_failed", client.put_secret_value, SecretId=name, SecretString=text)["ARN"]
    log.info("criteria secret written: %s", arn)
    return str(arn)


def delete_criteria_secret(client: Any, arn: str) -> None:
    """Delete the secret at once (no recovery window: it is rewritten by the next step that needs it)."""
    _call("delete_failed", client.delete_secret, SecretId=arn, ForceDeleteWithoutRecovery=True)
