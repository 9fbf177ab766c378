"""``cohort``'s SQL agrees with the criteria engine (``Criterion.check``) on the same headers, edge cases included.

Headers are generated: missing elements and values, multi-valued CS (as lists and as backslash-joined text),
AS in every unit and malformed, DA invalid (30 February, month 13, year 0000, ISO dashes, full-width digits),
wrong and missing VRs, lower-case keys, whitespace of every kind. Each header becomes a catalogue row as the
writers make it; every criterion is evaluated both ways, one by one, and must agree on every header.
"""

from __future__ import annotations

import itertools
import json
import os
import random

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicom_reassembly.records import catalog
from dicom_reassembly.records.catalog_query import cohort_sql, open_catalog, run_sql
from dicom_reassembly.selection.criteria import compile_criterion, selectable_values
from dicom_reassembly.selection.sql import criterion_sql

DA_VALUES = ["20220101", "20211231", "20220102", "20220230", "20221301", "00000101", "2022-01-01", "2022010",
             " 20220101 ", "\t20220101\n", "20240229", "20230229", "19000228", "99991231", "２０２２０１０１",
             "20220101\\20100101", "2022.01.01", "", " "]
AS_VALUES = ["030Y", "30Y", "360M", "0030Y", "030y", "001D", "052W", "029Y", "031Y", "030Y\\010Y", "", "Y", "5D",
             " 030Y ", "999Y", "030 Y", "３０Y"]
CS_VALUES = ["CT", "MR", " CT ", "ct", "CT\\MR", "OT", "", "X'Y", "ORIGINAL", "AXIAL", "\u00a0CT", "CT\u2003"]
TAGS = {"00080060": "CS", "00080008": "CS", "00100040": "CS", "00080020": "DA", "00101010": "AS", "00180015": "CS"}
VALUES = {"CS": CS_VALUES, "DA": DA_VALUES, "AS": AS_VALUES}

CRITERIA = [
    *({"dicom_tag": "Modality", "operation": op, "reference": ref} for op, ref in
      [("EQUALS", "CT"), ("IN", ["CT", "MR"]), ("EQUALS", "X'Y"), ("IN", ["ct"])]),
    {"dicom_tag": "ImageType", "operation": "IN", "reference": ["AXIAL"]},
    {"dicom_tag": "PatientSex", "operation": "EQUALS", "reference": "CT"},
    {"dicom_tag": "BodyPartExamined", "operation": "IN", "reference": ["OT", "MR"]},
    *({"dicom_tag": ["0008", "0020"], "operation": op, "reference": ref} for op, ref in
      [("GREATER", "2022-01-01"), ("LESS", "2022-01-01"), ("EQUALS", "2022-01-01"), ("IN", ["2024-02-29", "1900-02-28"]),
       ("GREATER", "1899-12-31"), ("LESS", "9999-12-31")]),
    *({"dicom_tag": "PatientAge", "operation": op, "reference": ref} for op, ref in
      [("GREATER", "029Y"), ("LESS", "360M"), ("EQUALS", "030Y"), ("IN", ["001D", "052W"]), ("EQUALS", "360M"),
       ("LESS", "001W"), ("GREATER", "998Y")]),
]
COMPILED = [compile_criterion(i, c) for i, c in enumerate(CRITERIA)]


def _element(vr: str | None, values: object) -> dict:
    elem: dict = {} if vr is None else {"vr": vr}
    if values is not None:
        elem["Value"] = values
    return elem


def edge_headers() -> list[dict]:
    """Every value alone, as a list, as a bare string, and in the odd shapes a partner's JSON takes."""
    headers: list[dict] = [{}]
    for tag, vr in TAGS.items():
        for v in VALUES[vr]:
            headers += [{tag: _element(vr, [v])}, {tag: _element(vr, v)}, {tag.lower(): _element(vr, [v])},
                        {tag: _element(None, [v])}]
        headers += [{tag: _element(vr, None)}, {tag: _element(vr, [])}, {tag: _element(vr, [None])},
                    {tag: _element(vr, [5])}, {tag: _element("LO", ["CT"])}, {tag: _element("DA", ["20220101"])},
                    {tag: ["not", "an", "element"]}, {tag: None, tag.lower(): _element(vr, [VALUES[vr][0]])},
                    {tag: _element(vr, VALUES[vr][:3])}, {tag: _element(vr, [None, VALUES[vr][1]])}]
    rng = random.Random(20)
    for _ in range(300):  # mixtures: several tags, several values each
        header = {}
        for tag, vr in TAGS.items():
            if rng.random() < 0.7:
                header[tag] = _element(vr, rng.sample(VALUES[vr], rng.randint(0, 3)))
        headers.append(header)
    return headers


def _sql_results(headers: list[dict]) -> list[list[bool]]:
    """Each criterion's SQL on each header's catalogue value, in DuckDB (one row per header)."""
    table = pa.table({"i": list(range(len(headers))),
                      "criteria_values": pa.array([selectable_values(h) for h in headers],
                                                  catalog.arrow_schema().field("criteria_values").type)})
    con = duckdb.connect()
    con.register("t", table)
    select = ", ".join(criterion_sql(c) for c in COMPILED)
    return [list(r[1:]) for r in con.execute(f"SELECT i, {select} FROM t ORDER BY i").fetchall()]


