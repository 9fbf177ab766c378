"""The manifest-analysis notebook: its helpers on hand-made data, and a headless run on the sample delivery."""

from __future__ import annotations

import base64
import importlib.util
import math
import os
from collections import Counter
from html.parser import HTMLParser

import nbformat
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dicom_reassembly.errors import ConfigError, NotFoundError
from dicom_reassembly.estimate import analysis, charts, inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "manifest_analysis.ipynb")
HEADINGS = ("Manifest analysis", "Overview", "Archives and members per archive", "Size distributions",
            "Orphans, duplicates and damaged archives", "Outcomes per status", "Modality, study date and patient age",
            "Estimated cost of a full run")
FIGURES = 5  # members per archive, sizes, statuses, demographics, cost


def _runner():  # noqa: ANN202 - a module loaded from its path
    spec = importlib.util.spec_from_file_location("run_notebook", os.path.join(ROOT, "notebooks", "run_notebook.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(("value", "years"), [
    ("030Y", 30.0), ("006M", 0.5), ("052W", 52 * 7 / 365.25), ("010D", 10 / 365.25), ("089y", 89.0), (" 045Y ", 45.0),
])
def test_parse_age_reads_as_values_in_years(value: str, years: float) -> None:
    assert analysis.parse_age(value) == pytest.approx(years)


@pytest.mark.parametrize("value", [None, "", "30", "Y", "030X", "1234Y", "thirty", 30])
def test_parse_age_rejects_what_is_not_an_as_value(value: object) -> None:
    assert math.isnan(analysis.parse_age(value))


def _manifest_table(rows: list[dict]) -> pa.Table:
    names = ["archive_uri", "archive_role", "archive_size", "index_run", "member_name", "size", "kind",
             "sop_instance_uid", "error", "error_detail", "header_json", "modality", "study_date", "patient_age"]
    types = {"archive_size": pa.int64(), "size": pa.int64()}
    return pa.table({n: pa.array([r.get(n) for r in rows], types.get(n, pa.string())) for n in names})


def test_read_manifest_frame_keeps_the_newest_run_and_never_reads_the_header_json(tmp_path) -> None:  # noqa: ANN001
    old = [{"archive_uri": "s3://b/d/text/t.tar", "archive_role": "text", "archive_size": 10, "index_run": "20240101",
            "kind": "archive", "error": "not_restored"}]
    new = [{"archive_uri": "s3://b/d/text/t.tar", "archive_role": "text", "archive_size": 10, "index_run": "20250101",
            "kind": "archive"},
           {"archive_uri": "s3://b/d/text/t.tar", "archive_role": "text", "archive_size": 10, "index_run": "20250101",
            "kind": "header", "member_name": "1.2.json", "size": 7, "sop_instance_uid": "1.2",
            "header_json": "{}", "modality": "CT", "patient_age": "030Y"}]
    pq.write_table(_manifest_table(old), tmp_path / "part-0.parquet")
    pq.write_table(_manifest_table(new), tmp_path / "part-1.parquet")
    df = inputs.read_manifest_frame(str(tmp_path))
    assert "header_json" not in df.columns
    assert set(df["index_run"]) == {"20250101"}
    assert sorted(df["kind"]) == ["archive", "header"]
    assert df["error"].isna().all()  # the old run's not_restored no longer applies


def test_read_manifest_frame_decides_the_newest_run_by_each_archives_own_archive_rows(tmp_path) -> None:  # noqa: ANN001
    rows = [("a", "1", "archive", None), ("a", "1", "pixels", "old.j2c"),
            ("a", "2", "archive", None), ("a", "2", "pixels", "new.j2c"),
            ("b", "1", "archive", None), ("b", "1", "header", "h.json"),
            ("b", "3", "header", "stray.json")]  # a partial run that never wrote b's archive row does not count
    table = _manifest_table([{"archive_uri": a, "index_run": r, "kind": k, "member_name": m} for a, r, k, m in rows])
    pq.write_table(table, tmp_path / "part-0.parquet")
    got = inputs.read_manifest_frame(str(tmp_path))
    assert sorted(zip(got["archive_uri"], got["index_run"], got["member_name"].fillna("-"))) == [
        ("a", "2", "-"), ("a", "2", "new.j2c"), ("b", "1", "-"), ("b", "1", "h.json")]


