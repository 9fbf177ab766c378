"""The notebook's aggregations (dicom_reassembly.estimate): on hand-made Parquet, and on the damaged sample
against a pandas oracle written from what the notebook has always shown, in DuckDB and in Spark."""

from __future__ import annotations

import math
import os
from datetime import date, datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dicom_reassembly.errors import ConfigError, NotFoundError
from dicom_reassembly.estimate import analysis, charts, demographics, histograms, inputs, outputs
from dicom_reassembly.estimate.engine import DuckDBEngine
from dicom_reassembly.records import catalog as records_catalog

MANIFEST_NAMES = ["archive_uri", "archive_role", "archive_size", "index_run", "member_name", "size", "kind",
                  "sop_instance_uid", "error", "error_detail", "header_json", "modality", "study_date", "patient_age"]
RUN = "20250101T000000Z-a"


def _manifest_table(rows: list[dict]) -> pa.Table:
    types = {"archive_size": pa.int64(), "size": pa.int64()}
    return pa.table({n: pa.array([r.get(n) for r in rows], types.get(n, pa.string())) for n in MANIFEST_NAMES})


def _with_archive_rows(rows: list[dict]) -> list[dict]:
    """Members get index run 1 and, unless the rows have one, their archive's own row (what makes a run count)."""
    out = [{"index_run": "1", **r} for r in rows]
    have = {r["archive_uri"] for r in out if r.get("kind") == "archive"}
    for uri in dict.fromkeys(r["archive_uri"] for r in out):
        if uri not in have:
            out.append({"archive_uri": uri, "kind": "archive", "index_run": "1", "archive_role": "text"})
    return out


def _write_ledger(path: str, rows: list[dict], run: str = RUN) -> None:
    cols = [c for c in inputs.LEDGER_COLUMNS if c != "run_id"]
    table = pa.table({c: pa.array([r.get(c) for r in rows], pa.int64() if c == "output_bytes" else pa.string())
                      for c in cols})
    folder = os.path.join(path, f"run_id={run}")
    os.makedirs(folder, exist_ok=True)
    pq.write_table(table, os.path.join(folder, f"part-{len(os.listdir(folder))}.parquet"))


def _inputs(tmp_path, manifest: list[dict], ledger: list[dict] | None = None, **kw) -> inputs.Inputs:  # noqa: ANN001
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "manifest"), exist_ok=True)
    pq.write_table(_manifest_table(_with_archive_rows(manifest)), os.path.join(root, "manifest", "part-0.parquet"))
    if ledger:
        _write_ledger(os.path.join(root, "ledger"), ledger)
    return inputs.open_inputs(os.path.join(root, "manifest"), os.path.join(root, "ledger"), **kw)


# ------------------------------------------------------------------------------------------------ inputs


def test_the_manifest_relation_keeps_the_newest_run_and_has_no_header_json(tmp_path) -> None:  # noqa: ANN001
    old = [{"archive_uri": "s3://b/d/text/t.tar", "archive_role": "text", "archive_size": 10, "index_run": "20240101",
            "kind": "archive", "error": "not_restored"}]
    new = [{"archive_uri": "s3://b/d/text/t.tar", "archive_role": "text", "archive_size": 10, "index_run": "20250101",
            "kind": "archive"},
           {"archive_uri": "s3://b/d/text/t.tar", "archive_role": "text", "archive_size": 10, "index_run": "20250101",
            "kind": "header", "member_name": "1.2.json", "size": 7, "sop_instance_uid": "1.2",
            "header_json": "{}", "modality": "CT", "patient_age": "030Y"}]
    pq.write_table(_manifest_table(old), tmp_path / "part-0.parquet")
    pq.write_table(_manifest_table(new), tmp_path / "part-1.parquet")
    data = inputs.open_inputs(str(tmp_path), str(tmp_path / "no-ledger"))
    assert "header_json" not in data.engine.columns("manifest")
    got = data.frame("SELECT index_run, kind, error FROM manifest ORDER BY kind")
    assert list(got["index_run"]) == ["20250101"] * 2 and list(got["kind"]) == ["archive", "header"]
    assert got["error"].isna().all()  # the old run's not_restored no longer applies
    assert analysis.overview(data).loc["damaged archives", "value"] == 0


