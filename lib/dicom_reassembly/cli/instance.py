"""``dicom-reassembly uid`` and ``pair``: one instance through the pipeline's own rules, without Spark."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from .main import EXIT_INPUT, EXIT_STORAGE

log = logging.getLogger(__name__)
EXIT_CONFLICT = 3
UID_EPILOG = """\
Every copy of the instance's members is found and decided on as the pipeline decides:
identical copies are written once (pixel copies compared by content), copies that differ
are a conflict, a header without pixels or pixels without a header is an orphan.
The object goes to OUT/<SOPInstanceUID>.dcm, never over another object: the same object
already there is fine, a different one is a conflict (--replace replaces an earlier,
different object of the same instance).

exit codes:
  0  written, or the same object was already there: its path is printed
  1  storage failed (unreachable, access denied, a write error)
  2  bad input: no member named for the UID, an orphan header or orphan pixels, an invalid
     header or pixel member (with the ledger's reason code), an unreadable archive
  3  conflict: copies that differ, or a different object at the output key (one line
     naming every location)
"""
PAIR_EPILOG = """\
The same rules as `uid`, for one header and one pixel member. The object goes to
OUT/<SOPInstanceUID>.dcm, never over another object: the same object already there is
fine, a different one is a conflict (--replace replaces an earlier, different object of the
same instance).

exit codes:
  0  written, or the same object was already there: its path is printed
  1  storage failed (unreachable, access denied, a write error)
  2  bad input: a file missing, an invalid header or pixel member (with the ledger's reason
     code)
  3  conflict: a different object at the output key
"""


def cmd_uid(args: argparse.Namespace) -> int:
    """Reassemble one instance by SOP Instance UID, from every copy of its members."""
    from ..dicom.uids import uid_problem
    from ..manifest.lookup import manifest_members, scan_members

    uid = args.uid
    problem = uid_problem(uid)
    if problem:
        print(f"error: invalid_uid: {uid!r} is {problem}", file=sys.stderr)
        return EXIT_INPUT
    members = manifest_members(uid, args.manifest) if args.manifest else scan_members(uid, args.text, args.images)
    return _reassemble(uid, members, args.out, args.replace)


def cmd_pair(args: argparse.Namespace) -> int:
    """Reassemble one loose header file and pixel file, with the same rules as ``uid``."""
    from ..manifest.lookup import pair_members

    uid, members = pair_members(args.header, args.pixels)
    return _reassemble(uid, members, args.out, args.replace)


def _reassemble(uid: str, members: Any, out: str, replace: bool) -> int:
    """Decide, write, and report in one line: the path on stdout, or the reason on stderr; notes for the rest."""
    from ..reassembly.instance import location, outcome, reassemble_members

    result = outcome(reassemble_members(uid, members, out, replace=replace))
    row = result.row
    for other in result.others:
        print(f"note: {other['status']}: {other['reason'] or ''} ({location(other)})", file=sys.stderr)
    if row is None:
        print(f"error: header_not_found: no member named for {uid} {members.headers_where} or "
              f"{members.pixels_where}", file=sys.stderr)
        return EXIT_INPUT
    status, reason = row["status"], row["reason"] or ""
    if status in ("written", "skipped_existing"):
        if status == "skipped_existing":
            print(f"note: skipped_existing: {row['output_uri']} already holds this object", file=sys.stderr)
        for note in filter(None, (reason or "").split("; ")):  # written as the source had it: the ledger says so too
            print(f"warning: {note}", file=sys.stderr)
        print(row["output_uri"])
        log.info("%s: %s, transfer syntax %s", uid, location(row), row["transfer_syntax"])
        return 0
    if status == "orphan_header":
        message = f"pixels_not_found: no pixel member for {uid} {members.pixels_where} ({location(row)})"
    elif status == "orphan_pixels":
        message = f"header_not_found: no header member for {uid} {members.headers_where} ({location(row)})"
    elif status == "conflict":
        message = f"conflict: {reason}"
    else:
        message = f"{reason} ({location(row)})"
    print(f"error: {message}", file=sys.stderr)
    if status == "conflict":
        return EXIT_CONFLICT
    return EXIT_STORAGE if status == "failed" else EXIT_INPUT


def add_uid_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``uid``."""
    u = sub.add_parser("uid", help="reassemble one instance by SOP Instance UID", epilog=UID_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    u.add_argument("uid", help="the SOP Instance UID")
    u.add_argument("--text", default="data/text", help="header archives: folder or s3:// prefix (default data/text)")
    u.add_argument("--images", default="data/images", help="pixel archives: folder or s3:// prefix (default data/images)")
    u.add_argument("--out", default=".", help="output folder or s3:// prefix (default: current directory)")
    u.add_argument("--manifest", help="find the members in this manifest instead of walking every archive "
                                      "(faster: only the pixel member is read)")
    u.add_argument("--replace", action="store_true", help="replace an earlier, different object of this instance")
    u.set_defaults(func=cmd_uid)
    return u


def add_pair_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``pair``."""
    pr = sub.add_parser("pair", help="reassemble one loose header file and pixel file",
                        description="Reassemble HEADER.json (DICOM JSON) and PIXELS (a J2K/HTJ2K codestream or "
                                    "native pixel bytes) into OUT/<SOPInstanceUID>.dcm, the UID taken from the "
                                    "header. The file names need not be UIDs: the pair is what you say it is.",
                        epilog=PAIR_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("header", metavar="HEADER.json", help="the header: DICOM JSON, local or s3://")
    pr.add_argument("pixels", metavar="PIXELS", help="the pixel data, local or s3://")
    pr.add_argument("--out", default=".", help="output folder or s3:// prefix (default: current directory)")
    pr.add_argument("--replace", action="store_true", help="replace an earlier, different object of this instance")
    pr.set_defaults(func=cmd_pair)
    return pr
