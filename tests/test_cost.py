"""The cost model: prices from the config file, totals from the lines, workloads from a manifest."""

from __future__ import annotations

import copy
import json
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dicom_reassembly.errors import ConfigError
from dicom_reassembly.estimate.cost import Assumptions, estimate_cost
from dicom_reassembly.estimate.prices import GB, read_bench_throughput, read_prices
from dicom_reassembly.estimate.workload import read_manifest_workload, workload_from_totals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "conf", "prices.json")


@pytest.fixture()
def prices_data() -> dict:
    with open(SHIPPED) as f:
        return json.load(f)


def write_prices(tmp_path, data: dict, name: str = "prices.json") -> str:  # noqa: ANN001
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return str(p)


def no_bench(tmp_path) -> str:  # noqa: ANN001
    return str(tmp_path / "no-report.json")


FULL = dict(archives=4_000_000, total_bytes=4 * 10**15, instances=3 * 10**9)


def line(est, prefix: str):  # noqa: ANN001, ANN201
    found = [x for x in est.lines if x.item.startswith(prefix)]
    assert len(found) == 1, prefix
    return found[0]


def test_shipped_prices_have_provenance_for_every_price(prices_data) -> None:  # noqa: ANN001
    def leaves(node, path=""):  # noqa: ANN001, ANN202
        if isinstance(node, dict) and ("value" in node or "tiers" in node):
            yield path, node
        elif isinstance(node, dict):
            for k, v in node.items():
                yield from leaves(v, f"{path}.{k}")

    found = list(leaves(prices_data["regions"]))
    assert len(found) > 30
    for path, node in found:
        assert node.get("as_of") and node.get("source"), path


def test_totals_equal_the_sum_of_lines(tmp_path) -> None:  # noqa: ANN001
    est = estimate_cost(workload_from_totals(**FULL), read_prices(SHIPPED), bench_report=no_bench(tmp_path))
    assert est.one_time_total == pytest.approx(sum(x.cost for x in est.lines), rel=1e-12)
    assert est.one_time_total > 0
    chosen = [r for r in est.storage if r["storage_class"] == "STANDARD"][0]
    assert est.monthly_total == pytest.approx(chosen["storage_per_month"] + chosen["monitoring_per_month"])
    # 3 billion PUTs at the shipped $0.005 per 1,000; Bulk restores are free
    assert line(est, "PUT").cost == pytest.approx(15_000.0)
    assert line(est, "Retrieval (Bulk)").cost == 0.0
    assert {x.as_of for x in est.lines} and all(x.source for x in est.lines)
    assert est.derived["per_core_mb_s_source"].endswith(")") and "workload_defaults" in est.derived["per_core_mb_s_source"]


def test_tiered_storage_price(prices_data) -> None:  # noqa: ANN001
    std = read_prices(SHIPPED).price("storage_gb_month", "STANDARD")
    # 600 TB: 50 TB at 0.023, 450 TB at 0.022, 100 TB at 0.021
    assert std.for_quantity(600 * 1024) == pytest.approx(51200 * 0.023 + 460800 * 0.022 + 102400 * 0.021)
    assert std.for_quantity(10) == pytest.approx(0.23)


def test_changing_a_price_in_the_config_changes_the_result(tmp_path, prices_data) -> None:  # noqa: ANN001
    w = workload_from_totals(**FULL)
    base = estimate_cost(w, read_prices(write_prices(tmp_path, prices_data)), bench_report=no_bench(tmp_path))
    dearer = copy.deepcopy(prices_data)
    dearer["regions"]["us-east-1"]["put_per_1000"]["STANDARD"]["value"] = 0.010
    dearer["regions"]["us-east-1"]["restore_request_per_1000"]["Bulk"]["value"] = 0.025
    est = estimate_cost(w, read_prices(write_prices(tmp_path, dearer, "dearer.json")), bench_report=no_bench(tmp_path))
    assert line(est, "PUT").cost == pytest.approx(2 * line(base, "PUT").cost)
    restores = est.derived["restore_requests"]
    assert restores == 4_000_000
    added = line(base, "PUT").cost + restores / 1000 * 0.025
    assert est.one_time_total == pytest.approx(base.one_time_total + added)