def test_the_newest_run_is_decided_by_each_archives_own_archive_rows(tmp_path) -> None:  # noqa: ANN001
    rows = [("a", "1", "archive", None), ("a", "1", "pixels", "old.j2c"),
            ("a", "2", "archive", None), ("a", "2", "pixels", "new.j2c"),
            ("b", "1", "archive", None), ("b", "1", "header", "h.json"),
            ("b", "3", "header", "stray.json")]  # a partial run that never wrote b's archive row does not count
    table = _manifest_table([{"archive_uri": a, "index_run": r, "kind": k, "member_name": m} for a, r, k, m in rows])
    pq.write_table(table, tmp_path / "part-0.parquet")
    data = inputs.open_inputs(str(tmp_path), str(tmp_path / "no-ledger"), shorten=False)
    got = data.frame("SELECT archive_uri, index_run, coalesce(member_name, '-') AS m FROM manifest")
    assert sorted(zip(got["archive_uri"], got["index_run"], got["m"])) == [
        ("a", "2", "-"), ("a", "2", "new.j2c"), ("b", "1", "-"), ("b", "1", "h.json")]


def test_a_missing_manifest_says_where(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(NotFoundError) as err:
        inputs.open_inputs(str(tmp_path / "nothing"), str(tmp_path / "ledger"))
    assert err.value.reason == "manifest_not_found" and "make demo" in str(err.value)


def test_the_newest_ledger_run_is_shown_unless_told(tmp_path) -> None:  # noqa: ANN001
    ledger = str(tmp_path / "ledger")
    _write_ledger(ledger, [{"sop_instance_uid": "1", "status": "written"},
                           {"sop_instance_uid": "2", "status": "orphan_header"}], "20250101T000000Z-a")
    _write_ledger(ledger, [{"sop_instance_uid": "1", "status": "skipped_existing"}], "20250202T000000Z-b")
    pq.write_table(_manifest_table(_with_archive_rows([{"archive_uri": "t", "kind": "header"}])),
                   tmp_path / "m.parquet")
    assert inputs.ledger_runs(ledger) == ["20250101T000000Z-a", "20250202T000000Z-b"]
    data = inputs.open_inputs(str(tmp_path / "m.parquet"), ledger)
    assert data.run_id == "20250202T000000Z-b"
    assert analysis.status_counts(data)["rows"].to_dict() == {"skipped_existing": 1}
    data = inputs.open_inputs(str(tmp_path / "m.parquet"), ledger, "20250101T000000Z-a")
    assert analysis.status_counts(data)["rows"].to_dict() == {"written": 1, "orphan_header": 1}
    with pytest.raises(ConfigError):
        inputs.open_inputs(str(tmp_path / "m.parquet"), ledger, "no-such-run")


def test_all_digit_run_ids_stay_strings(tmp_path) -> None:  # noqa: ANN001
    ledger = str(tmp_path / "ledger")
    _write_ledger(ledger, [{"status": "written"}], "20250101")
    _write_ledger(ledger, [{"status": "skipped_existing"}], "20250102")
    pq.write_table(_manifest_table(_with_archive_rows([{"archive_uri": "t", "kind": "header"}])),
                   tmp_path / "m.parquet")
    data = inputs.open_inputs(str(tmp_path / "m.parquet"), ledger)
    assert data.run_id == "20250102" and data.frame("SELECT run_id FROM ledger")["run_id"].tolist() == ["20250102"]
    older = inputs.open_inputs(str(tmp_path / "m.parquet"), ledger, "20250101")
    assert analysis.status_counts(older)["rows"].to_dict() == {"written": 1}


def test_no_ledger_and_no_catalogue_yet(tmp_path) -> None:  # noqa: ANN001
    data = _inputs(tmp_path, [{"archive_uri": "t", "kind": "header", "sop_instance_uid": "1"}])
    assert data.run_id is None and not data.has_catalog
    assert data.catalog_uri == str(tmp_path / "ledger") + "_catalog"
    assert len(analysis.status_counts(data)) == 0 and len(analysis.orphans(data)) == 0
    assert len(analysis.reason_counts(data)) == 0 and "ledger_rows" not in analysis.damaged_archives(data)
    with pytest.raises(NotFoundError) as err:
        outputs.modality_year_counts(data)
    assert err.value.reason == "catalog_not_found"


def _put_parquet(s3, bucket: str, key: str, table: pa.Table) -> None:  # noqa: ANN001
    import io

    buf = io.BytesIO()
    pq.write_table(table, buf)
    s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())