def test_read_manifest_frame_says_where_no_manifest_is(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(NotFoundError) as err:
        inputs.read_manifest_frame(str(tmp_path / "nothing"))
    assert err.value.reason == "manifest_not_found" and "make demo" in str(err.value)


def _write_ledger(path: str, rows: list[tuple[str, str, str]]) -> None:
    table = pa.table({"run_id": [r[0] for r in rows], "sop_instance_uid": [r[1] for r in rows],
                      "status": [r[2] for r in rows], "reason": [None] * len(rows),
                      "header_archive": ["t"] * len(rows), "header_member": ["m"] * len(rows),
                      "pixel_archive": ["i"] * len(rows), "pixel_member": ["p"] * len(rows),
                      "output_bytes": pa.array([1] * len(rows), pa.int64())})
    pq.write_to_dataset(table, path, partition_cols=["run_id"])


def test_read_ledger_frame_takes_the_newest_run_unless_told(tmp_path) -> None:  # noqa: ANN001
    ledger = str(tmp_path / "ledger")
    _write_ledger(ledger, [("20250101T000000Z-a", "1", "written"), ("20250101T000000Z-a", "2", "orphan_header"),
                           ("20250202T000000Z-b", "1", "skipped_existing")])
    assert inputs.ledger_runs(ledger) == ["20250101T000000Z-a", "20250202T000000Z-b"]
    df, run = inputs.read_ledger_frame(ledger)
    assert run == "20250202T000000Z-b"
    assert list(df["status"]) == ["skipped_existing"]
    df, run = inputs.read_ledger_frame(ledger, "20250101T000000Z-a")
    assert sorted(df["status"]) == ["orphan_header", "written"]
    with pytest.raises(ConfigError):
        inputs.read_ledger_frame(ledger, "no-such-run")


def test_all_digit_run_ids_stay_strings(tmp_path) -> None:  # noqa: ANN001
    ledger = str(tmp_path / "ledger")
    _write_ledger(ledger, [("20250101", "1", "written"), ("20250102", "1", "skipped_existing")])
    df, run = inputs.read_ledger_frame(ledger)
    assert run == "20250102" and list(df["status"]) == ["skipped_existing"]
    assert list(inputs.read_ledger_frame(ledger, "20250101")[0]["status"]) == ["written"]


def test_no_ledger_yet_gives_an_empty_run(tmp_path) -> None:  # noqa: ANN001
    df, run = inputs.read_ledger_frame(str(tmp_path / "ledger"))
    assert run is None and len(df) == 0
    assert len(analysis.status_counts(df)) == 0 and len(analysis.orphans(df)) == 0


def _put_parquet(s3, bucket: str, key: str, table: pa.Table) -> None:  # noqa: ANN001
    import io

    buf = io.BytesIO()
    pq.write_table(table, buf)
    s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())


def test_read_inputs_from_s3(s3) -> None:  # noqa: ANN001
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
    data = inputs.read_inputs("s3://work/manifest", "s3://work/ledger")
    assert data.run_id == "20250303T000000Z-c" and data.runs == ["20250101T000000Z-a", "20250303T000000Z-c"]
    assert data.prefix == "s3://in/d/images/"
    assert list(analysis.orphans(data.ledger)["archive"]) == ["i.tar"]
    assert analysis.overview(data).loc["pixel members", "value"] == 1


def test_resolve_input_takes_relative_paths_from_the_root() -> None:
    assert inputs.resolve_input(None, "out/demo/manifest", "/repo") == "/repo/out/demo/manifest"
    assert inputs.resolve_input("  ", "out/x", "/repo") == "/repo/out/x"
    assert inputs.resolve_input("m", "out/x", "/repo") == "/repo/m"
    assert inputs.resolve_input("/abs/m", "out/x", "/repo") == "/abs/m"
    assert inputs.resolve_input("s3://b/m", "out/x", "/repo") == "s3://b/m"


