"""Property-based tests: generated deliveries through the pipeline, and the invariants every run keeps.

Deliveries come from tests/strategies.py (tar layouts that lie, DICOM JSON in
and outside the model, real J2K codestreams and native payloads, right and
wrong). Each runs through tests/plain_pipeline.py, the Spark jobs' stages
chained in plain Python, and must keep:

- the run never raises: no exception, no outcome from a catch-all, no pydicom warning on stderr;
- conservation: every manifest member is named by a ledger row, and every member the
  tar holds is in the manifest at its offsets, or its archive's row says why not;
- every written object passes dcmftest, holds its row's UID, decodes, and its array
  fits its header's geometry (and is the source's pixels when the source is valid);
- no two written instances share a key;
- each instance gets the statuses the issue-16 rules give its members.

A few deliveries also go through the real Spark jobs, which must give the plain
driver's ledger. The last tests prove each check can fail. Profiles: ``props``
(the default: bounded and derandomized, for ``make test``) and ``fuzz``
(``make fuzz``: random, FUZZ_EXAMPLES examples per test, failures kept in .hypothesis/).
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from collections import Counter

import pytest
from helpers import build_manifest
from hypothesis import HealthCheck, example, given, settings
from plain_pipeline import (
    PlainRun,
    decoded,
    fault_problems,
    key_problems,
    run_plain,
    unaccounted_members,
    written_problems,
)
from strategies import Delivery, deliveries, expectation_problems, showcase_delivery
from tar_layout import build_archive

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
           HealthCheck.filter_too_much]
settings.register_profile("props", max_examples=150, deadline=None, derandomize=True, database=None,
                          suppress_health_check=_HEALTH, print_blob=True)
settings.register_profile("fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "1000")), deadline=None,
                          suppress_health_check=_HEALTH, print_blob=True)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "props"))


def run_and_check(delivery: Delivery, tmp: str) -> tuple[PlainRun, dict[str, list]]:
    """Write the delivery under ``tmp``, run both jobs on it in plain Python; the run and what breaks each invariant."""
    root, out = os.path.join(tmp, "delivery"), os.path.join(tmp, "out")
    layout = delivery.write(root)
    run = run_plain(root, out, delivery.key_template)
    problems = {"faults": fault_problems(run), "warnings": run.warned,
                "unaccounted": sorted(unaccounted_members(run.manifest, run.ledger)),
                "keys": key_problems(run.ledger), "objects": written_problems(run.ledger),
                **expectation_problems(delivery, layout, run.manifest, run.ledger, decoded)}
    return run, problems


def check_delivery(delivery: Delivery) -> None:
    """Every invariant, one assert each, so that hypothesis reports each broken one as a bug of its own."""
    with tempfile.TemporaryDirectory(prefix="props-") as tmp:
        _, p = run_and_check(delivery, tmp)
    assert not p["faults"], p["faults"]
    assert not p["warnings"], p["warnings"]
    assert not p["unaccounted"], f"members with no ledger row: {p['unaccounted']}"
    assert not p["lost"], p["lost"]
    assert not p["silent"], p["silent"]
    assert not p["false_alarm"], p["false_alarm"]
    assert not p["keys"], p["keys"]
    assert not p["objects"], p["objects"]
    assert not p["status"], p["status"]
    assert not p["pixels"], p["pixels"]
    assert not p["text"], p["text"]


@settings(PROFILE)
@given(deliveries(header_mods=False, pixel_variants=False))
def test_tar_layouts_lose_no_member(delivery: Delivery) -> None:
    """Valid instances in archives with links, long names, lying size fields, zero blocks, garbage and cuts."""
    check_delivery(delivery)


@settings(PROFILE)
@given(deliveries(pixel_variants=False, tar_damage=False, extras=False, shapes=("pair", "pair", "header_only")))
def test_headers_in_and_outside_the_model(delivery: Delivery) -> None:
    """Valid headers for a few SOP classes, and hostile ones, with valid pixels, in clean archives."""
    check_delivery(delivery)


@settings(PROFILE)
@given(deliveries(header_mods=False, tar_damage=False, extras=False, naming=False))
def test_pixel_payloads_and_geometries(delivery: Delivery) -> None:
    """Native and J2K payloads of the right, short and long length, under matching and mismatching headers."""
    check_delivery(delivery)


@settings(PROFILE)
@given(deliveries(max_instances=5, collisions=True))
def test_whole_deliveries(delivery: Delivery) -> None:
    """Everything at once, and a key template under which two instances could share a key."""
    check_delivery(delivery)


@settings(PROFILE)
@given(deliveries(header_mods=False, pixel_variants=False))
def test_the_generated_layouts_are_what_tarfile_reads(delivery: Delivery) -> None:
    """The oracle's ground truth: Python's tarfile finds every entry of an undamaged layout where it says."""
    for a in delivery.archives:
        data, placed = build_archive(a.entries, None, a.end_blocks)
        if not data:
            continue
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            got = [(t.name, t.offset, t.offset_data, t.size if t.isreg() else None) for t in tf.getmembers()]
        assert got == [(p.entry.name, p.header_offset, p.data_offset, len(p.entry.data) if p.entry.regular else None)
                       for p in placed]


# ---------------------------------------------------------------- the plain driver is the Spark jobs


def _outcomes(rows: list[dict]) -> Counter:
    return Counter((r["sop_instance_uid"], r["status"], r["header_archive"], r["header_member"], r["pixel_archive"],
                    r["pixel_member"]) for r in rows)


@settings(PROFILE, max_examples=2, derandomize=True, database=None)
@given(deliveries(max_instances=4))
@example(showcase_delivery())
def test_spark_jobs_give_the_plain_drivers_ledger(spark, delivery: Delivery) -> None:  # noqa: ANN001
    from pyspark.sql import functions as F

    from dicom_reassembly.config import Config
    from dicom_reassembly.reassembly.run import ReassembleRun

    with tempfile.TemporaryDirectory(prefix="props-spark-") as tmp:
        plain, _ = run_and_check(delivery, tmp)
        root, base = os.path.join(tmp, "delivery"), os.path.join(tmp, "spark")
        build_manifest(spark, os.path.join(root, "text"), os.path.join(root, "images"), os.path.join(base, "manifest"))
        summary = ReassembleRun(spark=spark, manifest_uri=os.path.join(base, "manifest"), out=os.path.join(base, "out"),
                                ledger_uri=os.path.join(base, "ledger"), runs_uri=os.path.join(base, "runs"),
                                computations_uri=os.path.join(base, "computations"), cfg=Config(upload_threads=2),
                                argv=[]).execute()
        rows = [r.asDict() for r in spark.read.parquet(os.path.join(base, "ledger"))
                .filter(F.col("run_id") == summary["run_id"]).collect()]
    assert summary["unaccounted_members"] == 0, summary["unaccounted_examples"]
    assert _outcomes(rows) == _outcomes(plain.ledger)


# ---------------------------------------------------------------- each check can fail


@pytest.fixture(scope="module")
def showcase(tmp_path_factory: pytest.TempPathFactory) -> tuple[Delivery, str, PlainRun, dict[str, list]]:
    delivery = showcase_delivery()
    tmp = str(tmp_path_factory.mktemp("showcase"))
    run, problems = run_and_check(delivery, tmp)
    return delivery, tmp, run, problems


def _written(run: PlainRun) -> list[dict]:
    rows = [r for r in run.ledger if r["status"] == "written"]
    assert len(rows) >= 2, "the showcase writes a few objects"
    return rows


def test_the_showcase_has_every_outcome(showcase: tuple) -> None:
    _, _, run, _ = showcase
    assert {r["status"] for r in run.ledger} >= {"written", "duplicate", "conflict", "orphan_header", "orphan_pixels",
                                                  "invalid_header", "invalid_pixels", "unreadable_archive"}


def test_conservation_check_finds_a_member_no_row_names(showcase: tuple) -> None:
    _, _, run, _ = showcase
    assert not unaccounted_members(run.manifest, run.ledger)
    named = next(r for r in run.ledger if r["status"] == "duplicate")
    assert unaccounted_members(run.manifest, [r for r in run.ledger if r is not named]) == {
        (named["header_archive"] or named["pixel_archive"], named["header_member"] or named["pixel_member"])}


def test_key_check_finds_two_instances_with_one_key(showcase: tuple) -> None:
    _, _, run, _ = showcase
    first, second = _written(run)[:2]
    assert not key_problems(run.ledger)
    assert key_problems([first, {**second, "output_uri": first["output_uri"]}])


def test_fault_check_finds_caught_exceptions() -> None:
    manifest = [{"error": "index_error", "error_detail": "RecursionError: deep", "member_name": "a.json",
                 "archive_uri": "t.tar"}]
    ledger = [{"status": "failed", "reason": "OverflowError: big", "sop_instance_uid": "1.2"},
              {"status": "invalid_header", "reason": "too_deep: 3000 levels", "sop_instance_uid": "1.3"}]
    assert len(fault_problems(PlainRun(manifest, [], ledger, []))) == 2


def test_object_check_refuses_what_dcmtk_or_pydicom_refuse(showcase: tuple, tmp_path) -> None:  # noqa: ANN001
    from pydicom import dcmread

    _, _, run, _ = showcase
    row = next(r for r in _written(run) if r["transfer_syntax"] != "1.2.840.10008.1.2.1")
    assert not written_problems([row])
    with open(row["output_uri"], "rb") as f:
        data = f.read()
    no_magic, cut, other_uid, wrong_rows = (str(tmp_path / n) for n in ("magic.dcm", "cut.dcm", "uid.dcm", "rows.dcm"))
    for path, size in ((no_magic, 100), (cut, len(data) // 2)):  # dcmftest reads no further than the DICM magic
        with open(path, "wb") as f:
            f.write(data[:size])
    ds = dcmread(row["output_uri"])
    ds.SOPInstanceUID = "1.2.3.4"
    ds.save_as(other_uid)
    ds = dcmread(row["output_uri"])
    ds.Rows = int(ds.Rows) * 2
    ds.save_as(wrong_rows)
    for path, says in ((no_magic, "dcmftest"), (cut, "does not decode"), (other_uid, "holds SOPInstanceUID"),
                       (wrong_rows, "")):
        found = written_problems([{**row, "output_uri": path}])
        assert found and says in found[0], (path, found)


def test_expectation_check_finds_a_lost_member_a_wrong_status_and_wrong_pixels(showcase: tuple) -> None:
    delivery, tmp, run, problems = showcase
    layout = {os.path.join(tmp, "delivery", a.role, a.name): (a, build_archive(a.entries, a.damage, a.end_blocks)[1])
              for a in delivery.archives}

    def found(manifest: list[dict], ledger: list[dict], decode=decoded) -> dict[str, list]:  # noqa: ANN001
        return expectation_problems(delivery, layout, manifest, ledger, decode)

    baseline = found(run.manifest, run.ledger)
    assert {k: v for k, v in baseline.items() if v} == {k: v for k, v in problems.items() if k in baseline and v}
    member = next(r for r in run.manifest if r["kind"] == "pixels" and r["error"] is None)
    assert len(found([r for r in run.manifest if r is not member], run.ledger)["lost"]) == len(baseline["lost"]) + 1
    written = _written(run)[0]
    relabelled = [dict(r, status="orphan_header") if r is written else r for r in run.ledger]
    assert len(found(run.manifest, relabelled)["status"]) == len(baseline["status"]) + 1

    def flipped(path: str) -> tuple:
        ds, arr = decoded(path)
        return ds, arr + 1

    assert len(found(run.manifest, run.ledger, flipped)["pixels"]) > len(baseline["pixels"])