def test_inputs_on_s3(s3) -> None:  # noqa: ANN001
    s3.create_bucket(Bucket="work")
    rows = [{"archive_uri": "s3://in/d/images/i.tar", "archive_role": "images", "archive_size": 30, "index_run": "1",
             "kind": "archive"},
            {"archive_uri": "s3://in/d/images/i.tar", "archive_role": "images", "archive_size": 30, "index_run": "1",
             "kind": "pixels", "member_name": "1.2.j2c", "size": 20, "sop_instance_uid": "1.2"}]
    _put_parquet(s3, "work", "manifest/part-00000.parquet", _manifest_table(rows))
    for run, status in (("20250101T000000Z-a", "written"), ("20250303T000000Z-c", "orphan_pixels")):
        ledger = pa.table({"sop_instance_uid": ["1.2"], "status": [status], "reason": [None],
                           "header_archive": [None], "header_member": [None],
                           "pixel_archive": ["s3://in/d/images/i.tar"], "pixel_member": ["1.2.j2c"],
                           "output_bytes": pa.array([None], pa.int64())})
        _put_parquet(s3, "work", f"ledger/run_id={run}/part-00000.parquet", ledger)
    s3.put_object(Bucket="work", Key="ledger/_SUCCESS", Body=b"")
    # A file as reassemble writes it: the catalogue's own file schema (partition values in the path).
    catalog = pa.Table.from_pylist([{"sop_instance_uid": "1.2", "series_instance_uid": "9", "output_bytes": 5,
                                     "study_date": date(2021, 3, 4), "recorded_at": datetime(2025, 3, 3, tzinfo=timezone.utc),
                                     "status": "written"}],
                                   schema=records_catalog.arrow_schema(with_partitions=False))
    _put_parquet(s3, "work", "ledger_catalog/modality=CT/study_year=2021/part-0.parquet", catalog)
    data = inputs.open_inputs("s3://work/manifest", "s3://work/ledger")
    assert data.run_id == "20250303T000000Z-c" and data.runs == ["20250101T000000Z-a", "20250303T000000Z-c"]
    assert data.prefix == "s3://in/d/images/" and data.has_catalog
    assert list(analysis.orphans(data)["archive"]) == ["i.tar"]
    assert analysis.overview(data).loc["pixel members", "value"] == 1
    assert outputs.modality_year_counts(data).loc["CT", "2021"] == 1


def test_resolve_input_takes_relative_paths_from_the_root() -> None:
    assert inputs.resolve_input(None, "out/demo/manifest", "/repo") == "/repo/out/demo/manifest"
    assert inputs.resolve_input("  ", "out/x", "/repo") == "/repo/out/x"
    assert inputs.resolve_input("m", "out/x", "/repo") == "/repo/m"
    assert inputs.resolve_input("/abs/m", "out/x", "/repo") == "/abs/m"
    assert inputs.resolve_input("s3://b/m", "out/x", "/repo") == "s3://b/m"
    assert inputs.default_catalog("s3://b/ledger/") == "s3://b/ledger_catalog"


# -------------------------------------------------------------------------------------- tables, hand-made


@pytest.mark.parametrize(("value", "years"), [
    ("030Y", 30.0), ("006M", 0.5), ("052W", 52 * 7 / 365.25), ("010D", 10 / 365.25), ("089y", 89.0), (" 045Y ", 45.0),
])
def test_parse_age_reads_as_values_in_years(value: str, years: float) -> None:
    assert demographics.parse_age(value) == pytest.approx(years)


@pytest.mark.parametrize("value", [None, "", "30", "Y", "030X", "1234Y", "thirty", 30])
def test_parse_age_rejects_what_is_not_an_as_value(value: object) -> None:
    assert math.isnan(demographics.parse_age(value))


def test_status_and_reason_counts(tmp_path) -> None:  # noqa: ANN001
    data = _inputs(tmp_path, [{"archive_uri": "t", "kind": "header"}], [{"status": "written"}] * 3 + [
        {"status": "invalid_header", "reason": "malformed_json: line 1"},
        {"status": "invalid_header", "reason": "malformed_json: line 9"},
        {"status": "orphan_pixels", "reason": "no header member for this UID"}])
    counts = analysis.status_counts(data)
    assert list(counts.index) == ["written", "orphan_pixels", "invalid_header"]  # the ledger's status order
    assert list(counts["rows"]) == [3, 1, 2]
    assert counts["share"].sum() == pytest.approx(1.0)
    reasons = analysis.reason_counts(data)["rows"].to_dict()
    assert reasons == {("invalid_header", "malformed_json"): 2, ("orphan_pixels", ""): 1}