def _ledger(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{c: r.get(c) for c in inputs.LEDGER_COLUMNS} for r in rows])


def test_status_and_reason_counts() -> None:
    led = _ledger([{"status": "written"}] * 3 + [
        {"status": "invalid_header", "reason": "malformed_json: line 1"},
        {"status": "invalid_header", "reason": "malformed_json: line 9"},
        {"status": "orphan_pixels", "reason": "no header member for this UID"}])
    counts = analysis.status_counts(led)
    assert list(counts.index) == ["written", "orphan_pixels", "invalid_header"]  # the ledger's status order
    assert list(counts["rows"]) == [3, 1, 2]
    assert counts["share"].sum() == pytest.approx(1.0)
    reasons = analysis.reason_counts(led)["rows"].to_dict()
    assert reasons == {("invalid_header", "malformed_json"): 2, ("orphan_pixels", ""): 1}


def test_orphans_duplicates_and_damaged_archives() -> None:
    led = _ledger([
        {"status": "orphan_header", "sop_instance_uid": "1", "header_archive": "t.tar", "header_member": "1.json"},
        {"status": "orphan_pixels", "sop_instance_uid": "2", "pixel_archive": "i.tar", "pixel_member": "2.j2c"},
        {"status": "duplicate", "sop_instance_uid": "3", "pixel_archive": "j.tar", "pixel_member": "3.j2c"},
        {"status": "unreadable_archive", "pixel_archive": "bad.tar", "reason": "not_a_tar: x"},
        {"status": "unreadable_archive", "sop_instance_uid": "4", "header_archive": "t.tar", "header_member": "4.json",
         "pixel_archive": "bad.tar", "pixel_member": "4.j2c"},
        {"status": "written", "sop_instance_uid": "5"},
    ])
    orph = analysis.orphans(led)
    assert list(zip(orph["status"], orph["archive"], orph["member"])) == [
        ("orphan_header", "t.tar", "1.json"), ("orphan_pixels", "i.tar", "2.j2c")]
    assert list(analysis.duplicates(led)["sop_instance_uid"]) == ["3"]
    manifest = pd.DataFrame([
        {"archive_uri": "bad.tar", "archive_role": "images", "archive_size": 5, "kind": "archive",
         "error": "not_a_tar", "error_detail": "x"},
        {"archive_uri": "i.tar", "archive_role": "images", "archive_size": 9, "kind": "archive", "error": None},
    ])
    damaged = analysis.damaged_archives(manifest, led)
    assert list(damaged.index) == ["bad.tar"]
    assert damaged.loc["bad.tar", "ledger_rows"] == 2
    assert damaged.loc["bad.tar", "ledger_status"] == "unreadable_archive"


def _members(rows: list[tuple]) -> pd.DataFrame:
    cols = ["archive_uri", "kind", "sop_instance_uid", "modality", "study_date", "patient_age"]
    return pd.DataFrame(rows, columns=cols)


def test_member_pairing_finds_orphans_and_copies_before_any_run() -> None:
    m = _members([("t", "header", "1", None, None, None), ("i", "pixels", "1", None, None, None),
                  ("t", "header", "2", None, None, None),
                  ("i", "pixels", "3", None, None, None), ("j", "pixels", "3", None, None, None)])
    got = analysis.member_pairing(m)["uids"].to_dict()
    assert got == {"header and pixels, one each": 1, "header only (orphan)": 1, "pixels only (orphan)": 1,
                   "several headers": 0, "several pixel members": 1}


