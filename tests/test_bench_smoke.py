"""Smoke test of the benchmark harness (bench/): its delivery generator and its report writer, without Spark.

The benchmark itself runs with ``make bench``, outside the test suite; nothing here looks at a timing.
"""

from __future__ import annotations

import json
import os
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import ROOT, require_tool
from pydicom.dataset import Dataset

sys.path.insert(0, ROOT)  # bench/ is a package at the repository root, not an installed one

from bench.delivery import DeliveryParams, write_delivery  # noqa: E402
from bench.measure import measure_hot_path_streams, measure_naive, measure_tar_x  # noqa: E402
from bench.report import write_report  # noqa: E402

SOC_SIZ = b"\xff\x4f\xff\x51"


def _members(root: str, role: str) -> dict[str, dict[str, bytes]]:
    """{archive: {member name: bytes}} read back with Python's tarfile, an independent reader."""
    out = {}
    for name in sorted(os.listdir(os.path.join(root, role))):
        with tarfile.open(os.path.join(root, role, name), "r:") as tf:
            members = {}
            for m in tf.getmembers():
                assert m.isfile(), f"{name}: {m.name} is not a regular file"
                f = tf.extractfile(m)
                assert f is not None
                members[m.name] = f.read()
            out[f"{role}/{name}"] = members
    return out


def test_bench_delivery_is_split_and_shuffled_and_its_report_is_written(tmp_path) -> None:  # noqa: ANN001
    root = str(tmp_path / "delivery")
    index = write_delivery(root, DeliveryParams(instances=6, per_archive=3, pool=1, seed=7))
    text, images = _members(root, "text"), _members(root, "images")
    assert len(text) == len(images) == 2
    # Headers and pixels live in different archives: header archives hold only .json, pixel archives only .j2c.
    assert all(n.endswith(".json") for m in text.values() for n in m)
    assert all(n.endswith(".j2c") for m in images.values() for n in m)
    header_sets = {frozenset(n[:-5] for n in m) for m in text.values()}
    pixel_sets = {frozenset(n[:-4] for n in m) for m in images.values()}
    uids = {i["uid"] for i in index["instances"]}
    assert set().union(*header_sets) == set().union(*pixel_sets) == uids and len(uids) == 6
    assert header_sets != pixel_sets, "instances must be dealt to header and pixel archives by separate shuffles"
    kinds = set()
    for inst in index["instances"]:
        header = text[inst["header_archive"]][inst["header_member"]]
        pixels = images[inst["pixel_archive"]][inst["pixel_member"]]
        assert 5000 <= len(header) <= 20 * 1024
        ds = Dataset.from_json(header.decode("utf-8"))
        assert ds.SOPInstanceUID == inst["uid"] and ds.Modality == inst["modality"]
        assert (ds.Rows, ds.Columns, ds.BitsAllocated) == (512, 512, 16)
        if inst["pixel_kind"] == "native":
            assert len(pixels) == 512 * 512 * 2
        else:
            assert pixels.startswith(SOC_SIZ)
        kinds.add(inst["pixel_kind"])
        # The index's offsets are where the member's bytes really are.
        with open(os.path.join(root, inst["pixel_archive"]), "rb") as f:
            f.seek(inst["pixel_offset"])
            assert f.read(inst["pixel_size"]) == pixels
    assert kinds == {"native", "j2k"}

    require_tool("tar")
    archives = [os.path.join(root, a) for a in sorted(text) + sorted(images)]
    results = {
        "parameters": {"mode": "smoke", "cores": 2, "instances": 6},
        "delivery": {"totals": index["totals"]},
        "tar_x": measure_tar_x(archives, str(tmp_path / "tar-x")),
        "tar_x_streams": measure_tar_x(archives, str(tmp_path / "tar-x"), streams=2),
        "naive": measure_naive(root, index, 2, str(tmp_path / "naive"), seed=7),
        "hot_path_streams": measure_hot_path_streams(root, index, 6, 2, str(tmp_path / "hps"), repeats=1),
    }
    out = str(tmp_path / "results")
    paths = write_report(results, out)
    report = json.loads(Path(paths["json"]).read_text())
    assert report["tar_x"]["bytes"] == sum(os.path.getsize(a) for a in archives)
    # Two streams extract every archive between them, each member exactly once.
    extracted = sorted(n for _, _, names in os.walk(tmp_path / "tar-x" / "streams-2-run-0") for n in names)
    members = []
    for a in archives:
        with tarfile.open(a) as tf:
            members += tf.getnames()
    assert extracted == sorted(members)
    assert report["tar_x_streams"]["streams"] == 2 and len(report["tar_x_streams"]["runs_s"]) == 3
    # Two whole instances were written: each at least a J2K codestream of a 512x512 slice (about 200 KB).
    assert report["naive"]["sampled"] == 2 and report["naive"]["written_bytes_sampled"] > 2 * 100_000
    assert report["derived"]["reassembly"] == {"per_core_mb_s": None, "basis": "not measured"}
    # The hot path outside Spark wrote every instance of the pixel archives, as Part 10 with its own UID,
    # and tar -x, alternating with it, extracted the same archives' members.
    hps = report["hot_path_streams"]
    assert (hps["instances"], hps["archives"], hps["streams"]) == (6, 2, 2)
    written = {n for n in os.listdir(tmp_path / "hps" / "hot-path-streams-hot_path-1") if not n.startswith(".")}
    assert written == {f"{i['uid']}.dcm" for i in index["instances"]}
    for name in written:
        data = (tmp_path / "hps" / "hot-path-streams-hot_path-1" / name).read_bytes()
        assert data[128:132] == b"DICM" and name[:-4].encode() in data[:1024]
    untarred = sorted(n for _, _, names in os.walk(tmp_path / "hps" / "hot-path-streams-tar_x-0") for n in names)
    assert untarred == sorted(n for a in sorted(images) for n in images[a])
    assert report["derived"]["ratios"]["hot_path_streams_vs_tar_x_per_core"] == hps["ratio_per_core"] > 0
    md = Path(paths["md"]).read_text()
    assert "| hot path in 2 processes, no Spark / tar -x in as many streams, per core (wall) |" in md
    assert "| tar -x |" in md and "| tar -x, 2 streams |" in md and "| read amplification, full selection | not measured |" in md
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_pairing_ratios_span_every_pair_of_runs() -> None:
    from bench.report import MB, _pairing_ratios

    sizes = [{"instances": 1000, "repeats": [{"reassemble": {"wall_s": 10.0}}, {"reassemble": {"wall_s": 12.0}}]},
             {"instances": 2000, "repeats": [{"reassemble": {"wall_s": 14.0}}, {"reassemble": {"wall_s": 20.0}}]}]
    # Slopes per instance: 4, 2, 10 and 8 ms; 1 MB per instance on 2 cores against tar at 100 MB/s.
    got = _pairing_ratios(sizes, bpi=MB, cores=2, tar_mb_s=100.0)
    assert got["pairs"] == 4
    assert got["max"] == pytest.approx(1 / 0.002 / 2 / 100) and got["min"] == pytest.approx(1 / 0.010 / 2 / 100)
    assert got["median"] == pytest.approx((1 / 0.004 + 1 / 0.008) / 2 / 2 / 100)
    assert _pairing_ratios(sizes[:1], bpi=MB, cores=2, tar_mb_s=100.0) is None


