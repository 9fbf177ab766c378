"""Job configuration: every value is checked against its field's type, and the key template is checked."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import pytest

from dicom_reassembly.config import Config, check_key_template, load_config
from dicom_reassembly.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(tmp_path: Any, doc: Any, name: str = "job.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def _refused(path: str, **overrides: Any) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path, **overrides)
    text = str(err.value)
    assert err.value.reason == "bad_config" and "\n" not in text
    return text


def test_the_shipped_configs_load() -> None:
    local = load_config(os.path.join(ROOT, "conf", "local.json"))
    assert local.upload_threads == 4 and local.computations == ("series_summary",)
    assert local.spark["spark.sql.shuffle.partitions"] == "8"
    # conf/emr.json holds EMR sections only; its top-level Spark settings are typed JSON, read as Spark strings.
    emr = load_config(os.path.join(ROOT, "conf", "emr.json"))
    assert emr.spark["spark.dynamicAllocation.enabled"] == "true"
    assert emr.spark["spark.executor.cores"] == "4" and "_comment" not in emr.spark
    assert (emr.upload_threads, emr.key_template) == (Config().upload_threads, Config().key_template)


def test_good_values_are_taken_and_converted(tmp_path: Any) -> None:
    cfg = load_config(_write(tmp_path, {"job": {
        "key_template": "{modality}/{uid_hash}/{study_instance_uid}/{series_instance_uid}/{sop_instance_uid}.dcm",
        "skip_existing": False, "sse": None, "sse_kms_key_id": "alias/k", "upload_threads": 3, "put_rate": 2,
        "stream_fraction": 1, "archive_suffixes": ".tar", "computations": ["series_summary"],
        "spark": {"spark.a": "x", "spark.b": 4, "spark.c": False, "spark.d": 0.5, "_comment": "why"},
    }}))
    assert cfg.key_template.startswith("{modality}/") and cfg.skip_existing is False
    assert (cfg.sse, cfg.sse_kms_key_id, cfg.upload_threads) == (None, "alias/k", 3)
    assert isinstance(cfg.put_rate, float) and cfg.put_rate == 2.0 and cfg.stream_fraction == 1.0
    assert cfg.archive_suffixes == (".tar",) and cfg.computations == ("series_summary",)
    assert cfg.spark == {"spark.a": "x", "spark.b": "4", "spark.c": "false", "spark.d": "0.5"}
    assert load_config(_write(tmp_path, {"job": {"computations": "series_summary"}})).computations == ("series_summary",)


def test_unknown_sections_and_top_level_keys_are_tolerated(tmp_path: Any) -> None:
    doc = {"region": "eu-west-1", "cluster": {"name": "x"}, "serverless": None, "upload_threads": 2}
    assert load_config(_write(tmp_path, doc)).upload_threads == 2
    doc = {"job": {"upload_threads": 5}, "emr": {"upload_threads": "not ours"}, "prices": [1, 2]}
    assert load_config(_write(tmp_path, doc)).upload_threads == 5


def test_flags_override_the_file(tmp_path: Any) -> None:
    path = _write(tmp_path, {"job": {"upload_threads": 3, "key_template": "{uid_hash}/{sop_instance_uid}.dcm"}})
    cfg = load_config(path, upload_threads=7, key_template=None, reassemble_partitions=12)
    assert (cfg.upload_threads, cfg.reassemble_partitions) == (7, 12)
    assert cfg.key_template == "{uid_hash}/{sop_instance_uid}.dcm"  # an unset flag (None) keeps the file's value
    cfg = load_config(path, key_template="{modality}/{sop_instance_uid}.dcm")
    assert cfg.key_template == "{modality}/{sop_instance_uid}.dcm"


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("upload_threads", "8", "expected an integer, got str '8'"),
    ("upload_threads", True, "expected an integer, got bool True"),
    ("upload_threads", 2.5, "expected an integer, got float 2.5"),
    ("put_rate", "fast", "expected a number, got str 'fast'"),
    ("put_rate", False, "expected a number, got bool False"),
    ("skip_existing", "yes", "expected true or false, got str 'yes'"),
    ("skip_existing", 1, "expected true or false, got int 1"),
    ("checksum_algorithm", None, "expected a string, got NoneType None"),
    ("sse", 256, "expected a string, got int 256"),
    ("archive_suffixes", [".tar", 7], "expected a list of strings"),
    ("computations", {"series_summary": True}, "expected a list of strings"),
    ("spark", ["spark.a=b"], "expected an object of Spark settings"),
    ("spark", {"spark.a": None}, "spark.a: expected a string, number or boolean, got NoneType None"),
    ("spark", {"spark.a": {"b": 1}}, "spark.a: expected a string, number or boolean"),
])
def test_a_value_of_the_wrong_type_is_refused_in_one_line(tmp_path: Any, key: str, value: Any, expected: str) -> None:
    path = _write(tmp_path, {"job": {key: value}})
    assert _refused(path).startswith(f"bad_config: {path}: {key}: {expected}")


def test_a_long_value_is_shortened_in_the_message(tmp_path: Any) -> None:
    text = _refused(_write(tmp_path, {"job": {"upload_threads": "9" * 500}}))
    assert len(text) < 200 and text.endswith("...")


def test_files_that_are_not_a_config_are_refused_in_one_line(tmp_path: Any) -> None:
    assert "must hold a JSON object" in _refused(_write(tmp_path, [1, 2]))
    assert "job: must be an object" in _refused(_write(tmp_path, {"job": ["upload_threads"]}))
    (tmp_path / "bad.json").write_text("{not json")
    assert "is not JSON" in _refused(str(tmp_path / "bad.json"))
    (tmp_path / "latin1.json").write_bytes(b'{"sse": "\xe9"}')
    assert "is not JSON" in _refused(str(tmp_path / "latin1.json"))
    assert "cannot be read" in _refused(str(tmp_path))  # a directory
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path / "missing.json"))
    assert err.value.reason == "config_not_found"


@pytest.mark.parametrize(("template", "expected"), [
    ("{sop_instance_uid}.dcm", None),
    ("{modality}/{uid_hash}/{sop_instance_uid}.dcm", None),
    ("a/b/{study_instance_uid}/{series_instance_uid}/{sop_instance_uid}", None),
    ("..{sop_instance_uid}.dcm", None),  # a name starting with dots, not a parent segment
    ("{{literal}}/{sop_instance_uid}.dcm", None),
    ("{series_instance_uid}.dcm", "must contain {sop_instance_uid}"),
    ("{patient_name}/{sop_instance_uid}.dcm", "unknown field {patient_name}"),
    ("{}/{sop_instance_uid}.dcm", "unknown field {}"),
    ("{0}/{sop_instance_uid}.dcm", "unknown field {0}"),
    ("{sop_instance_uid.__class__}.dcm", "unknown field {sop_instance_uid.__class__}"),
    ("{sop_instance_uid[0]}.dcm", "unknown field {sop_instance_uid[0]}"),
    ("{uid_hash:.1}/{sop_instance_uid}.dcm", "takes no format spec or conversion"),
    ("{sop_instance_uid!r}.dcm", "takes no format spec or conversion"),
    ("{sop_instance_uid.dcm", "expected '}' before end of string"),
    ("/{sop_instance_uid}.dcm", "must be relative to --out"),
    ("\\{sop_instance_uid}.dcm", "must be relative to --out"),
    ("s3://other/{sop_instance_uid}.dcm", "must be relative to --out"),
    ("../{sop_instance_uid}.dcm", "must not contain '..' segments"),
    ("{modality}/../../{sop_instance_uid}.dcm", "must not contain '..' segments"),
    ("{modality}\\..\\{sop_instance_uid}.dcm", "must not contain '..' segments"),
    ("{sop_instance_uid}/", "must name an object"),
])
def test_key_templates(tmp_path: Any, template: str, expected: str | None) -> None:
    path = _write(tmp_path, {"job": {"key_template": template}})
    if expected is None:
        check_key_template(template)
        assert load_config(path).key_template == template
        return
    with pytest.raises(ConfigError) as err:
        check_key_template(template)
    assert err.value.reason == "bad_config" and expected in str(err.value) and "\n" not in str(err.value)
    assert f"{path}: key_template: " in _refused(path)  # from the file: named with the file
    with pytest.raises(ConfigError):  # from a flag
        load_config(None, key_template=template)
    with pytest.raises(ConfigError):  # built in code
        dataclasses.replace(Config(), key_template=template)


def test_post_init_checks_are_kept() -> None:
    with pytest.raises(ConfigError):
        Config(existing_check="sometimes")
    with pytest.raises(ConfigError):
        Config().replace(stream_fraction=-1.0)
    assert Config().replace(existing_check="head").existing_check == "head"
