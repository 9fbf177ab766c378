"""The damaged sample delivery: good instances plus one instance (or archive) per damage category."""


from __future__ import annotations

import copy
import hashlib
import logging
from typing import Any

from .delivery import Delivery, add_good, image_archive, member_name, shuffled, tar_bytes, text_archive
from .instances import (
    DAMAGED_GOOD_VARIANTS,
    VARIANTS_BY_KEY,
    Instance,
    Member,
    build_instance,
    json_bytes,
    make_uid,
    with_bulk_data_uri,
)

log = logging.getLogger(__name__)


def damaged_case(key: str, variant: str = "mr-native") -> Instance:
    inst = build_instance(VARIANTS_BY_KEY[variant], 0, 0, uid_key=f"damaged:{key}")
    inst.extra["case"] = key
    return inst


def write_damaged(d: Delivery, copies: int) -> None:
    """Good instances plus one instance (or archive) per damage category."""
    t0, t1, t2 = (text_archive(i) for i in range(3))
    i0, i1, i2, i3 = (image_archive(i) for i in range(4))
    not_tar, empty_tar = text_archive(3), image_archive(4)

    good: list[Instance] = []
    n = 0
    for copy_index in range(copies):
        for v_index, key in enumerate(DAMAGED_GOOD_VARIANTS):
            inst = build_instance(VARIANTS_BY_KEY[key], copy_index, v_index % 2)
            good.append(inst)
            if n >= 2:  # the first two go to the truncated archive below
                text_i = n % 3
                add_good(d, inst, text_i, (text_i + 1) % 3)
            n += 1

    def header_only(inst: Instance, arch: str, model: dict[str, Any] | None = None, data: bytes | None = None,
                    status: str = "written", reason: str | None = None, name: str | None = None) -> list[str]:
        index = int(arch[-7:-4])
        member = member_name(index, name or f"{inst.uid}.json", "text")
        d.add(arch, Member(member, data if data is not None else json_bytes(model or inst.header)))
        d.expect_member(arch, member, status, reason, uid=inst.uid, role="header")
        return [arch, member]

    def pixels_only(inst: Instance, arch: str, data: bytes | None = None, status: str = "written",
                    reason: str | None = None, name: str | None = None) -> list[str]:
        member = name or f"{inst.uid}.j2c"
        d.add(arch, Member(member, inst.pixels if data is None else data))
        d.expect_member(arch, member, status, reason, uid=inst.uid, role="pixels")
        return [arch, member]

    def record(inst: Instance, status: str, reason: str | None, h: list[str] | None, p: list[str] | None,
               **extra: Any) -> None:
        entry = d.instance_entry(inst, status, header=h, pixels=p, reason=reason)
        entry.update(extra)
        d.expect_instance(inst.uid, entry)

    # Truncated archive: two good pixel members, then one cut in the middle of its data.
    victim = damaged_case("truncated-victim", "ct-native")
    before = []
    for inst in good[:2]:
        h = header_only(inst, t1)
        before.append(Member(f"{inst.uid}.j2c", inst.pixels))
        d.expect_member(i3, f"{inst.uid}.j2c", "written", uid=inst.uid, role="pixels")
        d.expect_instance(inst.uid, d.instance_entry(inst, "written", header=h, pixels=[i3, f"{inst.uid}.j2c"]))
    members = shuffled(before, f"order:{i3}") + [Member(f"{victim.uid}.j2c", victim.pixels)]
    data, offsets = tar_bytes(members)
    start, size = offsets[f"{victim.uid}.j2c"]
    d.raw_archives[i3] = data[:start + size // 2]
    d.expected["archives"][i3] = {"role": "images", "status": "unreadable_archive", "reason": "truncated_archive"}
    d.expect_member(i3, f"{victim.uid}.j2c", "unreadable_archive", "truncated_archive", uid=victim.uid,
                    role="pixels")
    # The cut member's header block survives, so it is indexed; the instance shares its archive's fate.
    h = header_only(victim, t0, status="unreadable_archive", reason="truncated_archive")
    record(victim, "unreadable_archive", "truncated_archive", h, None)

    # Orphans both ways.
    inst = damaged_case("orphan-header")
    record(inst, "orphan_header", "no_pixels", header_only(inst, t0, status="orphan_header", reason="no_pixels"), None)
    inst = damaged_case("orphan-pixels", "mr-j2k-lossless")
    record(inst, "orphan_pixels", "no_header", None,
           pixels_only(inst, i0, status="orphan_pixels", reason="no_header"))

    # Identical duplicates: the copy in the higher-numbered archive is the duplicate.
    inst = damaged_case("duplicate-header")
    h = header_only(inst, t0)
    dup = header_only(inst, t2, status="duplicate", reason="identical_duplicate")
    record(inst, "written", None, h, pixels_only(inst, i1), duplicates=[dup])
    inst = damaged_case("duplicate-pixels", "mr-j2k-lossless")
    p = pixels_only(inst, i0)
    dup = pixels_only(inst, i2, status="duplicate", reason="identical_duplicate")
    record(inst, "written", None, header_only(inst, t1), p, duplicates=[dup])

    # Conflicting duplicates: same UID, different content.
    inst = damaged_case("conflict-header")
    other = copy.deepcopy(inst.header)
    other["00101010"] = {"vr": "AS", "Value": ["099Y"]}
    h1 = header_only(inst, t0, status="conflict", reason="conflicting_headers")
    h2 = header_only(inst, t2, model=other, status="conflict", reason="conflicting_headers")
    record(inst, "conflict", "conflicting_headers", h1, pixels_only(inst, i1, status="conflict",
                                                                   reason="conflicting_headers"),
           conflicts=[h1, h2])
    inst = damaged_case("conflict-pixels")
    changed = bytes(b ^ 0x01 for b in inst.pixels[:64]) + inst.pixels[64:]
    p1 = pixels_only(inst, i0, status="conflict", reason="conflicting_pixels")
    p2 = pixels_only(inst, i1, data=changed, status="conflict", reason="conflicting_pixels")
    record(inst, "conflict", "conflicting_pixels",
           header_only(inst, t2, status="conflict", reason="conflicting_pixels"), p1, conflicts=[p1, p2])

    # Invalid headers (each with good pixels, so the header is the only fault).
    def bad_header(case: str, reason: str, arch_h: str, arch_p: str, *, model: dict[str, Any] | None = None,
                   data: bytes | None = None, variant: str = "mr-native") -> Instance:
        inst = damaged_case(case, variant)
        h = header_only(inst, arch_h, model=model, data=data, status="invalid_header", reason=reason)
        p = pixels_only(inst, arch_p, status="invalid_header", reason=reason)
        record(inst, "invalid_header", reason, h, p)
        return inst

    base = damaged_case("malformed-json")
    bad_header("malformed-json", "malformed_json", t1, i2, data=json_bytes(base.header)[:200])
    base = damaged_case("uid-mismatch")
    mismatched = copy.deepcopy(base.header)
    mismatched["00080018"] = {"vr": "UI", "Value": [make_uid("damaged:uid-mismatch:header")]}
    bad_header("uid-mismatch", "uid_mismatch", t2, i0, model=mismatched)
    base = damaged_case("missing-sop-class")
    no_class = {k: v for k, v in base.header.items() if k != "00080016"}
    bad_header("missing-sop-class", "missing_sop_class_uid", t0, i1, model=no_class)
    base = damaged_case("bulkdata-external")
    bad_header("bulkdata-external", "unresolved_bulkdata", t1, i0,
               model=with_bulk_data_uri(base, "http://elsewhere/x"))
    base = damaged_case("bulkdata-other-tag", "rgb-odd-native")
    bad_header("bulkdata-other-tag", "unresolved_bulkdata", t2, i1, variant="rgb-odd-native",
               model=with_bulk_data_uri(base, "icc-profile.bin", tag="00282000"))

    # Invalid UID syntax (leading-zero component) in the member name and the header alike.
    inst = damaged_case("invalid-uid")
    bad_uid = "1.2.03.4"
    model = copy.deepcopy(inst.header)
    model["00080018"] = {"vr": "UI", "Value": [bad_uid]}
    h = header_only(inst, t0, model=model, status="invalid_header", reason="invalid_uid", name=f"{bad_uid}.json")
    # No UID joins a member whose UID is invalid: each half is judged on its own.
    p = pixels_only(inst, i2, status="invalid_pixels", reason="invalid_uid", name=f"{bad_uid}.j2c")
    for m in d.expected["members"][-2:]:
        m["uid"] = bad_uid
    entry = d.instance_entry(inst, "invalid_header", header=h, pixels=p, reason="invalid_uid")
    d.expect_instance(bad_uid, entry)

    # Invalid pixels (each with a good header).
    def bad_pixels(case: str, reason: str, arch_h: str, arch_p: str, data: bytes, payload: str) -> None:
        inst = damaged_case(case)
        h = header_only(inst, arch_h, status="invalid_pixels", reason=reason)
        p = pixels_only(inst, arch_p, data=data, status="invalid_pixels", reason=reason)
        entry = d.instance_entry(inst, "invalid_pixels", header=h, pixels=p, reason=reason, payload=payload)
        d.expect_instance(inst.uid, entry)

    mr = damaged_case("short-native")
    bad_pixels("empty-pixels", "empty_pixels", t1, i2, b"", "empty")
    bad_pixels("short-native", "native_length_mismatch", t2, i0, mr.pixels[:-100], "native-short")
    garbage = b"GARBAGE!" + hashlib.sha256(b"garbage").digest() * 24  # 776 bytes: not J2K, JP2 or 8192 native
    bad_pixels("garbage", "unrecognised_payload", t0, i1, garbage, "garbage")

    # Non-regular members inside otherwise good archives.
    link_target = good[2]
    # Directory names without the trailing slash, as tar readers report them.
    for arch, member in ((t2, Member("batch2", kind="dir")),
                         (t2, Member(f"{make_uid('damaged:symlink-header')}.json", kind="symlink",
                                     linkname=f"{link_target.uid}.json")),
                         (i1, Member("scans", kind="dir")),
                         (i1, Member(f"{make_uid('damaged:symlink-pixels')}.j2c", kind="symlink",
                                     linkname=f"{link_target.uid}.j2c"))):
        d.add(arch, member)
        role = "header" if arch.startswith("text/") else "pixels"
        uid = None if member.kind == "dir" else member.name.rsplit(".", 1)[0]
        d.expect_member(arch, member.name, "invalid_header" if role == "header" else "invalid_pixels",
                        "non_regular_member", uid=uid, role="other")

    # Whole archives that cannot be read.
    d.raw_archives[not_tar] = b"This is not a tar archive: the partner's upload tool wrote a log file here.\n" * 40
    d.expected["archives"][not_tar] = {"role": "text", "status": "unreadable_archive", "reason": "not_a_tar"}
    d.raw_archives[empty_tar] = b""
    d.expected["archives"][empty_tar] = {"role": "images", "status": "unreadable_archive", "reason": "empty_archive"}