def test_report_says_how_much_memory_the_vm_handed_back_to_its_host(tmp_path) -> None:  # noqa: ANN001
    from bench.run import read_free_page_reporting

    counters = tmp_path / "page_reporting"
    counters.mkdir()
    (counters / "page_reporting_order").write_text("9\n")
    (counters / "reported_kib").write_text("1048576\n")
    start = read_free_page_reporting(str(counters))
    assert start == {"page_reporting_order": 9, "reported_kib": 1048576}
    (counters / "reported_kib").write_text(str(1048576 + 5 * 1024 * 1024 // 2) + "\n")
    end = read_free_page_reporting(str(counters))
    assert read_free_page_reporting(str(tmp_path / "absent")) is None

    base = {"parameters": {"mode": "smoke", "cores": 2}}
    reported = write_report({**base, "machine": {"free_page_reporting": start, "free_page_reporting_end": end}},
                            str(tmp_path / "with"))
    assert "(3.50 GB since it started, 2.50 GB during this run)" in Path(reported["md"]).read_text()
    plain = write_report({**base, "machine": {"free_page_reporting": None, "free_page_reporting_end": None}},
                         str(tmp_path / "without"))
    assert "Free page reporting" not in Path(plain["md"]).read_text()


def test_s3_client_cpu_step_measures_the_library_over_https_and_feeds_the_cost_model(tmp_path) -> None:  # noqa: ANN001
    # bench/s3cpu.py on a tiny delivery, without the A/B: moto over HTTPS in its own process, the library's own
    # calls in fresh client processes. Checked: the figures exist, are the cost model's (merged into a report,
    # read_bench_s3_figures takes them), and each came from real S3 traffic (ranged GETs, not whole archives).
    from bench.s3cpu import measure_s3_client_cpu, merge_into
    from dicom_reassembly.estimate.prices import read_bench_s3_figures

    root = str(tmp_path / "delivery")
    index = write_delivery(root, DeliveryParams(instances=10, per_archive=5, pool=1, seed=11))
    res = measure_s3_client_cpu(root, index, str(tmp_path / "work"), log=lambda *_: None, repeats=1, n=5,
                                archives=2, objects=4, ab=False)
    assert "TLS" in res["endpoint"] and res["ab"] == []
    assert res["library_options"] == {"s3": {"payload_signing_enabled": False}}
    inst = res["library"]["instances"][0]
    pixel_bytes = sum(a["size"] for a in index["archives"]["images"][:2])
    # Indexing pixel archives on S3 read tar headers by ranged GETs: one per member (members > 64 KiB) and one for
    # each archive's end, far fewer bytes than the archives hold.
    assert inst["index_images_s3"]["members"] == 10 and inst["index_images_s3"]["gets"] == 10 + 2
    assert 0 < inst["index_images_s3"]["bytes_read"] < pixel_bytes / 10
    assert inst["read_pass_s3"]["bytes"] == pixel_bytes == inst["read_pass_local"]["bytes"]
    assert inst["write_s3"]["instances"] == inst["write_local"]["instances"] == 4
    written = os.listdir(tmp_path / "work" / "s3cpu") if (tmp_path / "work" / "s3cpu").exists() else []
    assert written == []  # the step cleans up after itself
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"derived": {}}))
    (tmp_path / "report.md").write_text("# report\n")
    merge_into(str(report), res)
    figures, where = read_bench_s3_figures(str(report))
    assert all(figures[k] == pytest.approx(res["figures"][k]) and figures[k] > 0 for k in figures)
    assert "s3_client_cpu.figures" in where
    assert "## S3 client CPU" in (tmp_path / "report.md").read_text()