def test_demographics_count_each_instance_once() -> None:
    m = _members([
        ("t", "header", "1", "CT", "20190105", "030Y"),
        ("u", "header", "1", "CT", "20190105", "030Y"),  # a second copy of the same instance
        ("t", "header", "2", "MR", "2019.11.30", "006M"),
        ("t", "header", "3", None, "2021-01-01", "45"),
        ("i", "pixels", "1", None, None, None),
    ])
    assert analysis.modality_counts(m)["instances"].to_dict() == {"CT": 1, "MR": 1, analysis.MISSING: 1}
    assert analysis.study_date_counts(m)["instances"].to_dict() == {"2019": 2, analysis.MISSING: 1}
    assert analysis.study_date_counts(m, "month")["instances"].to_dict() == {
        "2019-01": 1, "2019-11": 1, analysis.MISSING: 1}
    ages = analysis.age_distribution(m)["instances"].to_dict()
    assert ages == {"0-9": 1, "10-19": 0, "20-29": 0, "30-39": 1, analysis.MISSING: 1}
    with pytest.raises(ConfigError):
        analysis.study_date_counts(m, "week")


def test_archives_table_counts_members_by_kind() -> None:
    m = pd.DataFrame([
        {"archive_uri": "t.tar", "archive_role": "text", "archive_size": 100, "index_run": "1", "kind": "archive"},
        {"archive_uri": "t.tar", "kind": "header"}, {"archive_uri": "t.tar", "kind": "header"},
        {"archive_uri": "t.tar", "kind": "other"},
        {"archive_uri": "e.tar", "archive_role": "images", "archive_size": 0, "index_run": "1", "kind": "archive",
         "error": "empty_archive"},
    ])
    table = analysis.archives_table(m)
    assert table.loc["t.tar", ["header", "pixels", "other", "members"]].tolist() == [2, 0, 1, 3]
    assert table.loc["e.tar", "members"] == 0 and table.loc["e.tar", "error"] == "empty_archive"
    by_role = analysis.members_by_role(table)
    assert by_role.loc["text", "members"] == 3 and by_role.loc["images", "archives"] == 1


def test_builtin_html_renders_markdown_tables_and_images() -> None:
    runner = _runner()
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Title <x>\n\nSome `code` and **bold**.\n\n- one\n- two"),
        nbformat.v4.new_code_cell("x", outputs=[
            nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"}),
            nbformat.v4.new_output("execute_result", data={"text/html": "<table><tr><td>7</td></tr></table>",
                                                           "text/plain": "7"}, execution_count=1),
            nbformat.v4.new_output("stream", name="stderr", text="careful <b>\n")]),
    ])
    page = runner.builtin_html(nb, "t")
    assert "<h1>Title &lt;x&gt;</h1>" in page
    assert "<code>code</code>" in page and "<strong>bold</strong>" in page
    assert "<ul><li>one</li><li>two</li></ul>" in page
    assert f'<img src="data:image/png;base64,{png}"' in page
    assert "<td>7</td>" in page
    assert "careful &lt;b&gt;" in page


def test_size_histograms_have_tick_labels_that_do_not_run_into_each_other() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    archives = [("text", 51_200), ("text", 61_440), ("text", 92_160), ("images", 61_440), ("images", 409_600),
                ("images", 819_200)]
    rows = [{"archive_uri": f"a{i}.tar", "archive_role": role, "archive_size": size, "kind": "archive", "size": size}
            for i, (role, size) in enumerate(archives)]
    rows += [{"archive_uri": "a0.tar", "archive_role": "text", "archive_size": 0, "kind": "header", "size": 1000 + 450 * i}
             for i in range(30)]
    rows += [{"archive_uri": "a3.tar", "archive_role": "images", "archive_size": 0, "kind": "pixels", "size": 200 * 2 ** i}
             for i in range(12)]
    fig = charts.plot_size_distributions(pd.DataFrame(rows))
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    for ax in fig.axes:
        boxes = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()), key=lambda b: b.x0)
        assert len(boxes) >= 3, ax.get_title()
        overlaps = [(a.x1, b.x0) for a, b in zip(boxes, boxes[1:]) if a.x1 > b.x0]
        assert not overlaps, f"{ax.get_title()}: {[t.get_text() for t in ax.get_xticklabels()]}"