def _disagreements(headers: list[dict]) -> list[tuple]:
    bad = []
    for header, got in zip(headers, _sql_results(headers)):
        for c, sql_says in zip(COMPILED, got):
            engine_says = c.check(header) is None
            if engine_says != sql_says:
                bad.append((c.label, c.operation, c.reference, json.dumps(header), engine_says, sql_says))
    return bad


def test_sql_and_engine_agree_on_every_edge_case() -> None:
    headers = edge_headers()
    assert not _disagreements(headers)[:5]
    # Each criterion both holds and fails somewhere: neither side is trivially constant.
    results = _sql_results(headers)
    for i, c in enumerate(COMPILED):
        if c.reference not in ("X'Y", ("ct",)):
            assert {r[i] for r in results} == {True, False}, c


_VR = st.sampled_from(["CS", "DA", "AS", "LO", None])
_TEXT = st.one_of(st.sampled_from(DA_VALUES + AS_VALUES + CS_VALUES), st.text(max_size=12),
                  st.from_regex(r"\s*[0-9]{1,9}[DWMY]?\s*", fullmatch=True))
_VALUE = st.one_of(st.none(), _TEXT, st.lists(st.one_of(_TEXT, st.none(), st.integers()), max_size=4))
_HEADER = st.dictionaries(st.sampled_from([*TAGS, *(t.lower() for t in TAGS)]),
                          st.builds(_element, _VR, _VALUE), max_size=6)


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_HEADER, min_size=1, max_size=20))
def test_sql_and_engine_agree_on_generated_headers(headers: list[dict]) -> None:
    assert not _disagreements(headers)


def test_rows_from_a_dataset_select_as_rows_from_its_json() -> None:
    """The intake builds rows from a pydicom Dataset: the criteria must see the same values as from JSON."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"):
        ds = dcmread(get_testdata_file(name))
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        from_dataset = catalog.attributes_from_dataset(ds)["criteria_values"]
        from_json = catalog.attributes_from_json(ds.to_json_dict())["criteria_values"]
        assert from_dataset == from_json and from_json["00080008"] == ["ORIGINAL", "PRIMARY", "AXIAL"]


@pytest.fixture(scope="module")
def edge_catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict]]:
    """The edge-case headers as a catalogue on disk, written as the intake writes it (several partitions)."""
    uri = str(tmp_path_factory.mktemp("edge") / "catalog")
    headers = edge_headers()
    rows = []
    for i, header in enumerate(headers):
        uid = f"2.25.{i + 1}"
        attrs = catalog.attributes_from_json({**header, "00080018": {"vr": "UI", "Value": [uid]}})
        rows.append(catalog.build_catalog_row(attrs, transfer_syntax=None, output_uri=f"/o/{uid}.dcm", output_bytes=i,
                                              output_checksum=None, run_id="r", status="written"))
    for chunk in itertools.batched(rows, 97) if hasattr(itertools, "batched") else [rows]:
        catalog.write_catalog_rows(uri, chunk)
    return uri, headers


def test_cohort_over_the_catalogue_files_is_the_engine_on_the_headers(edge_catalog) -> None:  # noqa: ANN001
    uri, headers = edge_catalog
    con = open_catalog(uri)
    pairs = [(COMPILED[7], COMPILED[15]), (COMPILED[1],), (COMPILED[11], COMPILED[0]), ()]
    for criteria in pairs:
        got = [r[0] for r in run_sql(con, cohort_sql(criteria)).fetchall()]
        want = [f"2.25.{i + 1}" for i, h in enumerate(headers) if all(c.check(h) is None for c in criteria)]
        assert sorted(got) == sorted(want) and len(got) == len(set(got))
        assert len(want) > 0 or criteria == ()
    where = run_sql(con, cohort_sql([COMPILED[1]], "output_bytes < 100")).fetchall()
    assert {r[0] for r in where} == {f"2.25.{i + 1}" for i, h in enumerate(headers)
                                     if i < 100 and COMPILED[1].check(h) is None}


def test_a_catalogue_without_criteria_values_selects_nothing_rather_than_failing(tmp_path) -> None:  # noqa: ANN001
    """Rows written before the column existed: the criteria cannot be read there, so they do not hold."""
    row = catalog.build_catalog_row({"sop_instance_uid": "2.25.1", "modality": "CT"}, transfer_syntax=None,
                                    output_uri=None, output_bytes=None, output_checksum=None, run_id="r", status="written")
    schema = pa.schema([f for f in catalog.arrow_schema() if f.name != "criteria_values"])
    folder = tmp_path / "catalog" / "modality=CT" / "study_year=__HIVE_DEFAULT_PARTITION__"
    os.makedirs(folder)
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{n: row[n] for n in schema.names if n not in catalog.PARTITION_COLUMNS}],
                                        schema=pa.schema([f for f in schema if f.name not in catalog.PARTITION_COLUMNS])),
                   str(folder / "old.parquet"))
    con = open_catalog(str(tmp_path / "catalog"))
    assert run_sql(con, cohort_sql([COMPILED[0]])).fetchall() == []
    assert run_sql(con, "SELECT count(*) FROM catalog WHERE modality = 'CT'").fetchone() == (1,)