def test_bench_manifest_generator_and_lookup_figures_without_spark(tmp_path) -> None:  # noqa: ANN001
    """The generated manifest (the layout before issue 20) holds each UID's header and pixel rows, and the lookup
    figures find them through the counting filesystem; the report's manifest section renders them."""
    import pyarrow.dataset as pads

    from bench import manifest as bm
    from bench.report import _f, _table

    folder = str(tmp_path / "manifest")
    pool = bm.header_pool(seed=3, size=5)
    uids = bm.write_unclustered_manifest(folder, 120, seed=3, pool=pool)
    table = pads.dataset(folder, format="parquet").to_table(columns=["sop_instance_uid", "kind", "header_json"])
    rows = table.to_pylist()
    assert sorted(r["sop_instance_uid"] for r in rows if r["kind"] == "header") == sorted(uids)
    assert sorted(r["sop_instance_uid"] for r in rows if r["kind"] == "pixels") == sorted(uids)
    assert all(r["sop_instance_uid"] in r["header_json"] for r in rows if r["kind"] == "header")
    assert sum(r["kind"] == "archive" for r in rows) == 2 * -(-120 // bm.PER_ARCHIVE)
    figures = bm.lookup_figures(folder, uids[:3])
    assert figures["lookups"] == 3 and all(p["members"] == 2 for p in figures["per_lookup"])
    assert figures["bytes_median"] > 0 and figures["files_median"] == len(os.listdir(folder))
    results = {"manifest_lookup": {"sizes": [
        {"instances": n, "rewrite_wall_s": 1.0, "before": figures, "stats_only": figures,
         "after": {**figures, "bytes": 10 * figures["bytes_median"] * k, "files": 3, "member_buckets": 2}}
        for k, n in ((1, 10_000), (3, 100_000))]}}
    assert bm.ratios(results)["lookup_bytes_growth"] == 1.0
    assert bm.ratios(results)["lookup_bytes_share_1e5"] == 1 / 30
    md = "\n".join(bm.markdown(results, _f, _table))
    assert "| 100,000 |" in md and "ratarmountcore" in md
