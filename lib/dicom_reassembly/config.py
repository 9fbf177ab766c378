"""Job configuration: a JSON file from conf/ plus command-line overrides, frozen."""

from __future__ import annotations

import dataclasses
import functools
import json
import string
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from . import storage, tar_access
from .errors import ConfigError, NotFoundError, StorageError
from .header_rules import MAX_HEADER_BYTES

# The fields reassembly.output_key fills in; {sop_instance_uid} keeps keys unique.
KEY_FIELDS = frozenset({"sop_instance_uid", "study_instance_uid", "series_instance_uid", "modality", "uid_hash"})


def check_key_template(template: str) -> None:
    """Refuse a ``key_template`` that names unknown fields, could leave ``--out`` or could give two
    instances the same key. Raises ConfigError ``bad_config``."""
    if not isinstance(template, str):
        raise ConfigError("bad_config", f"key_template: expected a string, got {_shown(template)}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:  # unbalanced braces
        raise ConfigError("bad_config", f"key_template: {exc}: {template!r}") from exc
    names: set[str] = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in KEY_FIELDS:
            raise ConfigError("bad_config", f"key_template: unknown field {{{name}}} "
                              f"(allowed: {', '.join(sorted(KEY_FIELDS))})")
        if spec or conversion:
            raise ConfigError("bad_config", f"key_template: {{{name}}} takes no format spec or conversion")
        names.add(name)
    if "sop_instance_uid" not in names:
        raise ConfigError("bad_config", "key_template: must contain {sop_instance_uid}, so every key is unique")
    if template.startswith(("/", "\\")) or "://" in template:
        raise ConfigError("bad_config", f"key_template: must be relative to --out, not {template!r}")
    if ".." in template.replace("\\", "/").split("/"):
        raise ConfigError("bad_config", f"key_template: must not contain '..' segments: {template!r}")
    if template.endswith(("/", "\\")):
        raise ConfigError("bad_config", f"key_template: must name an object, not end with '/': {template!r}")


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
    max_header_bytes: int = MAX_HEADER_BYTES  # a larger header member is invalid_header too_large, never read
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
        check_key_template(self.key_template)

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
    """Load ``path`` (JSON, local or s3://) onto the defaults, then apply flag overrides.

    Keys are read from the file's ``job`` object, else from its top level; other keys and sections (EMR
    settings, prices) may share the file and are ignored. Each value is checked against its field's type;
    a JSON list is a tuple and a single string a 1-tuple. Errors are ConfigError, one line naming the key.
    """
    cfg = Config()
    if path:
        try:
            raw = json.loads(storage.read_bytes(path))
        except ValueError as exc:  # UnicodeDecodeError included
            raise ConfigError("bad_config", f"{path} is not JSON: {exc}") from exc
        except NotFoundError as exc:
            raise ConfigError("config_not_found", f"no config file {path}") from exc
        except (StorageError, OSError) as exc:
            raise ConfigError("bad_config", f"{path}: cannot be read: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError("bad_config", f"{path} must hold a JSON object")
        section = raw.get("job", raw)
        if not isinstance(section, dict):
            raise ConfigError("bad_config", f"{path}: job: must be an object")
        hints = _field_types()
        values = {k: _checked(path, k, v, hints[k]) for k, v in section.items() if k in hints}
        try:
            cfg = dataclasses.replace(cfg, **values)
        except ConfigError as exc:
            raise ConfigError(exc.reason, f"{path}: {exc.detail}") from exc
    return cfg.replace(**overrides)


@functools.cache
def _field_types() -> dict[str, Any]:
    """Each Config field's evaluated annotation (this module postpones them)."""
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _checked(path: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` asks for, or ConfigError ``bad_config``."""

    def bad(expected: str) -> ConfigError:
        return ConfigError("bad_config", f"{path}: {key}: expected {expected}, got {_shown(value)}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _checked(path, key, value, inner)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):  # bool is an int to Python, not to us
            raise bad("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if origin is tuple:  # tuple[str, ...]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise bad("a list of strings")
        return tuple(items)
    if origin is dict:  # dict[str, str]: Spark settings
        if not isinstance(value, dict):
            raise bad("an object of Spark settings")
        out = {}
        for k, v in value.items():
            if k.startswith("_"):
                continue  # comments
            if isinstance(v, bool):
                out[k] = "true" if v else "false"  # as Spark spells them
            elif isinstance(v, (str, int, float)):
                out[k] = str(v)
            else:
                raise ConfigError("bad_config", f"{path}: {key}: {k}: expected a string, number or boolean, "
                                  f"got {_shown(v)}")
        return out
    raise ConfigError("bad_config", f"{path}: {key}: no check for {hint!r}")  # a new field type: add its check
