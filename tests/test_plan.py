"""plan_instance: the fate of one UID from its header and pixel members (plain Python)."""

from __future__ import annotations

from dicom_reassembly.reassembly import PENDING, PLAN_NAMES, plan_instance, plan_reads


def header(archive: str = "t0.tar", sha: str = "h1", error: str | None = None, hj: str = '{"x": 1}') -> dict:
    return {"archive_uri": archive, "member_name": "1.2.3.json", "data_offset": 512, "size": 10, "archive_size": 10240,
            "error": error, "error_detail": "bad" if error else None, "header_json": hj, "header_sha256": sha,
            "study_instance_uid": "1.2", "series_instance_uid": "1.2.1", "modality": "CT"}


def pixels(archive: str = "i0.tar", size: int = 100, offset: int = 512, error: str | None = None) -> dict:
    return {"archive_uri": archive, "member_name": "1.2.3.j2c", "data_offset": offset, "size": size,
            "archive_size": 10240, "error": error, "error_detail": None}


def fates(headers: list[dict], pix: list[dict], **kw: object) -> list[dict]:
    return [dict(zip(PLAN_NAMES, row)) for row in plan_instance("1.2.3", headers, pix, **kw)]


def test_a_clean_pair_is_pending_work_with_its_header_json() -> None:
    [f] = fates([header()], [pixels()])
    assert f["status"] == PENDING
    assert (f["pixel_archive"], f["pixel_offset"], f["pixel_size"]) == ("i0.tar", 512, 100)
    assert f["header_json"] == '{"x": 1}' and f["dup_pixels"] is None


def test_orphans_both_ways() -> None:
    assert [f["status"] for f in fates([header()], [])] == ["orphan_header"]
    assert [f["status"] for f in fates([], [pixels(), pixels("i1.tar")])] == ["orphan_pixels", "orphan_pixels"]


def test_missing_pixels_while_archives_await_restore_is_not_an_orphan() -> None:
    [f] = fates([header()], [], pixels_pending_restore=True)
    assert f["status"] == "not_restored"


def test_identical_header_copies_write_once_and_record_the_copy() -> None:
    out = fates([header("t0.tar"), header("t1.tar")], [pixels()])
    assert sorted(f["status"] for f in out) == ["duplicate", PENDING]
    dup = next(f for f in out if f["status"] == "duplicate")
    assert dup["header_archive"] == "t1.tar" and "t0.tar" in dup["reason"]


def test_conflicting_headers_are_not_written_and_name_both_locations() -> None:
    out = fates([header("t0.tar", "a"), header("t1.tar", "b")], [pixels()])
    assert {f["status"] for f in out} == {"conflict"}
    assert {f["header_archive"] for f in out} == {"t0.tar", "t1.tar"}
    assert all("t0.tar" in f["reason"] and "t1.tar" in f["reason"] for f in out)
    assert any(f["pixel_archive"] == "i0.tar" for f in out)


def test_pixel_copies_of_different_sizes_conflict_without_reading() -> None:
    out = fates([header()], [pixels("i0.tar", 100), pixels("i1.tar", 101)])
    assert {f["status"] for f in out} == {"conflict"}
    assert {f["pixel_archive"] for f in out} == {"i0.tar", "i1.tar"}


def test_same_size_pixel_copies_go_to_the_executor_for_a_byte_check() -> None:
    [f] = fates([header()], [pixels("i1.tar"), pixels("i0.tar")])
    assert f["status"] == PENDING and f["pixel_archive"] == "i0.tar"
    assert '"i1.tar"' in f["dup_pixels"]


def test_invalid_header_carries_the_pixel_member_so_it_is_accounted_for() -> None:
    [f] = fates([header(error="malformed_json")], [pixels()])
    assert f["status"] == "invalid_header" and f["reason"].startswith("malformed_json")
    assert f["pixel_archive"] == "i0.tar"


def test_a_bad_copy_beside_a_good_one_does_not_stop_the_good_one() -> None:
    out = fates([header("t0.tar", error="malformed_json"), header("t1.tar")], [pixels()])
    assert sorted(f["status"] for f in out) == ["invalid_header", PENDING]


def test_filtered_out_names_the_reason_and_needs_no_pixels() -> None:
    out = fates([header()], [pixels(), pixels("i1.tar")], select=lambda hj: "(0008,0060) Modality CT not IN [MR]")
    assert [f["status"] for f in out] == ["filtered_out", "filtered_out"]
    assert out[0]["reason"] == "(0008,0060) Modality CT not IN [MR]"


def test_selection_receives_the_header_json() -> None:
    seen = []
    fates([header(hj='{"k": 2}')], [pixels()], select=lambda hj: seen.append(hj))
    assert seen == ['{"k": 2}']


def test_invalid_pixels_from_the_manifest() -> None:
    out = fates([header()], [pixels(error="invalid_uid")])
    assert [f["status"] for f in out] == ["invalid_pixels"]


def _items(*spans: tuple[int, int]) -> list[dict]:
    return [{"pixel_offset": o, "pixel_size": s} for o, s in spans]


def test_reads_stream_the_archive_when_most_of_it_is_wanted() -> None:
    ranges = plan_reads(_items((512, 4000), (5120, 4000)), 10240, 0.5, 1024)
    assert [(r.start, r.end, len(r.items)) for r in ranges] == [(512, 9120, 2)]


def test_reads_coalesce_small_gaps_and_split_large_ones() -> None:
    items = _items((512, 100), (1536, 100), (900_000, 100))
    ranges = plan_reads(items, 10_000_000, 0.5, 2048)
    assert [(r.start, r.end) for r in ranges] == [(512, 1636), (900_000, 900_100)]
