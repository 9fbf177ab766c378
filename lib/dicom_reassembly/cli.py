"""The ``dicom-reassembly`` command: one instance by UID, inspection, STOW-RS, restores, cost.

Bad input ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from .errors import NotFoundError, ReassemblyError, StorageError

log = logging.getLogger(__name__)

EXIT_INPUT = 2
EXIT_STORAGE = 1


def configure_logging(level: str | None = None) -> None:
    """Log to stderr; DICOM_REASSEMBLY_LOG sets our level. Called by jobs and the CLI only.

    Only this package's loggers follow that level: at DEBUG, botocore would log
    request signatures (access key ids) and urllib3 every connection.
    """
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    ours = (level or os.environ.get("DICOM_REASSEMBLY_LOG", "WARNING")).upper()
    numeric = logging.getLevelName(ours)  # an int for a known level name
    logging.getLogger(__package__).setLevel(numeric if isinstance(numeric, int) else logging.WARNING)
    # pydicom logs each warning it also issues through `warnings`; the library collects those into
    # reasons and DEBUG lines, so its own copies would only flood stderr, once per instance. A filter,
    # not a level: importing pydicom resets its logger's level to WARNING.
    logging.getLogger("pydicom").addFilter(_pydicom_errors_only)


def _pydicom_errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def fail(exc: ReassemblyError, code: int | None = None) -> int:
    """Print the error as one line on stderr; exit 1 when storage failed us, 2 for bad input."""
    print(f"error: {exc.one_line()}", file=sys.stderr)
    if code is not None:
        return code
    return EXIT_STORAGE if isinstance(exc, StorageError) else EXIT_INPUT


def fail_unexpected(exc: BaseException, code: int = 1) -> int:
    """An error that is not ours (Spark, the JVM): one line for the user, the traceback only at DEBUG."""
    log.debug("unexpected failure", exc_info=exc)
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    print(f"error: {type(exc).__name__}: {first} (run with DICOM_REASSEMBLY_LOG=DEBUG for details)", file=sys.stderr)
    return code


def run_spark_job(app_name: str, extra: dict[str, str], body: Callable[[Any], int]) -> int:
    """Start the session, run ``body(spark)``, always stop the session.

    The one place the jobs turn failures into a single line: our typed errors
    by reason, anything from Spark or the JVM by type, never a Java stack.
    """
    from .session import get_session

    try:
        spark = get_session(app_name, extra=extra)
    except Exception as exc:  # no JVM, no Java
        return fail_unexpected(exc)
    try:
        return body(spark)
    except ReassemblyError as exc:
        return fail(exc)
    except Exception as exc:  # Spark or the JVM gave up
        return fail_unexpected(exc)
    finally:
        spark.stop()


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
    from .dicom.uids import uid_problem
    from .manifest.lookup import manifest_members, scan_members

    uid = args.uid
    problem = uid_problem(uid)
    if problem:
        print(f"error: invalid_uid: {uid!r} is {problem}", file=sys.stderr)
        return EXIT_INPUT
    members = manifest_members(uid, args.manifest) if args.manifest else scan_members(uid, args.text, args.images)
    return _reassemble(uid, members, args.out, args.replace)


def cmd_pair(args: argparse.Namespace) -> int:
    """Reassemble one loose header file and pixel file, with the same rules as ``uid``."""
    from .manifest.lookup import pair_members

    uid, members = pair_members(args.header, args.pixels)
    return _reassemble(uid, members, args.out, args.replace)


def _reassemble(uid: str, members: Any, out: str, replace: bool) -> int:
    """Decide, write, and report in one line: the path on stdout, or the reason on stderr; notes for the rest."""
    from .reassembly.instance import location, outcome, reassemble_members

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


def _tag_of(spec: str) -> int:
    from pydicom.datadict import tag_for_keyword

    text = spec.strip().strip("()").replace(",", "").replace(" ", "")
    if len(text) == 8:
        try:
            return int(text, 16)
        except ValueError:
            pass
    tag = tag_for_keyword(spec.strip())
    if tag is None:
        raise NotFoundError("unknown_tag", f"{spec!r} is neither GGGGEEEE, (GGGG,EEEE) nor a keyword")
    return int(tag)


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print key tags of a Part 10 file, plus any tags asked for."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    tags = [_tag_of(t) for t in args.tags]
    try:
        ds = dcmread(args.file, stop_before_pixels=False)
    except FileNotFoundError:
        raise NotFoundError("not_found", "no such file", uri=args.file) from None
    except IsADirectoryError:
        raise NotFoundError("not_dicom", "a directory, not a .dcm file", uri=args.file) from None
    except InvalidDicomError:
        # pydicom's text suggests force=True; a file without the Part 10 preamble is simply not one of ours.
        empty = os.path.getsize(args.file) == 0
        why = "an empty file" if empty else "no 'DICM' marker after the 128-byte preamble"
        raise NotFoundError("not_dicom", f"not a DICOM Part 10 file: {why}", uri=args.file) from None
    except (OSError, ValueError) as exc:
        raise NotFoundError("not_dicom", str(exc).splitlines()[0][:200], uri=args.file) from exc
    print(f"PatientName: {ds.get('PatientName', '')}")
    print(f"StudyDate: {ds.get('StudyDate', '')}")
    print(f"Modality: {ds.get('Modality', '')}")
    for tag in tags:
        elem = ds.get(tag)
        if elem is None and tag >> 16 == 0x0002:
            elem = ds.file_meta.get(tag)
        name = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if elem is None:
            print(f"{name} <absent>")
        else:
            value = elem.repval if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ") else elem.value
            print(f"{name} {elem.keyword or 'Unknown'}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line, with every subcommand."""
    p = argparse.ArgumentParser(prog="dicom-reassembly", description="Rebuild Part 10 DICOM from split tar deliveries.")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING (default) or ERROR")
    sub = p.add_subparsers(dest="command", required=True)

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

    i = sub.add_parser("inspect", help="print key tags of a .dcm file")
    i.add_argument("file")
    i.add_argument("tags", nargs="*", help="GGGGEEEE, (GGGG,EEEE) or keyword")
    i.set_defaults(func=cmd_inspect)

    from .stow import add_stow_parser, run_stow

    add_stow_parser(sub).set_defaults(func=run_stow)
    from .cost import add_cost_parser
    from .restore import add_restore_parser

    add_restore_parser(sub)
    add_cost_parser(sub)
    from .dicomweb.command import add_serve_parser, add_token_parser
    from .intake.command import add_listen_parser

    add_listen_parser(sub)
    add_serve_parser(sub)
    add_token_parser(sub)
    from .campaign.command import add_campaign_parser

    add_campaign_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except ReassemblyError as exc:
        return fail(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # not bad input but a fault: still one line; DEBUG logging shows the traceback
        return fail_unexpected(exc)


if __name__ == "__main__":
    sys.exit(main())