def test_orphans_duplicates_and_damaged_archives(tmp_path) -> None:  # noqa: ANN001
    ledger = [
        {"status": "orphan_header", "sop_instance_uid": "1", "header_archive": "s3://x/t.tar", "header_member": "1.json"},
        {"status": "orphan_pixels", "sop_instance_uid": "2", "pixel_archive": "s3://x/i.tar", "pixel_member": "2.j2c"},
        {"status": "duplicate", "sop_instance_uid": "3", "pixel_archive": "s3://x/j.tar", "pixel_member": "3.j2c"},
        {"status": "unreadable_archive", "pixel_archive": "s3://x/bad.tar", "reason": "not_a_tar: x"},
        {"status": "unreadable_archive", "sop_instance_uid": "4", "header_archive": "s3://x/t.tar",
         "header_member": "4.json", "pixel_archive": "s3://x/bad.tar", "pixel_member": "4.j2c"},
        {"status": "written", "sop_instance_uid": "5"},
    ]
    manifest = [
        {"archive_uri": "s3://x/bad.tar", "archive_role": "images", "archive_size": 5, "kind": "archive",
         "error": "not_a_tar", "error_detail": "x"},
        {"archive_uri": "s3://x/i.tar", "archive_role": "images", "archive_size": 9, "kind": "archive"},
    ]
    data = _inputs(tmp_path, manifest, ledger)
    orph = analysis.orphans(data)
    assert list(zip(orph["status"], orph["archive"], orph["member"])) == [
        ("orphan_header", "t.tar", "1.json"), ("orphan_pixels", "i.tar", "2.j2c")]
    assert list(analysis.duplicates(data)["sop_instance_uid"]) == ["3"]
    assert len(analysis.orphans(data, limit=1)) == 1
    damaged = analysis.damaged_archives(data)
    assert list(damaged.index) == ["bad.tar"]
    assert damaged.loc["bad.tar", "ledger_rows"] == 2
    assert damaged.loc["bad.tar", "ledger_status"] == "unreadable_archive"


def test_member_pairing_finds_orphans_and_copies_before_any_run(tmp_path) -> None:  # noqa: ANN001
    m = [{"archive_uri": a, "kind": k, "sop_instance_uid": u} for a, k, u in (
        ("t", "header", "1"), ("i", "pixels", "1"), ("t", "header", "2"), ("i", "pixels", "3"), ("j", "pixels", "3"))]
    got = analysis.member_pairing(_inputs(tmp_path, m))["uids"].to_dict()
    assert got == {"header and pixels, one each": 1, "header only (orphan)": 1, "pixels only (orphan)": 1,
                   "several headers": 0, "several pixel members": 1}


def test_demographics_count_each_instance_once(tmp_path) -> None:  # noqa: ANN001
    cols = ["archive_uri", "kind", "sop_instance_uid", "modality", "study_date", "patient_age"]
    m = [dict(zip(cols, r)) for r in (
        ("t", "header", "1", "CT", "20190105", "030Y"),
        ("u", "header", "1", "CT", "20190105", "030Y"),  # a second copy of the same instance
        ("t", "header", "2", "MR", "2019.11.30", "006M"),
        ("t", "header", "3", None, "2021-01-01", "45"),
        ("i", "pixels", "1", None, None, None),
    )]
    data = _inputs(tmp_path, m)
    assert demographics.modality_counts(data)["instances"].to_dict() == {"CT": 1, "MR": 1, analysis.MISSING: 1}
    assert demographics.study_date_counts(data)["instances"].to_dict() == {"2019": 2, analysis.MISSING: 1}
    assert demographics.study_date_counts(data, "month")["instances"].to_dict() == {
        "2019-01": 1, "2019-11": 1, analysis.MISSING: 1}
    ages = demographics.age_distribution(data)["instances"].to_dict()
    assert ages == {"0-9": 1, "10-19": 0, "20-29": 0, "30-39": 1, analysis.MISSING: 1}
    assert demographics.age_summary(data)["years"].to_dict() == {
        "count": 2.0, "min": 0.5, "median": 15.25, "mean": 15.25, "max": 30.0}
    with pytest.raises(ConfigError):
        demographics.study_date_counts(data, "week")


def test_the_first_copy_of_an_instance_is_the_one_in_the_first_archive(tmp_path) -> None:  # noqa: ANN001
    m = [{"archive_uri": "b.tar", "member_name": "1.json", "kind": "header", "sop_instance_uid": "1", "modality": "MR"},
         {"archive_uri": "a.tar", "member_name": "1.json", "kind": "header", "sop_instance_uid": "1", "modality": "CT"}]
    assert demographics.modality_counts(_inputs(tmp_path, m))["instances"].to_dict() == {"CT": 1}


