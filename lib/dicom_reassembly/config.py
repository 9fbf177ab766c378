"""Job configuration: a JSON file from conf/ plus command-line overrides, frozen.

Everything is checked before Spark starts, each failure one line: unknown keys (with the closest known one),
types, every number's range, the choices, and a key template that could give two instances one key.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import string
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .dicom.header_rules import MAX_HEADER_BYTES
from .errors import ConfigError, NotFoundError, StorageError
from .io import json_document, tar_access, writes

# The fields reassembly.output_key fills in, and every character a value of each can hold: UIDs are digits and dots
# (PS3.5 9.1), a study or series UID that is absent or malformed becomes unknown_study/unknown_series, a modality
# is a CS code ([A-Z0-9_], else OT) and uid_hash is four hex digits. No value holds '/' or '-', so a '/' or '-'
# between two fields marks where the first one ends: keys are then unique for unique instances
# (tests/test_config.py proves it over generated values).
KEY_FIELD_CHARACTERS = {
    "sop_instance_uid": frozenset(string.digits + "."),
    "study_instance_uid": frozenset(string.digits + "." + string.ascii_lowercase + "_"),
    "series_instance_uid": frozenset(string.digits + "." + string.ascii_lowercase + "_"),
    "modality": frozenset(string.ascii_uppercase + string.digits + "_"),
    "uid_hash": frozenset(string.hexdigits.lower()),
}
KEY_FIELDS = frozenset(KEY_FIELD_CHARACTERS)
KEY_SEPARATORS = "/-"


def check_key_template(template: str) -> None:
    """Refuse a ``key_template`` that names unknown fields, could leave ``--out`` or could give two
    instances the same key. Raises ConfigError ``bad_config``.

    Between two fields there must be a '/' or '-', with no text beside either field that could be read as part
    of it (``{study_instance_uid}.x/{sop_instance_uid}`` is refused: the '.' could end a UID). Text before the
    first field and after the last one is fixed, so ``{sop_instance_uid}.dcm`` is fine.
    """
    if not isinstance(template, str):
        raise ConfigError("bad_config", f"key_template: expected a string, got {_shown(template)}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:  # unbalanced braces
        raise ConfigError("bad_config", f"key_template: {exc}: {template!r}") from exc
    names: set[str] = set()
    fields: list[tuple[str, str]] = []  # (literal text before the field, field name)
    text = ""
    for literal, name, spec, conversion in parsed:
        text += literal
        if name is None:
            continue
        if name not in KEY_FIELDS:
            raise ConfigError("bad_config", f"key_template: unknown field {{{name}}} "
                              f"(allowed: {', '.join(sorted(KEY_FIELDS))})")
        if spec or conversion:
            raise ConfigError("bad_config", f"key_template: {{{name}}} takes no format spec or conversion")
        names.add(name)
        fields.append((text, name))
        text = ""
    if "sop_instance_uid" not in names:
        raise ConfigError("bad_config", "key_template: must contain {sop_instance_uid}, so every key is unique")
    if template.startswith(("/", "\\")) or "://" in template:
        raise ConfigError("bad_config", f"key_template: must be relative to --out, not {template!r}")
    if ".." in template.replace("\\", "/").split("/"):
        raise ConfigError("bad_config", f"key_template: must not contain '..' segments: {template!r}")
    if template.endswith(("/", "\\")):
        raise ConfigError("bad_config", f"key_template: must name an object, not end with '/': {template!r}")
    for (_, before), (between, after) in zip(fields, fields[1:]):
        _check_between(before, between, after)


def _check_between(before: str, text: str, after: str) -> None:
    """The text between fields ``before`` and ``after`` must show where each ends: a separator, and nothing
    beside either field that one of its values could hold."""
    if not text:
        raise ConfigError("bad_config", f"key_template: {{{before}}} and {{{after}}} touch: put a '/' or '-' "
                                        "between them, or two instances could share a key")
    cuts = [i for i, c in enumerate(text) if c in KEY_SEPARATORS]
    if not cuts:
        raise ConfigError("bad_config", f"key_template: {text!r} between {{{before}}} and {{{after}}} needs a '/' "
                                        "or '-', or two instances could share a key")
    for side, name in ((text[: cuts[0]], before), (text[cuts[-1] + 1:], after)):
        if any(c in KEY_FIELD_CHARACTERS[name] for c in side):
            raise ConfigError("bad_config", f"key_template: {side!r} beside {{{name}}} could be part of its value: "
                                            "put the '/' or '-' right beside the field")


@dataclass(frozen=True)
class Config:
    """Settings shared by the jobs. Flags override the file; the file overrides these defaults."""

    # Output
    key_template: str = "{sop_instance_uid}.dcm"
    # Writes never replace another instance's object (a conflict row). True: the same object already at the key is
    # skipped_existing, a different one of the same instance a conflict; False: that one is replaced.
    skip_existing: bool = True
    existing_check: str = "conditional"  # S3: a conditional PUT (If-None-Match), or a HEAD first, then one
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
    # The largest header member accepted (issue 16: bounded resources): a larger one is invalid_header too_large,
    # at indexing never read into memory.
    max_header_bytes: int = MAX_HEADER_BYTES
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
        for name, rule in _RANGES.items():
            rule.check(name, getattr(self, name))
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                shown = ", ".join("null" if a is None else a for a in allowed)
                raise ConfigError("bad_config", f"{name}: must be one of {shown}, not {_shown(value)}")
        if self.sse_kms_key_id is not None and not (self.sse or "").startswith("aws:kms"):
            raise ConfigError("bad_config", "sse_kms_key_id: needs sse aws:kms or aws:kms:dsse (it would be ignored)")
        if self.expected_bucket_owner is not None and not re.fullmatch(r"\d{12}", self.expected_bucket_owner):
            raise ConfigError("bad_config", f"expected_bucket_owner: must be a 12-digit AWS account id, not "
                                            f"{_shown(self.expected_bucket_owner)}")
        if not self.archive_suffixes or not all(isinstance(x, str) and len(x) > 1 and x.startswith(".")
                                                for x in self.archive_suffixes):
            raise ConfigError("bad_config", f"archive_suffixes: must be name endings such as .tar, not "
                                            f"{_shown(self.archive_suffixes)}")
        if self.computations:
            from .records.computations import COMPUTATIONS

            for name in self.computations:
                if name not in COMPUTATIONS:
                    raise ConfigError("bad_config", f"computations: unknown computation {name!r}"
                                                    f"{_did_you_mean(name, COMPUTATIONS)}")
        check_key_template(self.key_template)

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed; None values are ignored (unset flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def write_options(self) -> writes.WriteOptions:
        """How outputs are written to S3."""
        return writes.WriteOptions(
            checksum_algorithm=self.checksum_algorithm,
            sse=self.sse,
            sse_kms_key_id=self.sse_kms_key_id,
            expected_bucket_owner=self.expected_bucket_owner,
            multipart_threshold=self.multipart_threshold,
        )


MiB = 1024 * 1024


@dataclass(frozen=True)
class _Range:
    """Bounds of a numeric setting: ``low <= value <= high`` (``above``: strictly more than ``low``)."""

    low: float
    high: float | None = None
    above: bool = False
    why: str = ""

    def text(self) -> str:
        def num(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else str(x)

        if self.high is not None:
            return f"between {num(self.low)} and {num(self.high)}"
        return f"more than {num(self.low)}" if self.above else f"at least {num(self.low)}"

    def check(self, name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError("bad_config", f"{name}: expected a number, got {_shown(value)}")
        ok = math.isfinite(value) and (value > self.low if self.above else value >= self.low) and (
            self.high is None or value <= self.high)
        if not ok:
            why = f" ({self.why})" if self.why else ""
            raise ConfigError("bad_config", f"{name}: must be {self.text()}{why}, got {value!r}")


# Every numeric setting's range (tests/test_config.py checks that none is missing).
_RANGES: dict[str, _Range] = {
    "upload_threads": _Range(1, 256),
    "put_rate": _Range(0, why="PUTs per second per task; 0 means unlimited"),
    "multipart_threshold": _Range(5 * MiB, 5 * 1024 * MiB, why="5 MiB to 5 GiB: S3's smallest part and largest single PUT"),
    "coalesce_gap": _Range(0),
    "stream_fraction": _Range(0, 1),
    "large_member_bytes": _Range(0, above=True),
    "max_header_bytes": _Range(0, above=True),
    "manifest_tasks": _Range(0, why="0 derives it from the cluster"),
    "reassemble_partitions": _Range(0, why="0 derives it from the data"),
    "task_bytes": _Range(0, above=True),
    "stow_batch_count": _Range(0, above=True),
    "stow_batch_bytes": _Range(0, above=True),
    "stow_timeout": _Range(0, above=True, why="seconds"),
}
_CHOICES: dict[str, tuple[str | None, ...]] = {
    "existing_check": ("conditional", "head"),
    "checksum_algorithm": ("SHA256", "SHA1", "CRC32", "CRC32C", "CRC64NVME"),  # S3's ChecksumAlgorithm values
    "sse": (None, "AES256", "aws:kms", "aws:kms:dsse"),
}

# Other tools read their own sections of the same file: emr/config.py (conf/emr.json's keys), restore/batch.py (a
# "restore" section or its keys at the top level) and estimate/prices.py (conf/prices.json). Their top-level keys
# are legitimate here; tests/test_config.py keeps this list in step with those modules.
OTHER_TOP_LEVEL_KEYS = frozenset({
    # emr/config.py
    "region", "artifacts", "job_config", "step", "spark", "partitions", "cluster", "serverless", "wait", "security",
    # restore/batch.py
    "restore", "account_id", "role_arn", "report_bucket", "report_prefix", "report_scope", "partition", "priority",
    # estimate/prices.py
    "schema_version", "currency", "units", "caveat", "regions", "workload_defaults",
})
MAX_CONFIG_BYTES = 1024 * 1024


def _did_you_mean(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_config(path: str | None, **overrides: Any) -> Config:
    """Load ``path`` (JSON, local or s3://) onto the defaults, then apply flag overrides.

    Keys are read from the file's ``job`` object, else from its top level. Other tools' sections (EMR
    settings, restore settings, prices) may share the file; any other key is an error that names the closest
    known one. Each value is checked against its field's type (a JSON list is a tuple, a single string a
    1-tuple) and its range. Errors are ConfigError, one line naming the file and the key. Keys starting
    with ``_`` are comments.
    """
    cfg = Config()
    if path:
        raw = _read_document(path)
        if not isinstance(raw, dict):
            raise ConfigError("bad_config", f"{path} must hold a JSON object")
        hints = _field_types()
        if "job" in raw:
            section, where = raw["job"], "job: "
            if not isinstance(section, dict):
                raise ConfigError("bad_config", f"{path}: job: must be an object")
            top_known = OTHER_TOP_LEVEL_KEYS | {"job"}
        else:
            section, where = raw, ""
            top_known = OTHER_TOP_LEVEL_KEYS | {"job"} | set(hints)
        for key in raw:
            if key not in top_known and not str(key).startswith("_"):
                hint = (" (job settings go under \"job\")" if key in hints
                        else _did_you_mean(key, top_known | set(hints)))
                raise ConfigError("bad_config", f"{path}: unknown key {key!r}{hint}")
        for key in section:
            if key not in hints and not str(key).startswith("_") and (where or key not in OTHER_TOP_LEVEL_KEYS):
                raise ConfigError("bad_config", f"{path}: {where}unknown key {key!r}{_did_you_mean(key, hints)}")
        values = {k: _checked(path, k, v, hints[k]) for k, v in section.items() if k in hints}
        try:
            cfg = dataclasses.replace(cfg, **values)
        except ConfigError as exc:
            raise ConfigError(exc.reason, f"{path}: {exc.detail}") from exc
    return cfg.replace(**overrides)


def _read_document(path: str) -> Any:
    """The parsed file, bounded in size and nesting; ConfigError in one line otherwise."""
    try:
        return json_document.loads_document(json_document.read_document_bytes(path, MAX_CONFIG_BYTES).decode())
    except json_document.DocumentTooLarge as exc:
        raise ConfigError("config_too_large", f"{path}: {exc}") from None
    except json_document.DocumentTooDeep as exc:
        raise ConfigError("config_too_deep", f"{path}: {exc}") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise ConfigError("bad_config", f"{path} is not JSON: {exc}") from exc
    except NotFoundError as exc:
        raise ConfigError("config_not_found", f"no config file {path}") from exc
    except (StorageError, OSError) as exc:
        raise ConfigError("bad_config", f"{path}: cannot be read: {exc}") from exc


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