def test_the_kernel_talks_to_the_runner_over_unix_sockets_not_tcp(tmp_path, capfd) -> None:  # noqa: ANN001
    cell = "from ipykernel.kernelapp import IPKernelApp\napp = IPKernelApp.instance()\nprint(app.transport, app.ip)"
    path = str(tmp_path / "kernel.ipynb")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)]), path)
    nb, error = _runner().execute_notebook(path)
    assert error is None, error
    transport, ip = nb.cells[0].outputs[0].text.split()
    assert transport == "ipc"
    assert not os.path.exists(os.path.dirname(ip))  # the sockets' private folder is removed afterwards
    assert "without encryption" not in capfd.readouterr().err


# ------------------------------------------------------------------------------- the notebook, end to end


class _Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:  # noqa: ARG002
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _table(tables: list[list[list[str]]], index_name: str) -> dict[str, str]:
    """The first column -> second column of the table whose index is named ``index_name``."""
    for rows in tables:
        names = [i for i, r in enumerate(rows) if r and r[0] == index_name and not any(r[1:])]
        if names:
            return {r[0]: r[1] for r in rows[names[0] + 1:] if len(r) >= 2}
    raise AssertionError(f"no table indexed by {index_name!r}")


@pytest.fixture(scope="module")
def sample_outputs(spark, sample_delivery, tmp_path_factory):  # noqa: ANN001, ANN201
    """A manifest and a ledger for the sample delivery, built the way the jobs build them."""
    from helpers import build_manifest

    from dicom_reassembly.config import Config
    from dicom_reassembly.reassembly.run import ReassembleRun

    root, expected = sample_delivery
    base = str(tmp_path_factory.mktemp("notebook"))
    manifest_uri, ledger_uri = os.path.join(base, "manifest"), os.path.join(base, "ledger")
    build_manifest(spark, os.path.join(root, "text"), os.path.join(root, "images"), manifest_uri)
    summary = ReassembleRun(spark=spark, manifest_uri=manifest_uri, out=os.path.join(base, "dcm"),
                            ledger_uri=ledger_uri, runs_uri=os.path.join(base, "runs"),
                            computations_uri=os.path.join(base, "computations"),
                            cfg=Config(upload_threads=2, computations=()), argv=["--manifest", "m"]).execute()
    return root, expected, base, manifest_uri, ledger_uri, summary


@pytest.mark.spark
def test_notebook_runs_headless_and_shows_the_sample_numbers(sample_outputs) -> None:  # noqa: ANN001
    root, expected, base, manifest_uri, ledger_uri, summary = sample_outputs
    html_path = os.path.join(base, "html", "manifest_analysis.html")
    nb, error = _runner().run_notebook(NOTEBOOK, html_path, env={"MANIFEST": manifest_uri, "LEDGER": ledger_uri})
    assert error is None, error
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    with open(html_path, encoding="utf-8") as f:
        page = f.read()
    for heading in HEADINGS:
        assert f">{heading}<" in page or f">{heading}\n" in page, heading
    assert page.count('src="data:image/png;base64,') >= FIGURES

    parser = _Tables()
    parser.feed(page)
    overview = _table(parser.tables, "metric")
    tars = {d: [f for f in os.listdir(os.path.join(root, d)) if f.endswith(".tar")] for d in ("text", "images")}
    assert int(overview["archives"]) == len(tars["text"]) + len(tars["images"])
    assert int(overview["text archives"]) == len(tars["text"])
    assert int(overview["image archives"]) == len(tars["images"])
    assert int(overview["archive bytes"]) == sum(os.path.getsize(os.path.join(root, d, f))
                                                 for d, names in tars.items() for f in names)
    assert int(overview["instances (distinct header UIDs)"]) == len(expected["instances"])
    assert overview["ledger run shown"] == summary["run_id"]

    statuses = {k: int(v) for k, v in _table(parser.tables, "status").items()}
    assert statuses == dict(Counter(i["status"] for i in expected["instances"].values()))
    modalities = {k: int(v) for k, v in _table(parser.tables, "modality").items()}
    assert modalities == dict(Counter(i["modality"] for i in expected["instances"].values()))
    years = {k: int(v) for k, v in _table(parser.tables, "year").items()}
    assert years == dict(Counter(i["study_date"][:4] for i in expected["instances"].values()))
    estimate = _table(parser.tables, "estimate")
    assert int(estimate["instances"]) == len(expected["instances"])