def test_archives_table_counts_members_by_kind(tmp_path) -> None:  # noqa: ANN001
    m = [{"archive_uri": "t.tar", "archive_role": "text", "archive_size": 100, "kind": "archive"},
         {"archive_uri": "t.tar", "kind": "header"}, {"archive_uri": "t.tar", "kind": "header"},
         {"archive_uri": "t.tar", "kind": "other"},
         {"archive_uri": "e.tar", "archive_role": "images", "archive_size": 0, "kind": "archive",
          "error": "empty_archive"}]
    data = _inputs(tmp_path, m, shorten=False)
    table = analysis.archives_table(data)
    assert table.loc["t.tar", ["header", "pixels", "other", "members"]].tolist() == [2, 0, 1, 3]
    assert table.loc["e.tar", "members"] == 0 and table.loc["e.tar", "error"] == "empty_archive"
    assert list(analysis.archives_table(data, limit=1).index) == ["e.tar"]  # images before text
    by_role = analysis.members_by_role(data)
    assert by_role.loc["text", "members"] == 3 and by_role.loc["images", "archives"] == 1
    assert isinstance(analysis.members_per_archive(data), pd.DataFrame)
    assert isinstance(analysis.members_per_archive(data, few=1), histograms.Histogram)


def test_size_summary_matches_pandas_and_can_approximate(tmp_path) -> None:  # noqa: ANN001
    sizes = [3, 10, 11, 500, 7000, 7001, 9999]
    m = [{"archive_uri": "t.tar", "kind": "header", "size": s} for s in sizes]
    data = _inputs(tmp_path, m)
    got = analysis.size_summary(data).loc["header members"]
    s = pd.Series(sizes, dtype="float64")
    assert got.to_dict() == {"count": 7, "total": s.sum(), "min": 3.0, "median": round(s.median()),
                             "mean": round(s.mean()), "p95": round(s.quantile(0.95)), "max": 9999.0}
    assert analysis.size_summary(data).loc["other members", "count"] == 0
    approx = analysis.size_summary(data, exact=False)
    assert "median (approx.)" in approx.columns and approx.loc["header members", "count"] == 7


# ------------------------------------------------------------------------------------------- histograms


@pytest.mark.parametrize("values", [
    [1, 2, 2, 3, 50, 99, 100],  # linear bins
    [0, 0, 7, 200, 201, 4096, 70_000, 1_000_000, 1_000_000],  # log bins, zeros counted apart
    [5] * 4,  # a single value
    list(np.random.default_rng(7).integers(1, 10**7, 2000)),
])
def test_histogram_counts_are_numpys(values: list[int]) -> None:
    engine = DuckDBEngine()
    engine.con.register("vals", pd.DataFrame({"series": "s", "value": pd.Series(values, dtype="int64")}))
    h = histograms.histogram(engine, "SELECT series, value FROM vals", ("s",))
    positive = np.asarray([v for v in values if v > 0], dtype="float64")
    counts, _ = np.histogram(positive, bins=np.asarray(h.edges))
    assert h.counts["s"] == counts.tolist() and h.total("s") == len(positive)  # every value lands in a bin
    assert h.empty["s"] == len(values) - len(positive)
    assert len(h.edges) == histograms.EDGES and h.log == (positive.max() / positive.min() > 100)
    engine.close()


def test_size_histograms_have_tick_labels_that_do_not_run_into_each_other(tmp_path) -> None:  # noqa: ANN001
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    archives = [("text", 51_200), ("text", 61_440), ("text", 92_160), ("images", 61_440), ("images", 409_600),
                ("images", 819_200)]
    rows = [{"archive_uri": f"a{i}.tar", "archive_role": role, "archive_size": size, "kind": "archive"}
            for i, (role, size) in enumerate(archives)]
    rows += [{"archive_uri": "a0.tar", "kind": "header", "size": 1000 + 450 * i} for i in range(30)]
    rows += [{"archive_uri": "a3.tar", "kind": "pixels", "size": 200 * 2 ** i} for i in range(12)]
    fig = charts.plot_size_distributions(analysis.size_histograms(_inputs(tmp_path, rows)))
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    for ax in fig.axes:
        boxes = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()), key=lambda b: b.x0)
        assert len(boxes) >= 3, ax.get_title()
        overlaps = [(a.x1, b.x0) for a, b in zip(boxes, boxes[1:]) if a.x1 > b.x0]
        assert not overlaps, f"{ax.get_title()}: {[t.get_text() for t in ax.get_xticklabels()]}"


def test_bar_values_print_counts_in_full_and_amounts_to_four_digits() -> None:
    from matplotlib.figure import Figure

    counts = pd.DataFrame({"rows": [99_800, 100, 7]}, index=["written", "orphan_header", "orphan_pixels"])
    fig = charts.plot_status_counts(counts, "r1")
    assert [t.get_text() for t in fig.axes[0].texts] == ["99,800", "100", "7"]
    ax = Figure().subplots()
    charts._bars(ax, ["a", "b"], [0.49951, 3e-05], "cost", "USD")
    assert [t.get_text() for t in ax.texts] == ["0.4995", "3e-05"]


# -------------------------------------------------------------------------------------------- catalogue


