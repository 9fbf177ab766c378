"""``query``, ``cohort``, ``stats`` and ``glue register``: the catalogue for the people who pick cohorts.

The first three run DuckDB in this process over the catalogue's Parquet files (a folder or an ``s3://``
prefix); ``glue register`` makes the same tables visible to Athena and EMR (docs/catalogue.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import date, datetime
from typing import Any, TextIO

from ..errors import ConfigError

QUERY_EPILOG = """\
tables:
  catalog  one row per stored object, its current state (docs/catalogue.md lists the columns)
  series   one row per series: instance_count, slice_count, total_bytes, ...
A filter on modality or study_year skips whole partitions.

example:
  dicom-reassembly query --catalog out/demo/ledger_catalog \\
    "SELECT modality, study_year, count(*) AS n FROM catalog GROUP BY ALL ORDER BY ALL"
"""


def _cell(value: Any) -> str:
    """A value as text: NULL as empty in CSV (the caller decides), dates ISO, maps and lists as JSON."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


def write_table(names: list[str], rows: list[tuple], out: TextIO) -> None:
    """Rows as an aligned text table (NULL spelled out, numbers right-aligned)."""
    cells = [["NULL" if v is None else _cell(v) for v in row] for row in rows]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) and rows != [] for i in range(len(names))]
    widths = [max([len(n), *(len(c[i]) for c in cells)]) for i, n in enumerate(names)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out.write(line(names) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for c in cells:
        out.write(line(c) + "\n")


def write_csv(names: list[str], rows: Any, out: TextIO) -> int:
    """Rows as CSV with a header (NULL as an empty field); returns how many."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    n = 0
    for row in rows:
        writer.writerow(["" if v is None else _cell(v) for v in row])
        n += 1
    return n


def cmd_query(args: argparse.Namespace) -> int:
    """Run one SQL statement over ``catalog`` and ``series``; print a table, or CSV with ``--csv``."""
    from ..records.catalog_query import iter_rows, open_catalog, run_sql

    cur = run_sql(open_catalog(args.catalog), args.sql)
    if cur.description is None:
        return 0
    names = [d[0] for d in cur.description]
    if args.csv:
        write_csv(names, iter_rows(cur), sys.stdout)
        return 0
    rows = cur.fetchmany(args.max_rows + 1)
    write_table(names, rows[: args.max_rows], sys.stdout)
    if len(rows) > args.max_rows:
        print(f"(more than {args.max_rows} rows: only the first are shown; --csv prints them all)", file=sys.stderr)
    return 0


def cmd_cohort(args: argparse.Namespace) -> int:
    """Select instances by criteria (and SQL), write their list for reassemble --only, stow --only, uid --from-list."""
    from ..records.catalog_query import cohort_sql, iter_rows, open_catalog, run_sql
    from ..records.cohort import write_uid_list
    from ..selection.spec import load_criteria

    if not args.criteria and not args.where:
        raise ConfigError("no_selection", "give --criteria FILE, --where SQL, or both")
    criteria = load_criteria(args.criteria).criteria if args.criteria else ()
    sql = cohort_sql(criteria, args.where)
    if args.show_sql:
        print(sql, file=sys.stderr)
    studies: set[str] = set()
    series: set[str] = set()

    def counted(rows: Any) -> Any:
        for row in rows:
            studies.add(row[2])
            series.add(row[3])
            yield row

    n = write_uid_list(args.out, counted(iter_rows(run_sql(open_catalog(args.catalog), sql))))
    print(f"{n} instance(s) in {len(series)} series of {len(studies)} study(ies): {args.out}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Counts and sizes per modality (printed), and per study and patient too (``--csv FILE``)."""
    from ..records.catalog_query import STATS_LEVELS, iter_rows, open_catalog, run_sql, stats_sql

    con = open_catalog(args.catalog)
    cur = run_sql(con, stats_sql(["modality"]))
    write_table([d[0] for d in cur.description], cur.fetchall(), sys.stdout)
    if args.csv:
        cur = run_sql(con, stats_sql(tuple(STATS_LEVELS)))
        try:
            with open(args.csv, "w", encoding="utf-8", newline="") as fh:
                n = write_csv([d[0] for d in cur.description], iter_rows(cur), fh)
        except OSError as exc:
            raise ConfigError("csv_not_writable", exc.strerror or type(exc).__name__, uri=args.csv) from None
        print(f"{n} row(s) (per modality, study and patient): {args.csv}")
    return 0


def cmd_glue_register(args: argparse.Namespace) -> int:
    """Create or update the Glue tables (and Athena views) of the given datasets."""
    import boto3

    from ..records.glue import register

    if not (args.catalog or args.manifest or args.ledger):
        raise ConfigError("no_dataset", "give --catalog, --manifest and/or --ledger")
    from botocore.exceptions import BotoCoreError

    try:
        glue = boto3.client("glue")
    except BotoCoreError as exc:  # no region configured, most often
        raise ConfigError("aws_config", f"{type(exc).__name__}: {exc}") from None
    done = register(glue, args.database, catalog_uri=args.catalog, manifest_uri=args.manifest,
                    ledger_uri=args.ledger, prefix=args.prefix)
    names = ["table", "action", "partitions", "added", "dropped", "location"]
    write_table(names, [tuple(d[n] for n in names) for d in done], sys.stdout)
    return 0


def add_catalog_parsers(sub: Any) -> None:
    """Register ``query``, ``cohort``, ``stats`` and ``glue``."""
    q = sub.add_parser("query", help="SQL over the catalogue (DuckDB, in process)", epilog=QUERY_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run one SQL statement over the tables catalog and series; print a table.")
    q.add_argument("--catalog", required=True, help="the catalogue: folder or s3:// prefix (<ledger>_catalog)")
    q.add_argument("--csv", action="store_true", help="print CSV (every row) instead of a table")
    q.add_argument("--max-rows", type=int, default=1000, help="rows a table shows (default 1000)")
    q.add_argument("sql", metavar="SQL", help="one statement, e.g. \"SELECT count(*) FROM catalog\"")
    q.set_defaults(func=cmd_query)

    c = sub.add_parser("cohort", help="select instances by criteria; write their UID and URI list",
                       description="Apply selection criteria (the reassemble job's, same semantics) to the "
                                   "catalogue, optionally with SQL, and write the list that reassemble --only, "
                                   "stow --only and uid --from-list read.")
    c.add_argument("--catalog", required=True, help="the catalogue: folder or s3:// prefix")
    c.add_argument("--criteria", metavar="F", help="criteria JSON, as for reassemble --criteria")
    c.add_argument("--where", metavar="SQL", help="an SQL condition over catalog's columns (series for rollups), "
                                                  "e.g. \"modality = 'CT' AND study_year >= 2022\"")
    c.add_argument("--out", required=True, help="the list to write (CSV): a file or s3:// object")
    c.add_argument("--show-sql", action="store_true", help="print the query on stderr")
    c.set_defaults(func=cmd_cohort)

    s = sub.add_parser("stats", help="counts and sizes per modality, study and patient",
                       description="Print instances, frames and bytes per modality; with --csv, write them per "
                                   "modality, per study and per patient.")
    s.add_argument("--catalog", required=True, help="the catalogue: folder or s3:// prefix")
    s.add_argument("--csv", metavar="FILE", help="write every level to this CSV file")
    s.set_defaults(func=cmd_stats)

    g = sub.add_parser("glue", help="AWS Glue tables for Athena and EMR").add_subparsers(dest="glue_command",
                                                                                         required=True)
    r = g.add_parser("register", help="create or update the Glue tables of the catalogue, manifest and ledger",
                     description="Tables catalog_files, ledger, manifest and the Athena views catalog and series, "
                                 "in DATABASE (created if missing); partitions registered or projected "
                                 "(docs/catalogue.md). AWS credentials and region: the standard environment.")
    r.add_argument("--database", required=True, help="Glue database")
    r.add_argument("--catalog", help="the catalogue (s3:// prefix)")
    r.add_argument("--manifest", help="the manifest (s3:// prefix)")
    r.add_argument("--ledger", help="the ledger (s3:// prefix)")
    r.add_argument("--prefix", default="", help="prefix for the table names (default none)")
    r.set_defaults(func=cmd_glue_register)
