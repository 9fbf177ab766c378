"""The manifest-analysis notebook: its runner, a headless run on the sample delivery, and its kernel's memory on a
10^5-instance manifest against the sample's (its tables and charts are tested in test_analysis.py)."""

from __future__ import annotations

import base64
import importlib.util
import os
from collections import Counter
from html.parser import HTMLParser

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "manifest_analysis.ipynb")
HEADINGS = ("Manifest analysis", "Overview", "Archives and members per archive", "Size distributions",
            "Orphans, duplicates and damaged archives", "Outcomes per status", "Modality, study date and patient age",
            "Catalogue: what was written", "Estimated cost of a full run")
FIGURES = 7  # members per archive, sizes, statuses, demographics, modality and year, series, cost
CATALOG_FIGURES = 2
LARGE = 100_000  # instances of the generated manifest the kernel's memory is measured on


def _runner():  # noqa: ANN202 - a module loaded from its path
    spec = importlib.util.spec_from_file_location("run_notebook", os.path.join(ROOT, "notebooks", "run_notebook.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ runner


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


def test_the_kernel_memory_peak_is_read_from_outside_and_misses_no_spike(tmp_path) -> None:  # noqa: ANN001
    cells = ["import numpy as np", "x = np.ones(400 * 2**20 // 8); del x",  # 400 MiB touched, then freed
             "y = 1"]
    path = str(tmp_path / "spike.ipynb")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]), path)
    nb, error = _runner().execute_notebook(path)
    assert error is None, error
    memory = nb.metadata["kernel_memory"]
    first, spike, last = memory["by_cell"]
    assert [first["cell"], spike["cell"], last["cell"]] == [0, 1, 2]
    assert spike["peak_rss_bytes"] - first["peak_rss_bytes"] >= 390 * 2**20
    assert last["rss_bytes"] < spike["peak_rss_bytes"] - 300 * 2**20  # freed, yet the peak remembers it
    assert memory["peak_rss_bytes"] == last["peak_rss_bytes"] >= spike["peak_rss_bytes"]
    assert not any(c.get("source", "").count("VmHWM") for c in nb.cells)  # nothing was added to the notebook


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


def _pivot(tables: list[list[list[str]]], columns_name: str) -> dict[str, dict[str, str]]:
    """{row label: {column: cell}} of the table whose header row starts with ``columns_name`` (a pivot table)."""
    for rows in tables:
        if rows and rows[0] and rows[0][0] == columns_name:
            header = rows[0]
            return {r[0]: dict(zip(header[1:], r[1:])) for r in rows[2:] if r}
    raise AssertionError(f"no table with columns named {columns_name!r}")


@pytest.fixture(scope="module")
def sample_outputs(spark, sample_delivery, tmp_path_factory):  # noqa: ANN001, ANN201
    """A manifest, a ledger and a catalogue for the sample delivery, built the way the jobs build them."""
    from helpers import build_manifest, write_catalog_like_reassemble

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
    catalog_uri = os.path.join(base, "catalog")
    write_catalog_like_reassemble(manifest_uri, ledger_uri, catalog_uri)
    return root, expected, base, manifest_uri, ledger_uri, catalog_uri, summary


def _run(base: str, name: str, env: dict[str, str]) -> tuple[nbformat.NotebookNode, str]:
    """The notebook run headless with ``env``; the executed notebook and its HTML page."""
    html_path = os.path.join(base, "html", f"{name}.html")
    nb, error = _runner().run_notebook(NOTEBOOK, html_path, env=env)
    assert error is None, error
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    with open(html_path, encoding="utf-8") as f:
        return nb, f.read()


@pytest.fixture(scope="module")
def sample_run(sample_outputs):  # noqa: ANN001, ANN201
    """The notebook on the sample, catalogue included: (executed notebook, HTML page)."""
    _, _, base, manifest_uri, ledger_uri, catalog_uri, _ = sample_outputs
    return _run(base, "sample", {"MANIFEST": manifest_uri, "LEDGER": ledger_uri, "CATALOG": catalog_uri})