def test_catalogue_tables_from_its_newest_rows(tmp_path) -> None:  # noqa: ANN001
    from datetime import datetime, timezone

    from dicom_reassembly.records import catalog

    def row(uid: str, series: str, modality: str | None, day: date | None, size: int, at: int) -> dict:
        attrs = {"sop_instance_uid": uid, "series_instance_uid": series, "study_instance_uid": "s" + series,
                 "patient_id": "p", "modality": modality, "study_date": day}
        return catalog.build_catalog_row(attrs, transfer_syntax=None, output_uri=f"o/{uid}", output_bytes=size,
                                         output_checksum=None, run_id="r", status="written",
                                         recorded_at=datetime(2026, 1, at, tzinfo=timezone.utc))
    uri = str(tmp_path / "ledger_catalog")
    catalog.write_catalog_rows(uri, [row("1", "A", "CT", date(2021, 5, 1), 100, 1),
                                     row("2", "A", "CT", date(2021, 5, 1), 100, 1),
                                     row("3", "B", "MR", date(2019, 1, 2), 50, 1),
                                     row("4", "C", None, None, 7, 1)])
    catalog.write_catalog_rows(uri, [row("3", "B", "MR", date(2019, 1, 2), 60, 2)])  # a rerun rewrote 3
    data = _inputs(tmp_path, [{"archive_uri": "t", "kind": "header"}])
    assert data.has_catalog
    table = outputs.modality_year_counts(data)
    assert table.to_dict("index") == {"CT": {"2019": 0, "2021": 2, analysis.MISSING: 0, "total": 2},
                                      "MR": {"2019": 1, "2021": 0, analysis.MISSING: 0, "total": 1},
                                      analysis.MISSING: {"2019": 0, "2021": 0, analysis.MISSING: 1, "total": 1}}
    over = outputs.catalog_overview(data)["value"]
    assert (over["instances"], over["series"], over["output bytes"], over["instances without a study date"]) == (
        4, 3, 267, 1)
    series = outputs.series_histograms(data)
    slices, sizes = series["Slices (instances) per series"], series["Bytes per series"]
    assert (slices.edges[0], slices.edges[-1]) == (1, 2)  # series B (rewritten, one row) and C: 1; A: 2
    assert slices.counts["series"][0] == 2 and slices.counts["series"][-1] == 1 and slices.total("series") == 3
    assert sizes.total("series") == 3 and sizes.edges[0] == 7 and sizes.edges[-1] >= 200
    fig = charts.plot_modality_years(table)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["2019", "2021", analysis.MISSING]


# ------------------------------------------------------ the damaged sample: DuckDB and Spark against pandas


@pytest.fixture(scope="module")
def damaged_outputs(spark, damaged_delivery, tmp_path_factory):  # noqa: ANN001, ANN201
    """The damaged sample's manifest, ledger and catalogue (at <ledger>_catalog), built the way the jobs build them."""
    from helpers import build_manifest, write_catalog_like_reassemble

    from dicom_reassembly.config import Config
    from dicom_reassembly.reassembly.run import ReassembleRun

    root, _ = damaged_delivery
    base = str(tmp_path_factory.mktemp("analysis"))
    manifest, ledger = os.path.join(base, "manifest"), os.path.join(base, "ledger")
    build_manifest(spark, os.path.join(root, "text"), os.path.join(root, "images"), manifest)
    ReassembleRun(spark=spark, manifest_uri=manifest, out=os.path.join(base, "dcm"), ledger_uri=ledger,
                  runs_uri=os.path.join(base, "runs"), computations_uri=os.path.join(base, "computations"),
                  cfg=Config(upload_threads=2, computations=()), argv=["--manifest", "m"]).execute()
    write_catalog_like_reassemble(manifest, ledger, ledger + "_catalog")
    return manifest, ledger


def _oracle_frames(manifest_uri: str, ledger_uri: str) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The manifest (newest index, by pyarrow) and the ledger's only run as whole pandas frames: the old way."""
    from dicom_reassembly.io import arrow_io

    m = arrow_io.read_manifest_table(manifest_uri, list(inputs.MANIFEST_COLUMNS)).to_pandas()
    (run,) = [d[len("run_id="):] for d in os.listdir(ledger_uri) if d.startswith("run_id=")]
    led = pq.read_table(os.path.join(ledger_uri, f"run_id={run}")).to_pandas()
    return m, led, run


