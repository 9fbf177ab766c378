"""plan_instance: the fate of one UID from its header and pixel members (plain Python)."""

from __future__ import annotations

import pytest

from dicom_reassembly.reassembly.plan import PENDING, PLAN_NAMES, plan_instance
from dicom_reassembly.reassembly.reads import plan_reads


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


def test_copies_formatted_differently_are_duplicates_not_a_conflict() -> None:
    # The manifest hashes each member's bytes: key order and white space alone must not make a conflict.
    out = fates([header("t0.tar", "a", hj='{"x": 1, "y": [2, 3]}'), header("t1.tar", "b", hj='{"y":[2,3],"x":1}')],
                [pixels()])
    assert sorted(f["status"] for f in out) == ["duplicate", PENDING]


def test_conflicting_headers_are_not_written_and_name_both_locations() -> None:
    out = fates([header("t0.tar", "a", hj='{"x": 1}'), header("t1.tar", "b", hj='{"x": 2}')], [pixels()])
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
    assert [(r.start, r.end, len(list(r.items))) for r in ranges] == [(512, 9120, 2)]


def test_reads_coalesce_small_gaps_and_split_large_ones() -> None:
    items = _items((512, 100), (1536, 100), (900_000, 100))
    ranges = plan_reads(items, 10_000_000, 0.5, 2048)
    assert [(r.start, r.end) for r in ranges] == [(512, 1636), (900_000, 900_100)]


def test_reads_decide_from_the_archive_totals_on_the_first_item_without_buffering() -> None:
    def items():  # noqa: ANN202
        yield {"pixel_offset": 512, "pixel_size": 100, "archive_wanted": 9000, "archive_end": 9612}
        raise AssertionError("streaming mode must not look ahead")

    ranges = plan_reads(items(), 10240, 0.5, 1024)
    first = next(ranges)
    assert (first.start, first.end) == (512, 9612)


def test_a_coalesced_range_holds_a_bounded_number_of_items() -> None:
    from dicom_reassembly.reassembly.reads import MAX_RANGE_ITEMS

    items = _items(*[(512 + 1024 * i, 100) for i in range(MAX_RANGE_ITEMS + 5)])
    ranges = list(plan_reads(items, 10**12, 0.5, 1 << 20))
    assert [len(r.items) for r in ranges] == [MAX_RANGE_ITEMS, 5]


def _tar(tmp_path, sizes: list[int]) -> tuple[str, list[dict]]:  # noqa: ANN001
    import io
    import tarfile

    path = str(tmp_path / "a.tar")
    items = []
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for i, size in enumerate(sizes):
            data = bytes((i * 7 + j) % 251 for j in range(size))
            info = tarfile.TarInfo(f"1.2.{i}.j2c")
            info.size = size
            tf.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            items.append({"pixel_offset": m.offset_data, "pixel_size": m.size, "data": tf.extractfile(m).read()})
    return path, items


# stream_fraction 0: always one streaming read; 2: never (the wanted bytes never reach twice the archive).
@pytest.mark.parametrize("fraction,large", [(0.0, 1 << 30), (2.0, 1 << 30), (0.0, 100), (2.0, 100)])
def test_archive_pass_yields_each_member_once_in_one_forward_read(tmp_path, fraction, large) -> None:  # noqa: ANN001
    import os

    from dicom_reassembly.io import reads
    from dicom_reassembly.reassembly.reads import ReadTuning, read_archive_members

    path, items = _tar(tmp_path, [300, 5000, 40, 70000])
    wanted = [items[0], items[1], items[3]]
    tuning = ReadTuning(stream_fraction=fraction, coalesce_gap=0, large_member_bytes=large)
    reads.io_counter.reset()
    got = []
    for it, payload, err in read_archive_members(path, wanted, os.path.getsize(path), tuning):
        assert err is None
        got.append((it["pixel_offset"], bytes(payload.data)))
        payload.close()
    assert got == [(w["pixel_offset"], w["data"]) for w in wanted]
    # Streaming opens the archive once; ranged reads open it once per range (3 here, gaps > 0).
    assert reads.io_counter.gets == (1 if fraction == 0.0 else 3)
    assert reads.io_counter.bytes_read <= os.path.getsize(path)


def test_a_cut_archive_turns_the_rest_of_its_members_into_errors(tmp_path) -> None:  # noqa: ANN001
    import os

    from dicom_reassembly.reassembly.reads import ReadTuning, read_archive_members

    path, items = _tar(tmp_path, [300, 5000, 7000])
    with open(path, "r+b") as f:
        f.truncate(items[1]["pixel_offset"] + 100)
    tuning = ReadTuning(stream_fraction=1.0)
    out = list(read_archive_members(path, items, os.path.getsize(path), tuning))
    assert out[0][2] is None and out[0][1].data == items[0]["data"]
    assert [e.reason for _, _, e in out[1:]] == ["truncated_archive", "truncated_archive"]


