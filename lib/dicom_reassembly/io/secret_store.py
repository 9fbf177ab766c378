"""Secrets Manager as a criteria source: the input credentials reach an EMR job without a file or an argument.

On EMR the driver runs on the cluster, so a local file cannot carry the input credentials to it, and step
arguments and Spark settings are visible in the console and the YARN logs. The campaign flow therefore keeps
the criteria document (``input_s3_parameters`` included) in a Secrets Manager secret and hands the job only the
secret's ARN: ``--criteria arn:aws:secretsmanager:...``. The job's role needs ``secretsmanager:GetSecretValue``
on that secret, and nobody else should have it.
"""

from __future__ import annotations

import logging
import re

from ..errors import StorageError

log = logging.getLogger(__name__)

_ARN = re.compile(r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+")


def is_secret_arn(source: str) -> bool:
    """True for a Secrets Manager secret ARN (the only secret reference a job accepts)."""
    return bool(_ARN.fullmatch(source.strip()))


def secret_region(arn: str) -> str:
    """The region an ARN names (the client must call that region)."""
    return arn.split(":")[3]


def read_secret_bytes(arn: str) -> bytes:
    """The secret's value (``SecretString``, UTF-8) with the default AWS credentials; errors name the ARN only."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client("secretsmanager", region_name=secret_region(arn))
    try:
        value = client.get_secret_value(SecretId=arn)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "")) or "ClientError"
        raise StorageError("secret_unreadable", code, uri=arn) from None
    except BotoCoreError as exc:
        raise StorageError("secret_unreachable", type(exc).__name__, uri=arn) from None
    text = value.get("SecretString")
    if text is None:
        raise StorageError("secret_unreadable", "the secret holds no SecretString", uri=arn)
    return text.encode("utf-8")