def _expected_tables(m: pd.DataFrame, led: pd.DataFrame, prefix: str) -> dict:
    """What the notebook has always shown, computed the pandas way on whole frames."""
    short = lambda s: s.map(lambda u: u[len(prefix):] if isinstance(u, str) else u)  # noqa: E731
    arch = m[m["kind"] == "archive"].drop_duplicates("archive_uri")
    members = m[m["kind"] != "archive"]
    headers = members[members["kind"] == "header"]
    per_kind = pd.crosstab(members["archive_uri"], members["kind"]).reindex(columns=["header", "pixels", "other"],
                                                                            fill_value=0)
    table = arch.set_index("archive_uri")[["archive_role", "archive_size", "error"]].join(per_kind).fillna(
        {"header": 0, "pixels": 0, "other": 0})
    table["members"] = table[["header", "pixels", "other"]].sum(axis=1)
    inst = headers.sort_values(["archive_uri", "member_name"]).drop_duplicates("sop_instance_uid")
    bad = led[~led["status"].isin(["written", "skipped_existing"])]
    codes = bad["reason"].map(analysis.reason_code).fillna("")
    hit = led[led["status"].isin(analysis.ARCHIVE_STATUSES)]
    named = pd.concat([hit["header_archive"], hit["pixel_archive"]]).dropna().value_counts()
    damaged = arch[arch["error"].notna()]
    pairs = pd.crosstab(m.loc[m["kind"].isin(["header", "pixels"]), "sop_instance_uid"],
                        m.loc[m["kind"].isin(["header", "pixels"]), "kind"])
    orph = led[led["status"].isin(analysis.ORPHAN_STATUSES)].sort_values(["status", "sop_instance_uid"])
    return {
        "overview": {"archives": arch["archive_uri"].nunique(),
                     "text archives": (arch["archive_role"] == "text").sum(),
                     "image archives": (arch["archive_role"] == "images").sum(),
                     "damaged archives": arch["error"].notna().sum(), "archive bytes": arch["archive_size"].sum(),
                     "members": len(members), "header members": len(headers),
                     "pixel members": (members["kind"] == "pixels").sum(),
                     "other members": (members["kind"] == "other").sum(),
                     "members with an error": members["error"].notna().sum(),
                     "instances (distinct header UIDs)": headers["sop_instance_uid"].nunique(),
                     "index runs": arch["index_run"].nunique(), "ledger rows": len(led),
                     "written": (led["status"] == "written").sum()},
        "archives": {short(pd.Series([a]))[0]: [r["archive_role"], r["archive_size"], r["header"], r["pixels"],
                                                r["other"], r["members"]] for a, r in table.iterrows()},
        "by_role": {role: [len(g), g["archive_size"].sum(), g["members"].sum(), g["members"].min(), g["members"].max()]
                    for role, g in table.groupby("archive_role")},
        "sizes": {f"{k} members": [float(v.median()), float(v.quantile(0.95)), float(v.mean())]
                  for k, v in ((k, members.loc[members["kind"] == k, "size"].astype(float)) for k in ("header", "pixels"))},
        "damaged": {short(pd.Series([a]))[0]: (e, int(named.get(a, 0)))
                    for a, e in zip(damaged["archive_uri"], damaged["error"])},
        "pairing": {"header and pixels, one each": ((pairs["header"] == 1) & (pairs["pixels"] == 1)).sum(),
                    "header only (orphan)": ((pairs["header"] >= 1) & (pairs["pixels"] == 0)).sum(),
                    "pixels only (orphan)": ((pairs["header"] == 0) & (pairs["pixels"] >= 1)).sum(),
                    "several headers": (pairs["header"] > 1).sum(), "several pixel members": (pairs["pixels"] > 1).sum()},
        "orphans": list(zip(orph["status"], orph["sop_instance_uid"])),
        "duplicates": sorted(led.loc[led["status"].isin(analysis.DUPLICATE_STATUSES), "sop_instance_uid"]),
        "statuses": led["status"].value_counts().to_dict(),
        "reasons": bad.assign(reason=codes).groupby(["status", "reason"]).size().to_dict(),
        "modalities": inst["modality"].fillna(analysis.MISSING).value_counts().to_dict(),
        "years": pd.to_datetime(inst["study_date"].str.replace(".", "", regex=False), format="%Y%m%d",
                                errors="coerce").dt.strftime("%Y").fillna(analysis.MISSING).value_counts().to_dict(),
        "ages": inst["patient_age"].map(demographics.parse_age).dropna().describe()[["count", "min", "50%", "mean",
                                                                                      "max"]].round(2).tolist(),
        "header_sizes": headers["size"].astype(float).tolist(),
    }


