"""``conf/emr.json`` read and validated into ``EmrConfig``: deployment choices (release label, fleets, Spark
settings) live there, none in the logic.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..reassembly.tasks import PartitionPolicy

log = logging.getLogger(__name__)
MIB = 1024 * 1024


@dataclass(frozen=True)
class EmrConfig:
    """``conf/emr.json`` after validation. Sections stay mappings where they mirror AWS shapes."""

    source: str
    region: str | None
    artifacts: Mapping[str, str]
    job_config: str | None
    action_on_failure: str
    spark: Mapping[str, str]
    partitions: PartitionPolicy
    cluster: Mapping[str, Any]
    serverless: Mapping[str, Any]
    poll_seconds: float
    timeout_hours: float
    kms_key_id: str | None = None  # security.kms_key_id: encrypts the uploaded criteria (else SSE-S3)


_TOP_KEYS = {"region", "artifacts", "job_config", "step", "spark", "partitions", "cluster", "serverless", "wait",
             "security", "_comment"}
_SECURITY_KEYS = {"kms_key_id", "_comment"}


def _section(data: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError("bad_config", f"{key!r} must be an object", uri=source)
    return value


def _spark_map(value: Any, where: str, source: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError("bad_config", f"{where} must be an object of Spark settings", uri=source)
    return {str(k): _conf_value(v) for k, v in value.items() if not str(k).startswith("_")}


def _conf_value(value: Any) -> str:
    """Spark conf values are strings; JSON booleans become ``true``/``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def emr_config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> EmrConfig:
    """Validate a parsed ``conf/emr.json``."""
    if not isinstance(data, Mapping):
        raise ConfigError("bad_config", "top level must be an object", uri=source)
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError("bad_config", f"unknown keys {unknown}", uri=source)
    step = _section(data, "step", source)
    wait = _section(data, "wait", source)
    parts = _section(data, "partitions", source)
    try:
        policy = PartitionPolicy(**{k: int(v) for k, v in parts.items() if not k.startswith("_")})
        poll = float(wait.get("poll_seconds", 30))
        timeout = float(wait.get("timeout_hours", 168))
    except (TypeError, ValueError) as exc:
        raise ConfigError("bad_config", f"partitions/wait: {exc}", uri=source) from exc
    if policy.minimum < 1 or policy.maximum < policy.minimum or policy.bytes_per_partition < 1 \
            or policy.rows_per_partition < 1:
        raise ConfigError("bad_config", "partitions: need 1 <= minimum <= maximum and positive sizes", uri=source)
    artifacts = {"dist_dir": "dist", "jobs_dir": "jobs", "bootstrap": "emr/bootstrap.sh",
                 "wheelhouse_dir": "dist/wheelhouse", "py_files": "dicom_reassembly.zip"}
    artifacts.update({k: str(v) for k, v in _section(data, "artifacts", source).items() if not k.startswith("_")})
    cluster = _section(data, "cluster", source)
    serverless = _section(data, "serverless", source)
    security = _section(data, "security", source)
    unknown = sorted(set(security) - _SECURITY_KEYS)
    if unknown:  # a misspelt key would silently weaken encryption
        raise ConfigError("bad_config", f"unknown keys in security: {unknown}", uri=source)
    kms_key_id = security.get("kms_key_id")
    if kms_key_id is not None and (not isinstance(kms_key_id, str) or not kms_key_id.strip()):
        raise ConfigError("bad_config", "security.kms_key_id must be a KMS key id, ARN or alias, or null",
                          uri=source)
    return EmrConfig(
        source=source,
        region=data.get("region") or None,
        artifacts=artifacts,
        job_config=data.get("job_config") or None,
        action_on_failure=str(step.get("action_on_failure", "CANCEL_AND_WAIT")),
        spark=_spark_map(data.get("spark", {}), "spark", source),
        partitions=policy,
        cluster=cluster,
        serverless=serverless,
        poll_seconds=poll,
        timeout_hours=timeout,
        kms_key_id=kms_key_id,
    )


def read_emr_config(path: str) -> EmrConfig:
    """Load and validate an EMR config file (JSON)."""
    from ..config import MAX_CONFIG_BYTES
    from ..io.json_document import DocumentTooDeep, loads_document

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_CONFIG_BYTES + 1)
        if len(text) > MAX_CONFIG_BYTES:
            raise ConfigError("config_too_large", f"larger than {MAX_CONFIG_BYTES} characters", uri=path)
        data = loads_document(text)
    except DocumentTooDeep as exc:
        raise ConfigError("config_too_deep", str(exc), uri=path) from None
    except FileNotFoundError as exc:
        raise ConfigError("missing_config", "no such file", uri=path) from exc
    except OSError as exc:  # a directory, no permission, an I/O error
        raise ConfigError("bad_config", f"cannot be read: {exc.strerror or type(exc).__name__}", uri=path) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError("bad_config", f"not valid JSON at line {exc.lineno}", uri=path) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("bad_config", f"not UTF-8 text (byte {exc.start})", uri=path) from exc
    return emr_config_from_dict(data, path)


def _require(section: Mapping[str, Any], key: str, where: str, source: str) -> Any:
    value = section.get(key)
    if value in (None, "", [], {}):
        raise ConfigError("missing_config_key", f"{where}.{key} is required", uri=source)
    return value
