"""The ``dicom-reassembly`` command line, and how every command and job ends: logging set up once, bad input
as one line on stderr with exit 2 (1 when storage failed us), never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from ..errors import ReassemblyError, StorageError

log = logging.getLogger(__name__)
ROOT_LOGGER = "dicom_reassembly"  # every module's logger is below it
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
    logging.getLogger(ROOT_LOGGER).setLevel(numeric if isinstance(numeric, int) else logging.WARNING)
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
    from ..session import get_session

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


def build_parser() -> argparse.ArgumentParser:
    """The command line, with every subcommand (each command module registers its own)."""
    from .campaign import add_campaign_parser
    from .cost import add_cost_parser
    from .inspect import add_inspect_parser
    from .instance import add_pair_parser, add_uid_parser
    from .listen import add_listen_parser
    from .restore import add_restore_parser
    from .serve import add_serve_parser, add_token_parser
    from .stow import add_stow_parser

    p = argparse.ArgumentParser(prog="dicom-reassembly", description="Rebuild Part 10 DICOM from split tar deliveries.")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING (default) or ERROR")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (add_uid_parser, add_pair_parser, add_inspect_parser, add_stow_parser, add_restore_parser,
                add_cost_parser, add_listen_parser, add_serve_parser, add_token_parser, add_campaign_parser):
        add(sub)
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
