"""The cost model: prices from the config file, totals from the lines, workloads from a manifest."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dicom_reassembly.errors import ConfigError
from dicom_reassembly.estimate.cost import Assumptions, estimate_cost
from dicom_reassembly.estimate.prices import GB, read_bench_s3_figures, read_bench_throughput, read_prices
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


# Client CPU figures in the shape bench/s3cpu.py writes them (ms, bytes).
S3_FIGURES = {"put_cpu_ms": 1.0, "put_object_cpu_ms": 3.0, "put_object_bytes": 1_000_000, "ranged_get_cpu_ms": 1.2,
              "read_pass_cpu_ms_per_mb": 1.5, "read_pass_local_cpu_ms_per_mb": 0.5,
              "write_local_cpu_ms_per_instance": 0.5, "write_mean_object_bytes": 1_000_000,
              "index_pixel_cpu_ms_per_instance": 1.6, "index_pixel_gets_per_instance": 1.0,
              "index_header_cpu_ms_per_instance": 0.8, "index_header_local_cpu_ms_per_instance": 0.5}


def _s3_report(tmp_path, per_core: float, figures: dict | None = None) -> str:  # noqa: ANN001
    p = tmp_path / "report-s3.json"
    doc: dict = {"derived": {"reassembly": {"per_core_mb_s": per_core}}}
    if figures is not None:
        doc["s3_client_cpu"] = {"figures": figures, "measured": {"started_at": "2026-12-04T22:30:00+00:00"}}
    p.write_text(json.dumps(doc))
    return str(p)


def test_without_s3_figures_compute_is_mb_over_the_capped_rate_plus_index_gets_over_their_rate(tmp_path) -> None:  # noqa: ANN001
    w = workload_from_totals(**FULL)
    est = estimate_cost(w, read_prices(SHIPPED), bench_report=_s3_report(tmp_path, 99.0))
    d = est.derived
    net = 6.25e9 / 8 / 1e6 / 16  # m6i.4xlarge: 6.25 Gbit/s over 16 vCPUs, MB/s
    index_gets = 3e9  # one ranged GET per pixel member
    assert d["core_seconds"] == pytest.approx(d["processed_mb"] / min(99.0, net) + index_gets / 50.0)
    assert d["s3_client_cpu_source"].startswith("not measured")
    phases = d["phases"]
    # The PUTs happen in the reassembly phase only, so its rate is above the run's mean and sizes the prefixes.
    put_rate = 3e9 / (phases["reassembly"]["wall_clock_hours"] * 3600)
    assert phases["reassembly"]["put_per_s"] == pytest.approx(put_rate)
    assert put_rate > d["mean_put_per_s"] * 1.5
    assert d["output_prefixes_needed_at_3500_put_s"] == math.ceil(put_rate / 3500)
    assert phases["indexing"]["get_per_s"] == pytest.approx(index_gets / (phases["indexing"]["wall_clock_hours"] * 3600))
    assert phases["indexing"]["input_prefixes_needed_at_5500_get_s"] == math.ceil(phases["indexing"]["get_per_s"] / 5500)
    total_h = phases["indexing"]["wall_clock_hours"] + phases["reassembly"]["wall_clock_hours"]
    assert d["wall_clock_hours"] == pytest.approx(total_h)


def test_measured_s3_client_cpu_adds_to_reassembly_and_can_make_the_cpu_bind(tmp_path) -> None:  # noqa: ANN001
    w = workload_from_totals(**FULL)
    book = read_prices(SHIPPED)
    plain = estimate_cost(w, book, Assumptions(per_core_mb_s=200.0), bench_report=_s3_report(tmp_path, 200.0))
    figures, where = read_bench_s3_figures(_s3_report(tmp_path, 200.0, S3_FIGURES))
    assert figures["put_cpu_ms"] == 1.0 and "s3_client_cpu.figures (2026-12-04" in where
    s3 = estimate_cost(w, book, Assumptions(per_core_mb_s=200.0), bench_report=_s3_report(tmp_path, 200.0, S3_FIGURES))
    r0, r1 = plain.derived["phases"]["reassembly"], s3.derived["phases"]["reassembly"]
    # Per PUT: 1 ms fixed + (2 ms/MB slope - 0.5 ms/MB local write) x object MB; reads: 1 ms/MB more than local,
    # and 1.2 ms per reassembly GET.
    obj_mb = s3.derived["output_gb"] * GB / 1e6 / 3e9
    reads_mb = w.pixel_member_bytes * 1.05 / 1e6
    extra = 3e9 * (1.0 + 1.5 * obj_mb) / 1000 + (reads_mb * 1.0 + line(s3, "GET: reassembly").quantity * 1.2) / 1000
    assert r1["cpu_seconds"] == pytest.approx(r0["cpu_seconds"] + extra)
    assert r1["s3_client_cpu_seconds"] == pytest.approx(extra)
    assert r0["bound"] == "network" and "measured" in s3.derived["s3_client_cpu_source"]
    # Dear enough S3 calls make the CPU bind instead of the network, and the note says so.
    dear = dict(S3_FIGURES, put_cpu_ms=40.0)
    slow = estimate_cost(w, book, Assumptions(per_core_mb_s=200.0), bench_report=_s3_report(tmp_path, 200.0, dear))
    assert slow.derived["phases"]["reassembly"]["bound"] == "CPU"
    assert any(n.startswith("reassembly is bound by the CPU") for n in slow.notes)
    assert line(slow, "EMR worker").quantity > line(s3, "EMR worker").quantity
    # Not counting the S3 client is the local model again.
    off = estimate_cost(w, book, Assumptions(per_core_mb_s=200.0, s3_client_cpu=False),
                        bench_report=_s3_report(tmp_path, 200.0, dear))
    assert off.derived["core_seconds"] == pytest.approx(plain.derived["core_seconds"])


def test_an_index_get_costs_its_latency_or_its_measured_cpu_whichever_is_larger(tmp_path) -> None:  # noqa: ANN001
    w = workload_from_totals(**FULL)
    book = read_prices(SHIPPED)
    cheap = estimate_cost(w, book, bench_report=_s3_report(tmp_path, 99.0, S3_FIGURES))
    idx = cheap.derived["phases"]["indexing"]
    assert idx["bound"].startswith("latency") and idx["client_cpu_ms_per_ranged_get"] == pytest.approx(1.6)
    dear = estimate_cost(w, book, bench_report=_s3_report(tmp_path, 99.0, dict(S3_FIGURES, index_pixel_cpu_ms_per_instance=100.0)))
    idx = dear.derived["phases"]["indexing"]
    assert idx["bound"] == "client CPU per ranged GET"
    assert idx["core_seconds"] > 3e9 * 0.1  # 100 ms per GET, not the 20 ms latency
    assert read_bench_s3_figures(_s3_report(tmp_path, 99.0, {"put_cpu_ms": 1.0})) is None  # incomplete: not used


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


def test_design_md_states_the_cost_models_figures_for_the_example_delivery() -> None:
    # docs/design.md (sections 3, 4 and 8) quotes the model on the shipped prices and the committed benchmark
    # report; a new measurement or a model change that moves them must move the document too.
    text = Path(ROOT, "docs", "design.md").read_text(encoding="utf-8")
    book = read_prices(SHIPPED)
    w = workload_from_totals(**FULL)
    full = estimate_cost(w, book)
    assert "not measured" not in full.derived["s3_client_cpu_source"]  # the committed report has the S3 figures
    idx, reas = full.derived["phases"]["indexing"], full.derived["phases"]["reassembly"]
    tenth = estimate_cost(w, book, Assumptions(selected_fraction=0.1))
    located = estimate_cost(w, book, Assumptions(selected_fraction=0.1, selective_restore=True))
    hours = full.derived["node_hours"], tenth.derived["node_hours"], located.derived["node_hours"]
    stated = [
        f"{round(reas['put_per_s'], -2):,.0f} PUT/s", f"{round(idx['get_per_s'], -2):,.0f} GET/s",
        f"{reas['output_prefixes_needed_at_3500_put_s']} output prefixes at 3,500",
        f"{idx['input_prefixes_needed_at_5500_get_s']} input prefixes at 5,500",
        f"indexing takes {idx['wall_clock_hours']:.0f}", f"reassembly {reas['wall_clock_hours']:.0f} (network-bound)",
        f"{reas['cpu_mb_s_per_vcpu']:.0f} MB per CPU-second", f"{reas['client_cpu_ms_per_put']:.1f} ms of client CPU",
        f"{hours[1]:,.0f} worker node-hours against {hours[0]:,.0f}", f"**{hours[0] / hours[1]:.1f}×**",
        f"gives {hours[2]:,.0f} node-hours, {hours[0] / hours[2]:.1f}× less",
        f"| {line(full, 'EMR worker').quantity:,.0f} instance-hours |", f"**{full.one_time_total:,.2f}**",
    ]
    assert reas["bound"] == "network"
    missing = [s for s in stated if s not in text]
    assert not missing, f"docs/design.md no longer states the cost model's {missing}"