def test_big_local_members_are_mapped_in_place_and_a_cut_mapped_member_is_an_error(tmp_path) -> None:  # noqa: ANN001
    import os

    from dicom_reassembly.reassembly.reads import ReadTuning, read_archive_members

    path, items = _tar(tmp_path, [300, 200_000, 150_000, 90_000])
    tuning = ReadTuning(stream_fraction=1.0, large_member_bytes=1000)
    out = list(read_archive_members(path, items[:3], os.path.getsize(path), tuning))
    # Members above large_member_bytes come back as views of the archive's pages, not spooled copies.
    assert [type(p.data).__name__ for _, p, _ in out] == ["bytes", "memoryview", "memoryview"]
    assert [bytes(p.data) for _, p, _ in out] == [it["data"] for it in items[:3]]
    assert all(p.file is None for _, p, _ in out)
    for _, p, _ in out:
        p.close()
    # Cut inside the third member: the mapping stops at the file's end, and the member is reported cut.
    with open(path, "r+b") as f:
        f.truncate(items[2]["pixel_offset"] + 70_000)
    out = list(read_archive_members(path, items[1:], os.path.getsize(path), tuning))
    assert out[0][2] is None and bytes(out[0][1].data) == items[1]["data"]
    assert [e.reason for _, _, e in out[1:]] == ["truncated_archive", "truncated_archive"]


def test_a_big_member_cut_at_its_first_byte_on_a_page_boundary_is_reported_cut(tmp_path) -> None:  # noqa: ANN001
    import mmap
    import os

    from dicom_reassembly.reassembly.reads import ReadTuning, read_archive_members

    # 512 (header) + 3,072 (data) + 512 (next header): the second member's data starts at 4,096.
    path, items = _tar(tmp_path, [3072, 200_000])
    assert items[1]["pixel_offset"] % mmap.ALLOCATIONGRANULARITY == 0
    with open(path, "r+b") as f:
        f.truncate(items[1]["pixel_offset"])
    tuning = ReadTuning(stream_fraction=1.0, large_member_bytes=1000)
    out = list(read_archive_members(path, items, os.path.getsize(path), tuning))
    assert out[0][2] is None and bytes(out[0][1].data) == items[0]["data"]
    assert out[1][1] is None and out[1][2].reason == "truncated_archive"


def test_big_members_of_an_s3_archive_are_spooled_to_a_temporary_file(tmp_path, s3) -> None:  # noqa: ANN001
    import uuid

    from dicom_reassembly.reassembly.reads import ReadTuning, read_archive_members

    path, items = _tar(tmp_path, [300, 200_000])
    bucket = f"pl-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    with open(path, "rb") as f:
        s3.put_object(Bucket=bucket, Key="a.tar", Body=f.read())
    tuning = ReadTuning(stream_fraction=1.0, large_member_bytes=1000)
    out = list(read_archive_members(f"s3://{bucket}/a.tar", items, None, tuning))
    assert [e for _, _, e in out] == [None, None]
    assert [p.file is not None for _, p, _ in out] == [False, True]
    assert [bytes(p.data) for _, p, _ in out] == [it["data"] for it in items]
    for _, p, _ in out:
        p.close()


def test_pixels_without_a_header_while_text_archives_await_restore_are_not_orphans() -> None:
    assert [f["status"] for f in fates([], [pixels()], headers_pending_restore=True)] == ["not_restored"]


def test_a_negative_member_size_is_damage_not_an_endless_walk(tmp_path) -> None:  # noqa: ANN001
    import itertools
    import tarfile

    from dicom_reassembly.io.tar_access import Damage, iter_members

    info = tarfile.TarInfo("1.2.3.j2c")
    info.size = 0
    block = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    block[124:136] = b"\xff" * 12  # base-256 size of -1
    block[148:156] = b" " * 8
    block[148:155] = f"{sum(block):06o}\0".encode()
    path = tmp_path / "neg.tar"
    path.write_bytes(bytes(block) + b"\0" * 1024)
    items = list(itertools.islice(iter_members(str(path)), 10))
    assert len(items) == 1 and isinstance(items[0], Damage) and items[0].reason == "corrupt_header"


def test_output_keys_never_leave_the_output_prefix() -> None:
    from dicom_reassembly.reassembly.writes import output_key

    item = {"sop_instance_uid": "1.2.3", "study_instance_uid": "../../etc", "series_instance_uid": "1.2.3.4",
            "modality": "../x"}
    assert output_key("{modality}/{study_instance_uid}/{series_instance_uid}/{sop_instance_uid}.dcm", item) == (
        "OT/unknown_study/1.2.3.4/1.2.3.dcm")


def test_members_above_the_memory_threshold_are_assembled_and_written(sample_delivery, tmp_path) -> None:  # noqa: ANN001
    from helpers import dcmftest_ok, work_item

    from dicom_reassembly.reassembly.executor import TaskSettings, reassemble_partition
    from dicom_reassembly.reassembly.reads import ReadTuning
    from dicom_reassembly.reassembly.writes import WritePolicy
    from dicom_reassembly.records.ledger import row_dict

    root, expected = sample_delivery
    uid, inst = next((u, i) for u, i in sorted(expected["instances"].items()) if i["payload"] == "native")
    item = work_item(root, inst, uid)
    task = TaskSettings("r", WritePolicy(out=str(tmp_path), upload_threads=2), ReadTuning(large_member_bytes=1))
    rows = [row_dict(r) for r in reassemble_partition([item], task)]
    assert [r["status"] for r in rows] == ["written"], rows
    assert dcmftest_ok(rows[0]["output_uri"])