def test_region_missing_is_a_clear_error(tmp_path, capsys) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError) as exc:
        read_prices(SHIPPED, "ap-south-2")
    assert exc.value.reason == "price_region_missing"
    assert "ap-south-2" in exc.value.detail and "us-east-1" in exc.value.detail
    rc = run_cli(["cost", "--listing", "--archives", "10", "--bytes", "1e9", "--instances", "100",
                  "--region", "ap-south-2"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "price_region_missing" in err and "Traceback" not in err


def test_price_without_provenance_is_refused(tmp_path, prices_data) -> None:  # noqa: ANN001
    del prices_data["regions"]["us-east-1"]["get_per_1000"]["as_of"]
    book = read_prices(write_prices(tmp_path, prices_data))
    with pytest.raises(ConfigError) as exc:
        estimate_cost(workload_from_totals(**FULL), book, bench_report=no_bench(tmp_path))
    assert exc.value.reason == "price_no_provenance"


def test_region_prices_differ(tmp_path) -> None:  # noqa: ANN001
    w = workload_from_totals(**FULL)
    us = estimate_cost(w, read_prices(SHIPPED, "us-east-1"), bench_report=no_bench(tmp_path))
    eu = estimate_cost(w, read_prices(SHIPPED, "eu-west-1"), bench_report=no_bench(tmp_path))
    assert line(eu, "EMR worker").cost > line(us, "EMR worker").cost  # EC2 is dearer in Ireland
    assert line(eu, "EMR worker").quantity == pytest.approx(line(us, "EMR worker").quantity)


def test_bench_throughput_drives_emr_hours(tmp_path) -> None:  # noqa: ANN001
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"tar_x": {"per_core_mb_s": 400.0}, "stages": {"reassemble": {"per_core_mb_s": 20.0}}}))
    value, where = read_bench_throughput(str(report))
    assert value == 20.0 and "reassemble" in where
    w = workload_from_totals(**FULL)
    no_index = Assumptions(index_gets_per_pixel_member=0.0)
    slow = estimate_cost(w, read_prices(SHIPPED), no_index, bench_report=str(report))
    fast = estimate_cost(w, read_prices(SHIPPED), Assumptions(index_gets_per_pixel_member=0.0, per_core_mb_s=40.0),
                         bench_report=str(report))
    assert slow.derived["per_core_mb_s"] == 20.0 and "measured" in slow.derived["per_core_mb_s_source"]
    assert line(slow, "EMR worker").quantity == pytest.approx(2 * line(fast, "EMR worker").quantity)
    # 4e15 bytes + headers at 20 MB/s per vCPU, 16 vCPU at 70 %: hours = MB / 20 / 3600 / 11.2
    mb = slow.derived["processed_mb"]
    assert line(slow, "EMR worker").quantity == pytest.approx(mb / 20 / 3600 / (16 * 0.7))
    assert read_bench_throughput(str(tmp_path / "absent.json")) is None


def test_selection_saves_restores_only_when_archives_are_located(tmp_path) -> None:  # noqa: ANN001
    w = workload_from_totals(**FULL)
    book = read_prices(SHIPPED)
    blind = estimate_cost(w, book, Assumptions(selected_fraction=0.1), bench_report=no_bench(tmp_path))
    located = estimate_cost(w, book, Assumptions(selected_fraction=0.1, selective_restore=True),
                            bench_report=no_bench(tmp_path))
    assert blind.derived["restore_requests"] == 4_000_000
    assert located.derived["restore_requests"] == w.header_archives + 396_084  # 10 % of 3,960,832, rounded up
    assert line(blind, "PUT").cost == pytest.approx(1_500.0)
    assert any("every pixel archive is restored" in n for n in blind.notes)
    assert line(blind, "Batch Operations objects").quantity == 4_000_000
    small = estimate_cost(workload_from_totals(100, 10**9, 1000), book, bench_report=no_bench(tmp_path))
    assert not [x for x in small.lines if x.item.startswith("Batch")]


def test_minimum_billable_size_for_ia_and_glacier_ir(tmp_path) -> None:  # noqa: ANN001
    # 1 million 20 KB instances: Standard-IA and Glacier IR bill each object as 128 KB
    w = workload_from_totals(100, 1_000_000 * 40 * 1024, 1_000_000, avg_header_bytes=4096)
    est = estimate_cost(w, read_prices(SHIPPED), bench_report=no_bench(tmp_path))
    by = {r["storage_class"]: r for r in est.storage}
    assert by["STANDARD_IA"]["gb"] == pytest.approx(1_000_000 * 128 * 1024 / GB)
    assert by["STANDARD"]["gb"] < by["STANDARD_IA"]["gb"]
    assert by["INTELLIGENT_TIERING"]["monitoring_per_month"] == 0.0  # under 128 KB: not monitored


