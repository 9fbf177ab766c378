"""Job configuration: every value is checked against its field's type, and the key template is checked."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicom_reassembly.config import KEY_FIELD_CHARACTERS, Config, check_key_template, load_config
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
        "skip_existing": False, "sse": "aws:kms", "sse_kms_key_id": "alias/k", "upload_threads": 3, "put_rate": 2,
        "stream_fraction": 1, "archive_suffixes": ".tar", "computations": ["series_summary"],
        "spark": {"spark.a": "x", "spark.b": 4, "spark.c": False, "spark.d": 0.5, "_comment": "why"},
    }}))
    assert cfg.key_template.startswith("{modality}/") and cfg.skip_existing is False
    assert (cfg.sse, cfg.sse_kms_key_id, cfg.upload_threads) == ("aws:kms", "alias/k", 3)
    assert isinstance(cfg.put_rate, float) and cfg.put_rate == 2.0 and cfg.stream_fraction == 1.0
    assert cfg.archive_suffixes == (".tar",) and cfg.computations == ("series_summary",)
    assert cfg.spark == {"spark.a": "x", "spark.b": "4", "spark.c": "false", "spark.d": "0.5"}
    assert load_config(_write(tmp_path, {"job": {"computations": "series_summary"}})).computations == ("series_summary",)


def test_other_tools_sections_may_share_the_file(tmp_path: Any) -> None:
    doc = {"region": "eu-west-1", "cluster": {"name": "x"}, "serverless": None, "upload_threads": 2, "_comment": "hi"}
    assert load_config(_write(tmp_path, doc)).upload_threads == 2
    doc = {"job": {"upload_threads": 5, "_why": "a comment"}, "restore": {"account_id": "1"}, "spark": {"a": 1},
           "regions": {}, "currency": "USD"}
    assert load_config(_write(tmp_path, doc)).upload_threads == 5


def test_the_other_tools_top_level_keys_are_the_ones_they_read() -> None:
    from dicom_reassembly.config import OTHER_TOP_LEVEL_KEYS
    from dicom_reassembly.emr.config import _TOP_KEYS
    from dicom_reassembly.restore.batch import RestoreConfig

    with open(os.path.join(ROOT, "conf", "prices.json")) as f:
        prices = set(json.load(f))
    others = (_TOP_KEYS - {"_comment"}) | {"restore", *RestoreConfig.__dataclass_fields__} | prices
    assert others == OTHER_TOP_LEVEL_KEYS


@pytest.mark.parametrize(("doc", "expected"), [
    ({"job": {"uplod_threads": 4}}, "job: unknown key 'uplod_threads' (did you mean 'upload_threads'?)"),
    ({"uplod_threads": 4}, "unknown key 'uplod_threads' (did you mean 'upload_threads'?)"),
    ({"jbo": {"upload_threads": 4}}, "unknown key 'jbo' (did you mean 'job'?)"),
    ({"job": {}, "upload_threads": 4}, "unknown key 'upload_threads' (job settings go under \"job\")"),
    ({"job": {"region": "eu-west-1"}}, "job: unknown key 'region'"),
    ({"job": {"zzzz": 1}}, "job: unknown key 'zzzz'"),
])
def test_a_misspelt_key_is_refused_with_the_closest_known_one(tmp_path: Any, doc: dict, expected: str) -> None:
    path = _write(tmp_path, doc)
    assert _refused(path) == f"bad_config: {path}: {expected}"


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
    # Fields must visibly end: a '/' or '-' between two of them, and nothing beside one that its values could hold.
    ("{study_instance_uid}-{sop_instance_uid}.dcm", None),
    ("{modality}-{uid_hash}/{study_instance_uid}/{series_instance_uid}/x-{sop_instance_uid}.dcm", None),
    ("{modality}x/{sop_instance_uid}.dcm", None),  # no modality holds a lower-case x
    ("{uid_hash}-a/{sop_instance_uid}.dcm", None),
    ("{study_instance_uid}{sop_instance_uid}.dcm", "{study_instance_uid} and {sop_instance_uid} touch"),
    ("{sop_instance_uid}{uid_hash}.dcm", "{sop_instance_uid} and {uid_hash} touch"),
    ("{study_instance_uid}.{sop_instance_uid}.dcm", "needs a '/' or '-'"),
    ("{modality}_{sop_instance_uid}.dcm", "needs a '/' or '-'"),
    ("{study_instance_uid}.x/{sop_instance_uid}.dcm", "'.x' beside {study_instance_uid} could be part of its value"),
    ("{uid_hash}a-{sop_instance_uid}.dcm", "'a' beside {uid_hash} could be part of its value"),
    ("{modality}/1{sop_instance_uid}.dcm", "'1' beside {sop_instance_uid} could be part of its value"),
    ("{sop_instance_uid}/unknown_{series_instance_uid}.dcm", "'unknown_' beside {series_instance_uid}"),
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


def test_the_template_of_the_issue_gave_two_instances_one_key() -> None:
    """Why it is refused: the study UID's digits run into the instance UID's."""
    from dicom_reassembly.reassembly.writes import output_key

    template = "{study_instance_uid}{sop_instance_uid}.dcm"
    a = {"sop_instance_uid": "34.5", "study_instance_uid": "1.2"}
    b = {"sop_instance_uid": "4.5", "study_instance_uid": "1.23"}
    assert output_key(template, a) == output_key(template, b) == "1.234.5.dcm"
    with pytest.raises(ConfigError):
        check_key_template(template)


# Values that share digits and prefixes, so that any ambiguity in a template shows as a collision; malformed ones
# exercise output_key's fallbacks (unknown_study, unknown_series, OT).
_UIDS = ["1", "11", "1.1", "1.11", "11.1", "2"]
_FIELD_VALUES = {
    "sop_instance_uid": _UIDS,
    "study_instance_uid": [*_UIDS, None, "1.02"],
    "series_instance_uid": [*_UIDS, "", "../x"],
    "modality": ["CT", "C", "T", "CT_1", "1", None, "C-T", "../x"],
}
_LITERALS = st.text(alphabet="/-._xa1Z", max_size=3)


@st.composite
def _templates(draw: Any) -> str:
    names = draw(st.lists(st.sampled_from(sorted(KEY_FIELD_CHARACTERS)), min_size=1, max_size=4))
    if "sop_instance_uid" not in names:
        names.insert(draw(st.integers(0, len(names))), "sop_instance_uid")
    return "".join(draw(_LITERALS) + "{" + n + "}" for n in names) + draw(_LITERALS)


@settings(max_examples=300, deadline=None)
@given(template=_templates())
def test_accepted_templates_give_distinct_instances_distinct_keys(template: str) -> None:
    """Every accepted template is injective: over every combination of the values above, a key is never shared
    by two instances that differ in a field the template uses."""
    from dicom_reassembly.reassembly.writes import output_key

    try:
        check_key_template(template)
    except ConfigError:
        return
    used = sorted({n for _, n, _, _ in string.Formatter().parse(template) if n} - {"uid_hash"} | {"sop_instance_uid"})
    keys: dict[str, dict[str, str]] = {}
    for combo in itertools.product(*(_FIELD_VALUES[n] for n in used)):
        item = dict(zip(used, combo))
        values = {n: output_key("{" + n + "}", item) for n in KEY_FIELD_CHARACTERS}
        for n, v in values.items():  # the alphabets the rule relies on hold for every rendered value
            assert set(v) <= KEY_FIELD_CHARACTERS[n], (n, v)
        key = output_key(template, item)
        assert keys.setdefault(key, values) == values, f"{template}: two instances share the key {key}"


def test_the_property_finds_collisions_where_the_rule_refuses() -> None:
    """The values above are rich enough to expose ambiguous templates (so the property is not vacuous)."""
    from dicom_reassembly.reassembly.writes import output_key

    for template in ("{study_instance_uid}{sop_instance_uid}", "{study_instance_uid}.{sop_instance_uid}",
                     "{modality}_{sop_instance_uid}", "{sop_instance_uid}1{series_instance_uid}"):
        used = sorted({n for _, n, _, _ in string.Formatter().parse(template) if n})
        keys = [output_key(template, dict(zip(used, c))) for c in itertools.product(*(_FIELD_VALUES[n] for n in used))]
        assert len(set(keys)) < len(keys), template
        with pytest.raises(ConfigError):
            check_key_template(template)


def test_post_init_checks_are_kept() -> None:
    with pytest.raises(ConfigError):
        Config(existing_check="sometimes")
    with pytest.raises(ConfigError):
        Config().replace(stream_fraction=-1.0)
    assert Config().replace(existing_check="head").existing_check == "head"


def test_every_numeric_setting_has_a_range() -> None:
    from dicom_reassembly.config import _RANGES, _field_types

    numeric = {n for n, t in _field_types().items() if t in (int, float)}
    assert numeric == set(_RANGES)


@pytest.mark.parametrize(("key", "bad", "good", "expected"), [
    ("task_bytes", 0, 1, "task_bytes: must be more than 0, got 0"),
    ("upload_threads", 0, 1, "upload_threads: must be between 1 and 256, got 0"),
    ("upload_threads", 257, 256, "must be between 1 and 256"),
    ("coalesce_gap", -1, 0, "coalesce_gap: must be at least 0, got -1"),
    ("stream_fraction", 1.5, 1, "stream_fraction: must be between 0 and 1, got 1.5"),
    ("stream_fraction", -0.1, 0, "must be between 0 and 1"),
    ("put_rate", -1, 0, "put_rate: must be at least 0 (PUTs per second per task; 0 means unlimited), got -1.0"),
    ("multipart_threshold", 5 * 1024 * 1024 - 1, 5 * 1024 * 1024, "multipart_threshold: must be between 5242880 and 5368709120 (5 MiB to 5 GiB"),
    ("multipart_threshold", 5 * 1024 ** 3 + 1, 5 * 1024 ** 3, "S3's smallest part and largest single PUT), got 5368709121"),
    ("large_member_bytes", 0, 1, "large_member_bytes: must be more than 0"),
    ("max_header_bytes", 0, 1, "max_header_bytes: must be more than 0"),
    ("manifest_tasks", -1, 0, "manifest_tasks: must be at least 0 (0 derives it from the cluster)"),
    ("reassemble_partitions", -2, 0, "reassemble_partitions: must be at least 0"),
    ("stow_batch_count", 0, 1, "stow_batch_count: must be more than 0"),
    ("stow_batch_bytes", 0, 1, "stow_batch_bytes: must be more than 0"),
    ("stow_timeout", 0, 0.5, "stow_timeout: must be more than 0 (seconds)"),
])
def test_a_number_out_of_its_range_is_refused_in_one_line(tmp_path: Any, key: str, bad: Any, good: Any,
                                                          expected: str) -> None:
    path = _write(tmp_path, {"job": {key: bad}})
    text = _refused(path)
    assert text.startswith(f"bad_config: {path}: {key}: must be ") and expected in text
    assert getattr(load_config(_write(tmp_path, {"job": {key: good}}, "good.json")), key) == good


def test_not_a_finite_number_is_refused(tmp_path: Any) -> None:
    # Python's json reads NaN and Infinity, which pass a comparison with the wrong sign.
    for text in ('{"put_rate": Infinity}', '{"stream_fraction": NaN}', '{"stow_timeout": Infinity}'):
        (tmp_path / "f.json").write_text(text)
        assert "must be" in _refused(str(tmp_path / "f.json"))


def test_task_bytes_zero_no_longer_reaches_the_division() -> None:
    """The regression: task_bytes 0 passed load_config and the task planner divided by it."""
    with pytest.raises(ConfigError):
        Config(task_bytes=0)
    with pytest.raises(ConfigError):  # and from a flag
        load_config(None, reassemble_partitions=-1)


@pytest.mark.parametrize(("values", "expected"), [
    ({"existing_check": "sometimes"}, "existing_check: must be one of conditional, head, not str 'sometimes'"),
    ({"checksum_algorithm": "MD5"}, "checksum_algorithm: must be one of SHA256, SHA1, CRC32, CRC32C, CRC64NVME"),
    ({"sse": "aes256"}, "sse: must be one of null, AES256, aws:kms, aws:kms:dsse, not str 'aes256'"),
    ({"sse_kms_key_id": "alias/k"}, "sse_kms_key_id: needs sse aws:kms"),
    ({"sse": "AES256", "sse_kms_key_id": "alias/k"}, "sse_kms_key_id: needs sse aws:kms"),
    ({"expected_bucket_owner": "me"}, "expected_bucket_owner: must be a 12-digit AWS account id"),
    ({"archive_suffixes": []}, "archive_suffixes: must be name endings such as .tar"),
    ({"archive_suffixes": ["tar"]}, "archive_suffixes: must be name endings such as .tar"),
    ({"computations": ["series_sumary"]}, "computations: unknown computation 'series_sumary' "
                                          "(did you mean 'series_summary'?)"),
])
def test_a_value_outside_its_choices_is_refused(tmp_path: Any, values: dict, expected: str) -> None:
    path = _write(tmp_path, {"job": values})
    assert _refused(path).startswith(f"bad_config: {path}: {expected}")


def test_the_accepted_choices_load(tmp_path: Any) -> None:
    cfg = load_config(_write(tmp_path, {"job": {
        "existing_check": "head", "checksum_algorithm": "CRC32C", "sse": "aws:kms:dsse", "sse_kms_key_id": "k",
        "expected_bucket_owner": "123456789012", "archive_suffixes": [".tar", ".TAR"]}}))
    assert (cfg.existing_check, cfg.sse, cfg.archive_suffixes) == ("head", "aws:kms:dsse", (".tar", ".TAR"))


def test_a_deeply_nested_config_is_one_line_not_a_traceback(tmp_path: Any) -> None:
    """The regression: json.loads recursed into a document nested thousands deep and raised RecursionError."""
    path = tmp_path / "deep.json"
    path.write_text('{"job": {"spark": ' + "[" * 100_000 + "]" * 100_000 + "}}")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert err.value.reason == "config_too_deep" and "nested deeper than 32 levels" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_config_larger_than_the_cap_is_refused_before_it_is_parsed(tmp_path: Any) -> None:
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"job": {"_comment": "x" * (1024 * 1024)}}))
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert err.value.reason == "config_too_large" and "larger than 1048576 bytes" in str(err.value)


def _job_main(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"job_{name}", os.path.join(ROOT, "jobs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize(("job", "args"), [
    ("reassemble", ["--manifest", "m", "--out", "o", "--ledger", "l"]),
    ("build_manifest", ["--text", "t", "--images", "i", "--manifest", "m"]),
])
@pytest.mark.parametrize(("doc", "flags", "expected"), [
    ({"job": {"task_bytes": 0}}, [], "task_bytes: must be more than 0"),
    ({"job": {"uplod_threads": 4}}, [], "did you mean 'upload_threads'?"),
    ({"job": {"key_template": "{study_instance_uid}{sop_instance_uid}.dcm"}}, [], "touch"),
    ("deep", [], "config_too_deep"),
])
def test_the_jobs_refuse_a_bad_config_in_one_line_before_spark_starts(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, job: str, args: list,
        doc: Any, flags: list, expected: str) -> None:
    import dicom_reassembly.session as session

    def no_spark(*_a: Any, **_k: Any) -> None:
        raise AssertionError("Spark was started")

    monkeypatch.setattr(session, "get_session", no_spark)
    path = tmp_path / "job.json"
    path.write_text("[" * 5000 + "]" * 5000 if doc == "deep" else json.dumps(doc))
    assert _job_main(job)([*args, "--config", str(path), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and err[0].startswith("error: ")


def test_a_colliding_key_template_flag_is_refused_before_spark(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    import dicom_reassembly.session as session

    monkeypatch.setattr(session, "get_session", lambda *a, **k: pytest.fail("Spark was started"))
    rc = _job_main("reassemble")(["--manifest", "m", "--out", "o", "--ledger", "l",
                                  "--key-template", "{study_instance_uid}{sop_instance_uid}.dcm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "{study_instance_uid} and {sop_instance_uid} touch" in err[0]


def test_the_emr_and_restore_config_readers_have_the_same_bounds(tmp_path: Any) -> None:
    from dicom_reassembly.emr.config import read_emr_config
    from dicom_reassembly.restore.batch import read_restore_config

    deep = tmp_path / "deep.json"
    deep.write_text('{"cluster": ' + "[" * 50_000 + "]" * 50_000 + "}")
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"_comment": "x" * (1024 * 1024)}))
    for read in (read_emr_config, read_restore_config):
        for path, reason in ((deep, "config_too_deep"), (big, "config_too_large")):
            with pytest.raises(ConfigError) as err:
                read(str(path))
            assert err.value.reason == reason and "\n" not in str(err.value)
