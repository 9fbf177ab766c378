"""Job configuration: a JSON file from conf/ plus command-line overrides, frozen."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from . import storage, tar_access
from .errors import ConfigError


@dataclass(frozen=True)
class Config:
    """Settings shared by the jobs. Flags override the file; the file overrides these defaults."""

    # Output
    key_template: str = "{sop_instance_uid}.dcm"
    skip_existing: bool = True
    existing_check: str = "conditional"  # S3: "conditional" PUT (If-None-Match) or "head" before each PUT
    checksum_algorithm: str = "SHA256"
    sse: str | None = None
    sse_kms_key_id: str | None = None
    expected_bucket_owner: str | None = None
    upload_threads: int = 8
    put_rate: float = 0.0  # PUTs per second per task (0 = unlimited): stays under S3's per-prefix limit
    multipart_threshold: int = 64 * 1024 * 1024
    # Reading archives
    coalesce_gap: int = tar_access.DEFAULT_COALESCE_GAP
    stream_fraction: float = 0.5
    large_member_bytes: int = 256 * 1024 * 1024
    # Parallelism (0 = derive from the data and the cluster)
    manifest_tasks: int = 0
    reassemble_partitions: int = 0
    task_bytes: int = 1024 * 1024 * 1024  # pixel bytes per reassembly task when partitions are derived
    archive_suffixes: tuple[str, ...] = (".tar",)
    # STOW-RS
    stow_batch_count: int = 50
    stow_batch_bytes: int = 50 * 1024 * 1024
    stow_timeout: float = 60.0
    # Downstream computations per selected series
    computations: tuple[str, ...] = ()  # opt-in: they re-read every written object
    # Extra Spark settings applied when the job builds its session
    spark: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.existing_check not in ("conditional", "head"):
            raise ConfigError("bad_config", f"existing_check must be conditional or head, not {self.existing_check!r}")
        if not self.stream_fraction >= 0:
            raise ConfigError("bad_config", "stream_fraction must not be negative")

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed; None values are ignored (unset flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def write_options(self) -> storage.WriteOptions:
        """How outputs are written to S3."""
        return storage.WriteOptions(
            checksum_algorithm=self.checksum_algorithm,
            sse=self.sse,
            sse_kms_key_id=self.sse_kms_key_id,
            expected_bucket_owner=self.expected_bucket_owner,
            multipart_threshold=self.multipart_threshold,
        )


def load_config(path: str | None, **overrides: Any) -> Config:
    """Load ``path`` (JSON, local or s3://) onto the defaults, then apply flag overrides."""
    cfg = Config()
    if path:
        try:
            raw = json.loads(storage.read_bytes(path))
        except ValueError as exc:
            raise ConfigError("bad_config", f"{path} is not JSON: {exc}") from exc
        except storage.NotFoundError as exc:
            raise ConfigError("config_not_found", f"no config file {path}") from exc
        if not isinstance(raw, dict):
            raise ConfigError("bad_config", f"{path} must hold a JSON object")
        known = {f.name for f in dataclasses.fields(Config)}
        # Sections for other tools (EMR, prices) may share the file: only our keys are read.
        values = {k: v for k, v in raw.get("job", raw).items() if k in known}
        for k in ("archive_suffixes", "computations"):
            if k in values:
                values[k] = tuple(values[k])
        try:
            cfg = dataclasses.replace(cfg, **values)
        except TypeError as exc:
            raise ConfigError("bad_config", str(exc)) from exc
    return cfg.replace(**overrides)