def write_manifest(path: str) -> str:
    rows = []
    new, old = "20260102T000000Z", "20250101T000000Z"
    for run in (old, new):
        rows.append(dict(archive_uri="s3://b/text/t1.tar", archive_role="text", archive_size=5000, index_run=run,
                         kind="archive", size=5000))
        rows.append(dict(archive_uri="s3://b/images/p1.tar", archive_role="images", archive_size=90000,
                         index_run=run, kind="archive", size=90000))
    for uid in ("1", "2", "3"):
        rows.append(dict(archive_uri="s3://b/text/t1.tar", archive_role="text", archive_size=5000, index_run=new,
                         kind="header", size=1000, sop_instance_uid=uid))
        rows.append(dict(archive_uri="s3://b/images/p1.tar", archive_role="images", archive_size=90000,
                         index_run=new, kind="pixels", size=20000, sop_instance_uid=uid))
    rows.append(dict(archive_uri="s3://b/text/t1.tar", archive_role="text", archive_size=5000, index_run=old,
                     kind="header", size=999_999, sop_instance_uid="9"))  # older run: ignored
    schema = pa.schema([("archive_uri", pa.string()), ("archive_role", pa.string()), ("archive_size", pa.int64()),
                        ("index_run", pa.string()), ("kind", pa.string()), ("size", pa.int64()),
                        ("sop_instance_uid", pa.string()), ("header_json", pa.string())])
    os.makedirs(path, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), os.path.join(path, "part-0.parquet"))
    return path


def test_manifest_workload_uses_the_newest_index(tmp_path) -> None:  # noqa: ANN001
    w = read_manifest_workload(write_manifest(str(tmp_path / "m")))
    assert (w.header_archives, w.pixel_archives) == (1, 1)
    assert (w.header_archive_bytes, w.pixel_archive_bytes) == (5000, 90000)
    assert (w.instances, w.header_member_bytes, w.pixel_member_bytes) == (3, 3000, 60000)


def run_cli(argv: list[str]) -> int:
    """The real console entry point, as a user runs it."""
    from dicom_reassembly.cli.main import main

    return main(argv)


def test_cli_prints_table_and_writes_json(tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "cost.json"
    rc = run_cli(["cost", "--manifest", write_manifest(str(tmp_path / "m")), "--json-out", str(out),
                  "--bench-report", no_bench(tmp_path), "--storage-class", "GLACIER_IR"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "One-time total" in table and "GLACIER_IR (chosen)" in table
    data = json.loads(out.read_text())
    assert data["one_time_total"] == pytest.approx(sum(x["cost"] for x in data["lines"]))
    assert data["workload"]["instances"] == 3 and data["region"] == "us-east-1"
    assert all(x["as_of"] and x["source"] for x in data["lines"])
    assert run_cli(["cost"]) == 2
    assert "bad_workload" in capsys.readouterr().err


def _bench_report(tmp_path, per_core: float) -> str:  # noqa: ANN001
    p = tmp_path / "report.json"
    p.write_text(json.dumps({"derived": {"reassembly": {"per_core_mb_s": per_core}}}))
    return str(p)


def test_a_tiny_delivery_is_priced_at_a_billion_instances_and_figures_are_rounded(tmp_path, capsys) -> None:  # noqa: ANN001
    manifest = write_manifest(str(tmp_path / "m"))
    report = _bench_report(tmp_path, 98.9885)
    assert run_cli(["cost", "--manifest", manifest, "--bench-report", report]) == 0
    out = capsys.readouterr().out
    assert "Throughput 99 MB/s per core" in out and "98.98" not in out
    note = next(ln for ln in out.splitlines() if "too few to price" in ln)
    assert note.startswith("Note: 3 instances are too few to price meaningfully")
    assert "at 1.00 billion instances" in note and "--instances N" in note
    # The note's figures are those of an explicit --instances 1e9 run of the same delivery.
    json_out = tmp_path / "scaled.json"
    assert run_cli(["cost", "--manifest", manifest, "--bench-report", report, "--instances", "1e9",
                    "--json-out", str(json_out)]) == 0
    scaled_table = capsys.readouterr().out
    assert "too few to price" not in scaled_table
    scaled = json.loads(json_out.read_text())
    assert f"USD {scaled['one_time_total']:,.2f} once" in note
    assert f"USD {scaled['monthly_total']:,.2f} per month" in note
    assert scaled["workload"]["instances"] == 10**9
    # The scaled delivery keeps the manifest's proportions: members per archive and bytes per instance.
    w = scaled["workload"]
    assert w["pixel_member_bytes"] == 20000 * 10**9 and w["header_member_bytes"] == 1000 * 10**9
    assert w["header_archives"] == w["pixel_archives"] == math.ceil(10**9 / 3)


def test_costs_under_a_cent_are_not_shown_as_zero(tmp_path, capsys) -> None:  # noqa: ANN001
    assert run_cli(["cost", "--manifest", write_manifest(str(tmp_path / "m")), "--bench-report",
                    no_bench(tmp_path)]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| PUT: one per written instance")]
    assert rows and rows[0].endswith("| < 0.01 |")  # 3 PUTs at 0.005 per 1,000
