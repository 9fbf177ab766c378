"""Deterministic partner-style sample deliveries built from pydicom's bundled test files.

A delivery is ``root/text/*.tar`` (``<SOPInstanceUID>.json`` DICOM JSON headers without group 0002 and Pixel Data),
``root/images/*.tar`` (``<SOPInstanceUID>.j2c`` pixel payloads: J2K codestreams, JP2 files or raw native bytes),
``root/sources/<uid>.dcm`` (the reference Part 10 file each written instance should reassemble to) and
``root/expected.json`` (the intended outcome of every instance, member and archive). ``make demo`` writes it to
``data/``, so ``data/text`` and ``data/images`` are where the partner's brief (and ``dicom-reassembly uid``) expect them.

This module deliberately uses only pydicom, numpy, pylibjpeg-openjpeg and :mod:`tarfile`, never the reassembly code
it is meant to test.
"""


from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from .damaged import write_damaged
from .delivery import GENERATOR, Delivery, prepare_root, write_clean
from .instances import VARIANTS

log = logging.getLogger(__name__)


def write_sample_delivery(root: str, damaged: bool = False, copies: int = 2, *, overwrite: bool = False) -> dict:
    """Write a clean (or damaged) sample delivery under ``root``; return the expected outcomes (expected.json).

    ``root`` must be empty, absent, or hold a delivery this function wrote before (it is replaced); ``overwrite``
    replaces ``text/``, ``images/``, ``sources/`` and ``expected.json`` in any directory.
    """
    if not isinstance(copies, int) or copies < 1:
        raise ConfigError("invalid_copies", f"copies must be a positive integer, got {copies!r}")
    prepare_root(root, overwrite)
    delivery = Delivery(root, damaged, copies)
    if damaged:
        write_damaged(delivery, copies)
    else:
        write_clean(delivery, copies)
    expected = delivery.write()
    log.info("wrote %s sample delivery to %s: %d instances, %d archives", "damaged" if damaged else "clean", root,
             len(expected["instances"]), len(expected["archives"]))
    return expected


def pick_uids(expected: dict[str, Any], count: int) -> list[tuple[str, dict[str, Any]]]:
    """Up to ``count`` written instances to try by hand, one per modality first, in the generator's variant order."""
    order = {v.key: i for i, v in enumerate(VARIANTS)}
    written = sorted(((uid, e) for uid, e in expected.get("instances", {}).items() if e.get("status") == "written"),
                     key=lambda item: (order.get(item[1].get("variant"), len(order)), item[0]))
    picked: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for uid, entry in written:  # one per modality first, then whatever is left
        if entry.get("modality") not in seen:
            seen.add(entry.get("modality"))
            picked.append((uid, entry))
    picked += [item for item in written if item not in picked]
    return picked[:count]


def read_expected(root: str) -> dict[str, Any]:
    """``root/expected.json`` of a delivery this module wrote."""
    path = os.path.join(root, "expected.json")
    try:
        with open(path, encoding="utf-8") as fh:
            expected = json.load(fh)
    except FileNotFoundError:
        raise ConfigError("no_sample_delivery", f"{path} does not exist: write the delivery first") from None
    except (OSError, ValueError) as exc:
        raise ConfigError("no_sample_delivery", f"{path} is unreadable: {exc}") from None
    if not isinstance(expected, dict) or expected.get("generator") != GENERATOR:
        raise ConfigError("no_sample_delivery", f"{path} was not written by {GENERATOR}")
    return expected


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dicom_reassembly.testing.sample_data OUT [--damaged] [--copies N] [--overwrite] | OUT --pick N``."""
    parser = argparse.ArgumentParser(prog="python -m dicom_reassembly.testing.sample_data",
                                     description="Write a deterministic partner-style sample delivery: OUT/text/*.tar "
                                                 "(headers), OUT/images/*.tar (pixels), OUT/sources, OUT/expected.json.")
    parser.add_argument("out", help="output directory (empty, absent, or a previous sample delivery)")
    parser.add_argument("--damaged", action="store_true", help="write the damaged delivery")
    parser.add_argument("--copies", type=int, default=2, help="copies of each source (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace text/ images/ sources/ in any directory")
    parser.add_argument("--pick", type=int, metavar="N",
                        help="write nothing: print N written UIDs of the delivery in OUT to try by hand")
    args = parser.parse_args(argv)
    try:
        if args.pick is not None:
            for uid, entry in pick_uids(read_expected(args.out), args.pick):
                print(f"  {uid}  {entry.get('modality')}, {entry.get('payload')} pixels ({entry.get('source')})")
            return 0
        expected = write_sample_delivery(args.out, damaged=args.damaged, copies=args.copies, overwrite=args.overwrite)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    statuses: dict[str, int] = {}
    for entry in expected["instances"].values():
        statuses[entry["status"]] = statuses.get(entry["status"], 0) + 1
    print(f"wrote {len(expected['instances'])} instances in {len(expected['archives'])} archives to {args.out}: "
          + ", ".join(f"{k}={v}" for k, v in sorted(statuses.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["main", "pick_uids", "read_expected", "write_sample_delivery"]