def test_notebook_runs_headless_and_shows_the_sample_numbers(sample_outputs, sample_run) -> None:  # noqa: ANN001
    root, expected, _, _, _, _, summary = sample_outputs
    _, page = sample_run
    for heading in HEADINGS:
        assert f">{heading}<" in page or f">{heading}\n" in page, heading
    assert page.count('src="data:image/png;base64,') == FIGURES

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

    instances = expected["instances"].values()
    statuses = {k: int(v) for k, v in _table(parser.tables, "status").items()}
    assert statuses == dict(Counter(i["status"] for i in instances))
    modalities = {k: int(v) for k, v in _table(parser.tables, "modality").items()}
    assert modalities == dict(Counter(i["modality"] for i in instances))
    years = {k: int(v) for k, v in _table(parser.tables, "year").items()}
    assert years == dict(Counter(i["study_date"][:4] for i in instances))
    estimate = _table(parser.tables, "estimate")
    assert int(estimate["instances"]) == len(expected["instances"])

    written = [i for i in instances if i["status"] == "written"]
    by_year = _pivot(parser.tables, "study year")
    assert {(m, y): int(n) for m, row in by_year.items() for y, n in row.items() if y != "total" and int(n)} == dict(
        Counter((i["modality"], i["study_date"][:4]) for i in written))
    catalogue = _table(parser.tables, "catalogue")
    assert int(catalogue["instances"]) == len(written)
    assert int(catalogue["series"]) == len({i["series_instance_uid"] for i in written})


def test_without_a_catalogue_the_notebook_says_so_and_skips_its_charts(sample_outputs) -> None:  # noqa: ANN001
    _, _, base, manifest_uri, ledger_uri, _, _ = sample_outputs
    missing = os.path.join(base, "no-catalog")
    _, page = _run(base, "no-catalog", {"MANIFEST": manifest_uri, "LEDGER": ledger_uri, "CATALOG": missing})
    assert f"No catalogue at <code>{missing}</code>" in page
    assert page.count('src="data:image/png;base64,') == FIGURES - CATALOG_FIGURES


def test_kernel_memory_on_a_1e5_instance_manifest_is_within_twice_the_samples(sample_run, tmp_path_factory) -> None:  # noqa: ANN001
    """The notebook's memory must not grow with the manifest: 10^5 instances (1.2 GB of header JSON) against the
    sample's 30. Both peaks are the kernel's VmHWM (see notebooks/run_notebook.py)."""
    from dicom_reassembly.testing.synthetic import write_synthetic_outputs

    base = str(tmp_path_factory.mktemp("large"))
    truth = write_synthetic_outputs(base, LARGE)
    nb, page = _run(base, "large", {"MANIFEST": truth["manifest"], "LEDGER": truth["ledger"],
                                    "CATALOG": truth["catalog"]})
    parser = _Tables()
    parser.feed(page)
    overview = _table(parser.tables, "metric")
    assert int(overview["instances (distinct header UIDs)"]) == LARGE - truth["statuses"]["orphan_pixels"]
    assert int(overview["ledger rows"]) == LARGE
    assert {k: int(v) for k, v in _table(parser.tables, "status").items()} == truth["statuses"]
    by_year = _pivot(parser.tables, "study year")
    assert {m: int(row["total"]) for m, row in by_year.items()} == truth["catalog_modalities"]
    assert page.count('src="data:image/png;base64,') == FIGURES

    sample_peak = sample_run[0].metadata["kernel_memory"]["peak_rss_bytes"]
    large_peak = nb.metadata["kernel_memory"]["peak_rss_bytes"]
    # Linux (CI included) always has /proc/<pid>/status: a missing peak is a fault of the measurement, not a skip.
    assert sample_peak is not None and large_peak is not None, "the kernel's peak memory was not read"
    print(f"kernel peak memory: sample {sample_peak / 2**20:.0f} MiB, {LARGE:,} instances {large_peak / 2**20:.0f} MiB")
    assert large_peak <= 2 * sample_peak, (sample_peak, large_peak)