def _all_tables(data: inputs.Inputs) -> dict:
    return {"overview": analysis.overview(data), "archives": analysis.archives_table(data),
            "by_role": analysis.members_by_role(data), "sizes": analysis.size_summary(data),
            "size_hist": analysis.size_histograms(data), "damaged": analysis.damaged_archives(data),
            "pairing": analysis.member_pairing(data), "orphans": analysis.orphans(data),
            "duplicates": analysis.duplicates(data), "statuses": analysis.status_counts(data),
            "reasons": analysis.reason_counts(data), "modalities": demographics.modality_counts(data),
            "years": demographics.study_date_counts(data), "months": demographics.study_date_counts(data, "month"),
            "ages": demographics.age_distribution(data), "age_summary": demographics.age_summary(data),
            "workload": analysis.manifest_workload(data), "catalog": outputs.catalog_overview(data),
            "modality_years": outputs.modality_year_counts(data), "series": outputs.series_histograms(data)}


@pytest.fixture(scope="module")
def duckdb_tables(damaged_outputs):  # noqa: ANN001, ANN201
    data = inputs.open_inputs(*damaged_outputs)
    yield data, _all_tables(data)
    data.close()


def test_duckdb_tables_match_the_pandas_ones_on_the_damaged_sample(damaged_delivery, damaged_outputs,  # noqa: ANN001
                                                                   duckdb_tables) -> None:  # noqa: ANN001
    from collections import Counter

    from dicom_reassembly.estimate.workload import read_manifest_workload

    data, got = duckdb_tables
    m, led, run = _oracle_frames(*damaged_outputs)
    want = _expected_tables(m, led, data.prefix)
    assert data.run_id == run and data.prefix and set(led["status"]) >= {"written", "conflict", "unreadable_archive"}
    overview = got["overview"]["value"]
    assert {k: overview[k] for k in want["overview"]} == want["overview"]
    archives = got["archives"]
    assert {a: [r["role"], r["bytes"], r["header"], r["pixels"], r["other"], r["members"]]
            for a, r in archives.iterrows()} == want["archives"]
    assert {r: [g["archives"], g["bytes"], g["members"], g["members_min"], g["members_max"]]
            for r, g in got["by_role"].iterrows()} == want["by_role"]
    for name, (median, p95, mean) in want["sizes"].items():
        assert got["sizes"].loc[name, ["median", "p95", "mean"]].tolist() == [round(median), round(p95), round(mean)]
    damaged = got["damaged"]
    assert {a: (r["error"], r["ledger_rows"]) for a, r in damaged.iterrows()} == want["damaged"] and len(damaged)
    assert got["pairing"]["uids"].to_dict() == want["pairing"]
    assert list(zip(got["orphans"]["status"], got["orphans"]["sop_instance_uid"])) == want["orphans"]
    assert sorted(got["duplicates"]["sop_instance_uid"]) == want["duplicates"] and want["duplicates"]
    assert got["statuses"]["rows"].to_dict() == want["statuses"]
    assert got["reasons"]["rows"].to_dict() == want["reasons"]
    assert got["modalities"]["instances"].to_dict() == want["modalities"]
    assert got["years"]["instances"].to_dict() == want["years"]
    assert got["age_summary"]["years"].tolist() == want["ages"]
    header_hist = got["size_hist"]["Header (JSON) sizes"]
    counts, _ = np.histogram(want["header_sizes"], bins=np.asarray(header_hist.edges))
    assert header_hist.counts["header"] == counts.tolist() and sum(counts) == len(want["header_sizes"])
    assert got["workload"] == read_manifest_workload(damaged_outputs[0])
    written = [i for i in damaged_delivery[1]["instances"].values() if i["status"] == "written"]
    assert data.has_catalog and got["catalog"].loc["instances", "value"] == len(written)
    years = got["modality_years"].drop(columns="total")
    assert {(m, y): n for (m, y), n in years.stack().items() if n} == dict(
        Counter((i["modality"], i["study_date"][:4]) for i in written))
    series = Counter(i["series_instance_uid"] for i in written)
    slices = got["series"]["Slices (instances) per series"]
    assert slices.total("series") == len(series) and (slices.edges[0], slices.edges[-1]) == (
        min(series.values()), max(series.values()))


def test_spark_runs_the_same_aggregations(spark, damaged_outputs, duckdb_tables) -> None:  # noqa: ANN001
    _, by_duckdb = duckdb_tables
    data = inputs.open_inputs(*damaged_outputs, spark=spark)
    try:
        by_spark = _all_tables(data)
    finally:
        data.close()
    for name, want in by_duckdb.items():
        got = by_spark[name]
        if isinstance(want, pd.DataFrame):
            pd.testing.assert_frame_equal(got, want, check_dtype=False, check_index_type=False, obj=name)
        elif isinstance(want, dict):  # histograms
            assert got == want, name
        else:
            assert got == want, name
