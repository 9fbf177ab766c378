"""What the manifest-analysis notebook shows of the manifest and the ledger: tables (pandas) computed in the
engine (DuckDB or Spark, see ``inputs``), and the bin counts its charts draw.

Every function takes the registered ``Inputs`` and runs its aggregation where the data is; what comes back is an
aggregate (counts per status, one row per role, a histogram's bins) or a bounded listing (``limit`` rows), so the
notebook's memory does not grow with the manifest. ``header_json`` is never selected.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..records.ledger import STATUSES
from .histograms import Histogram, histogram
from .inputs import Inputs

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
MEMBER_KINDS = ("header", "pixels", "other")
ROLES = ("text", "images")
ORPHAN_STATUSES = ("orphan_header", "orphan_pixels")
DUPLICATE_STATUSES = ("duplicate", "conflict")
ARCHIVE_STATUSES = ("unreadable_archive", "not_restored")
MISSING = "(missing)"
ROWS_SHOWN = 1000  # listings (orphans, duplicates) stop here; their counts are in status_counts
FEW_ARCHIVES = 40  # up to this many, members per archive are drawn archive by archive
EXACT_QUANTILES = 10_000_000  # above this many values per group, medians and p95 are approximate (t-digest)
_REASON_CODE = re.compile(r"^([a-z][a-z0-9_]*):")
_REASON_SQL = "^([a-z][a-z0-9_]*):"  # the same pattern, in SQL (RE2 and Java read it alike)
MEMBER = "coalesce(kind, '') <> 'archive'"
# One row per archive of the newest index: its archive-level row.
ARCHIVES = ("SELECT archive_uri, min(archive_role) AS role, max(archive_size) AS bytes, max(index_run) AS index_run, "
            "max(error) AS error, max(error_detail) AS error_detail FROM manifest WHERE kind = 'archive' "
            "GROUP BY archive_uri")


def _eq(column: str, value: str) -> str:
    return f"{column} = '{value}'"  # our own constants: no quoting needed


def _count(condition: str) -> str:
    return f"CAST(sum(CASE WHEN {condition} THEN 1 ELSE 0 END) AS BIGINT)"


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


# Members per archive and kind, joined onto the archives (archives without members count zero).
PER_ARCHIVE = (f"SELECT a.archive_uri AS archive, a.role, a.bytes, a.index_run, a.error, "
               f"coalesce(m.header, 0) AS header, coalesce(m.pixels, 0) AS pixels, coalesce(m.other, 0) AS other, "
               f"coalesce(m.header, 0) + coalesce(m.pixels, 0) + coalesce(m.other, 0) AS members "
               f"FROM ({ARCHIVES}) AS a LEFT JOIN (SELECT archive_uri, {_count(_eq('kind', 'header'))} "
               f"AS header, {_count(_eq('kind', 'pixels'))} AS pixels, "
               f"{_count(_eq('kind', 'other'))} AS other FROM manifest WHERE {MEMBER} "
               f"GROUP BY archive_uri) AS m ON a.archive_uri = m.archive_uri")


def format_number(value: float) -> str:
    """Two decimals for everyday amounts, significant digits for the tiny ones a sample gives."""
    if value != value:
        return "n/a"
    return f"{value:,.2f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"


def _int(value: Any) -> int:
    """A count from a frame cell (null when no row was counted)."""
    import pandas as pd

    return 0 if pd.isna(value) else int(value)


def overview(data: Inputs) -> pd.DataFrame:
    """The key numbers: archives, members, instances, and the ledger run's outcome."""
    import pandas as pd

    m = data.frame(
        f"SELECT count(DISTINCT CASE WHEN kind = 'archive' THEN archive_uri END) AS archives, "
        f"count(DISTINCT CASE WHEN kind = 'archive' AND archive_role = 'text' THEN archive_uri END) AS text, "
        f"count(DISTINCT CASE WHEN kind = 'archive' AND archive_role = 'images' THEN archive_uri END) AS images, "
        f"count(DISTINCT CASE WHEN kind = 'archive' AND error IS NOT NULL THEN archive_uri END) AS damaged, "
        f"{_count(MEMBER)} AS members, {_count(_eq('kind', 'header'))} AS headers, "
        f"{_count(_eq('kind', 'pixels'))} AS pixels, "
        f"{_count(_eq('kind', 'other'))} AS other, "
        f"{_count(MEMBER + ' AND error IS NOT NULL')} AS member_errors, "
        f"count(DISTINCT CASE WHEN kind = 'header' THEN sop_instance_uid END) AS instances, "
        f"count(DISTINCT CASE WHEN kind = 'archive' THEN index_run END) AS index_runs FROM manifest").iloc[0]
    archive_bytes = data.frame(f"SELECT CAST(sum(bytes) AS BIGINT) AS b FROM ({ARCHIVES}) AS a")["b"].iloc[0]
    led = data.frame(f"SELECT count(*) AS n, {_count(_eq('status', 'written'))} AS written "
                     f"FROM ledger").iloc[0]
    rows: dict[str, Any] = {
        "manifest": data.manifest_uri,
        "archives": _int(m["archives"]),
        "text archives": _int(m["text"]),
        "image archives": _int(m["images"]),
        "damaged archives": _int(m["damaged"]),
        "archive bytes": _int(archive_bytes),
        "members": _int(m["members"]),
        "header members": _int(m["headers"]),
        "pixel members": _int(m["pixels"]),
        "other members": _int(m["other"]),
        "members with an error": _int(m["member_errors"]),
        "instances (distinct header UIDs)": _int(m["instances"]),
        "index runs": _int(m["index_runs"]),
        "ledger": data.ledger_uri,
        "ledger runs": len(data.runs),
        "ledger run shown": data.run_id or "none",
        "ledger rows": _int(led["n"]),
        "written": _int(led["written"]),
    }
    return pd.DataFrame({"value": pd.Series(rows, dtype="object")}).rename_axis("metric")


def archives_table(data: Inputs, limit: int | None = None) -> pd.DataFrame:
    """One row per archive (the first ``limit`` by role and URI): role, size, its archive-level error, and its
    members by kind."""
    cap = f" LIMIT {int(limit)}" if limit is not None else ""
    out = data.frame(f"SELECT * FROM ({PER_ARCHIVE}) AS p ORDER BY role NULLS LAST, archive{cap}")
    out["archive"] = data.shorten(out["archive"])
    out = out.set_index("archive")[["role", "bytes", "index_run", "error", *MEMBER_KINDS, "members"]]
    out[[*MEMBER_KINDS, "members"]] = out[[*MEMBER_KINDS, "members"]].astype("int64")
    return out


def members_by_role(data: Inputs) -> pd.DataFrame:
    """Per role: archives, bytes, and members per archive (total, mean, min, max)."""
    out = data.frame(
        f"SELECT role, count(*) AS archives, CAST(sum(bytes) AS BIGINT) AS bytes, "
        f"CAST(sum(members) AS BIGINT) AS members, CAST(sum(header) AS BIGINT) AS headers, "
        f"CAST(sum(pixels) AS BIGINT) AS pixels, CAST(sum(other) AS BIGINT) AS other, "
        f"avg(members) AS members_mean, min(members) AS members_min, max(members) AS members_max "
        f"FROM ({PER_ARCHIVE}) AS p WHERE role IS NOT NULL GROUP BY role ORDER BY role")
    out = out.set_index("role").fillna({"bytes": 0})
    return out.round({"members_mean": 1})


def members_per_archive(data: Inputs, few: int = FEW_ARCHIVES) -> pd.DataFrame | Histogram:
    """What the members-per-archive chart draws: every archive's members by kind when there are at most ``few``
    archives, else a histogram of members per archive by role."""
    archives = _int(data.frame(f"SELECT count(*) AS n FROM ({ARCHIVES}) AS a")["n"].iloc[0])
    if archives <= few:
        return archives_table(data)
    return histogram(data.engine, f"SELECT role AS series, members AS value FROM ({PER_ARCHIVE}) AS p", ROLES)


def _size_values() -> str:
    """(what, value): archive sizes by role, member sizes by kind."""
    roles = " UNION ALL ".join(f"SELECT '{r} archives' AS what, bytes AS v FROM ({ARCHIVES}) AS a WHERE role = '{r}'"
                               for r in ROLES)
    return (f"{roles} UNION ALL SELECT concat(kind, ' members') AS what, size AS v FROM manifest "
            f"WHERE kind IN ({_in(MEMBER_KINDS)})")


def size_summary(data: Inputs, exact: bool | None = None) -> pd.DataFrame:
    """Size statistics (bytes) of archives by role and of members by kind; header sizes are the JSON members.

    Medians and p95 are exact (interpolated as pandas does) unless a group holds more than ``EXACT_QUANTILES``
    values, where exact quantiles would hold every value in memory; ``exact`` forces either.
    """
    import pandas as pd

    values = _size_values()
    if exact is None:
        largest = data.frame(f"SELECT what, count(v) AS n FROM ({values}) AS s GROUP BY what")["n"]
        exact = not len(largest) or int(largest.max()) <= EXACT_QUANTILES
    q = data.engine.quantile
    stats = data.frame(
        f"SELECT what, count(v) AS count, CAST(sum(v) AS DOUBLE) AS total, CAST(min(v) AS DOUBLE) AS min, "
        f"{q('v', 0.5, exact)} AS median, avg(v) AS mean, {q('v', 0.95, exact)} AS p95, "
        f"CAST(max(v) AS DOUBLE) AS max FROM ({values}) AS s GROUP BY what").set_index("what")
    groups = [f"{r} archives" for r in ROLES] + [f"{k} members" for k in MEMBER_KINDS]
    rows = []
    for name in groups:
        n = _int(stats.loc[name, "count"]) if name in stats.index else 0
        row: dict[str, Any] = {"what": name, "count": n, "total": float(stats.loc[name, "total"]) if n else 0.0}
        for col in ("min", "median", "mean", "p95", "max"):
            row[col] = float(stats.loc[name, col]) if n else None
        rows.append(row)
    out = pd.DataFrame(rows).set_index("what").round(0)
    if not exact:
        out = out.rename(columns={"median": "median (approx.)", "p95": "p95 (approx.)"})
    return out


def size_histograms(data: Inputs) -> dict[str, Histogram]:
    """The size charts' bins: archive sizes by role, pixel and other member sizes, header (JSON) sizes."""
    e = data.engine
    return {
        "Archive sizes": histogram(e, f"SELECT role AS series, bytes AS value FROM ({ARCHIVES}) AS a", ROLES),
        "Pixel and other member sizes": histogram(
            e, "SELECT kind AS series, size AS value FROM manifest WHERE kind IN ('pixels', 'other')",
            ("pixels", "other")),
        "Header (JSON) sizes": histogram(
            e, "SELECT kind AS series, size AS value FROM manifest WHERE kind = 'header'", ("header",)),
    }


def damaged_archives(data: Inputs) -> pd.DataFrame:
    """Archives the index could not read (archive-level errors), with the ledger rows that name them."""
    out = data.frame(f"SELECT archive_uri AS archive, role, bytes, error, error_detail FROM ({ARCHIVES}) AS a "
                     f"WHERE error IS NOT NULL ORDER BY archive")
    named = data.frame(
        f"SELECT archive, status, count(*) AS n FROM ("
        f"SELECT header_archive AS archive, status FROM ledger WHERE status IN ({_in(ARCHIVE_STATUSES)}) "
        f"UNION ALL SELECT pixel_archive AS archive, status FROM ledger WHERE status IN ({_in(ARCHIVE_STATUSES)})"
        f") AS n WHERE archive IN (SELECT archive_uri FROM ({ARCHIVES}) AS a WHERE error IS NOT NULL) "
        f"GROUP BY archive, status")
    has_ledger = _int(data.frame("SELECT count(*) AS n FROM ledger")["n"].iloc[0]) > 0
    out = out.set_index("archive")
    if has_ledger:
        rows = named.groupby("archive")["n"].sum() if len(named) else None
        out["ledger_rows"] = (rows.reindex(out.index, fill_value=0) if rows is not None else 0)
        out["ledger_rows"] = out["ledger_rows"].astype("int64")
        statuses = named.groupby("archive")["status"].agg(lambda s: ", ".join(sorted(set(s)))) if len(named) else None
        out["ledger_status"] = statuses.reindex(out.index) if statuses is not None else None
    out.index = data.shorten(out.index.to_series()).values
    return out.rename_axis("archive")


def member_pairing(data: Inputs) -> pd.DataFrame:
    """From the manifest alone (before any run): how each UID's header and pixel members pair up."""
    import pandas as pd

    per_uid = (f"SELECT sop_instance_uid, {_count(_eq('kind', 'header'))} AS h, "
               f"{_count(_eq('kind', 'pixels'))} AS p FROM manifest "
               f"WHERE kind IN ('header', 'pixels') AND sop_instance_uid IS NOT NULL GROUP BY sop_instance_uid")
    got = data.frame(
        f"SELECT count(*) AS uids, {_count('h = 1 AND p = 1')} AS one_each, {_count('h >= 1 AND p = 0')} AS h_only, "
        f"{_count('h = 0 AND p >= 1')} AS p_only, {_count('h > 1')} AS several_h, {_count('p > 1')} AS several_p "
        f"FROM ({per_uid}) AS u").iloc[0]
    if not _int(got["uids"]):
        return pd.DataFrame({"uids": pd.Series(dtype="int64")}).rename_axis("pairing")
    rows = {
        "header and pixels, one each": _int(got["one_each"]),
        "header only (orphan)": _int(got["h_only"]),
        "pixels only (orphan)": _int(got["p_only"]),
        "several headers": _int(got["several_h"]),
        "several pixel members": _int(got["several_p"]),
    }
    return pd.DataFrame({"uids": pd.Series(rows, dtype="int64")}).rename_axis("pairing")


def _listing(data: Inputs, columns: list[str], statuses: tuple[str, ...], limit: int) -> pd.DataFrame:
    """Ledger rows with ``statuses``, ordered by every column shown (status and UID first), the first ``limit``."""
    order = ", ".join(f"{i} NULLS LAST" for i in range(1, len(columns) + 1))
    out = data.frame(f"SELECT {', '.join(columns)} FROM ledger WHERE status IN ({_in(statuses)}) "
                     f"ORDER BY {order} LIMIT {int(limit)}")
    for col in ("archive", "header_archive", "pixel_archive"):
        if col in out:
            out[col] = data.shorten(out[col])
    return out


def orphans(data: Inputs, limit: int = ROWS_SHOWN) -> pd.DataFrame:
    """Ledger rows for a header without pixels, or pixels without a header (the first ``limit``)."""
    return _listing(data, ["status", "sop_instance_uid",
                           "CASE WHEN status = 'orphan_header' THEN header_archive ELSE pixel_archive END AS archive",
                           "CASE WHEN status = 'orphan_header' THEN header_member ELSE pixel_member END AS member",
                           "reason"], ORPHAN_STATUSES, limit)


def duplicates(data: Inputs, limit: int = ROWS_SHOWN) -> pd.DataFrame:
    """Ledger rows for extra copies of an instance: identical (duplicate) or differing (conflict)."""
    return _listing(data, ["status", "sop_instance_uid", "header_archive", "header_member", "pixel_archive",
                           "pixel_member", "reason"], DUPLICATE_STATUSES, limit)


def status_counts(data: Inputs) -> pd.DataFrame:
    """Rows per ledger status, in the ledger's status order, with their share."""
    import pandas as pd

    got = data.frame("SELECT status, count(*) AS n FROM ledger WHERE status IS NOT NULL GROUP BY status")
    counts = pd.Series(got["n"].astype("int64").values, index=got["status"].astype(str).values)
    order = [s for s in STATUSES if s in counts.index] + sorted(s for s in counts.index if s not in STATUSES)
    out = pd.DataFrame({"rows": counts.reindex(order).astype("int64")})
    total = int(out["rows"].sum())
    out["share"] = (out["rows"] / total).round(4) if total else 0.0
    return out.rename_axis("status")


def reason_code(reason: Any) -> str | None:
    """The machine-readable code at the start of a ledger reason (``code: detail``), if it has one."""
    if not isinstance(reason, str):
        return None
    match = _REASON_CODE.match(reason)
    return match.group(1) if match else None


def reason_counts(data: Inputs) -> pd.DataFrame:
    """Rows per (status, reason code) for everything that was not written."""
    import pandas as pd

    code = f"coalesce(regexp_extract(reason, {data.engine.literal(_REASON_SQL)}, 1), '')"
    got = data.frame(f"SELECT status, {code} AS code, count(*) AS n FROM ledger WHERE status IS NOT NULL AND "
                     f"status NOT IN ('written', 'skipped_existing') GROUP BY status, {code}")
    if not len(got):
        return pd.DataFrame({"rows": pd.Series(dtype="int64")},
                            index=pd.MultiIndex.from_arrays([[], []], names=["status", "reason"]))
    got = got.rename(columns={"code": "reason", "n": "rows"}).astype({"rows": "int64"})
    got = got.sort_values(["rows", "status", "reason"], ascending=[False, True, True])
    return got.set_index(["status", "reason"])[["rows"]]


@dataclass
class CostTables:
    """The cost model's estimate as tables: one-time lines, monthly storage per class, totals."""

    lines: pd.DataFrame
    storage: pd.DataFrame
    totals: pd.DataFrame
    estimate: Any  # cost.Estimate


def manifest_workload(data: Inputs) -> Any:
    """The cost model's workload (``workload.Workload``) summarised in the engine, as ``read_manifest_workload``
    summarises it with pyarrow: archives by role (text, else images), header members and bytes, pixel bytes."""
    from .workload import Workload

    images = "coalesce(role, '') <> 'text'"
    a = data.frame(f"SELECT {_count(_eq('role', 'text'))} AS text_n, {_count(images)} AS images_n, "
                   f"CAST(sum(CASE WHEN role = 'text' THEN coalesce(bytes, 0) ELSE 0 END) AS BIGINT) AS text_b, "
                   f"CAST(sum(CASE WHEN {images} THEN coalesce(bytes, 0) ELSE 0 END) AS BIGINT) AS images_b "
                   f"FROM ({ARCHIVES}) AS a").iloc[0]
    m = data.frame(f"SELECT {_count(_eq('kind', 'header'))} AS headers, "
                   f"CAST(sum(CASE WHEN kind = 'header' THEN coalesce(size, 0) ELSE 0 END) AS BIGINT) AS header_b, "
                   f"CAST(sum(CASE WHEN kind = 'pixels' THEN coalesce(size, 0) ELSE 0 END) AS BIGINT) AS pixel_b "
                   f"FROM manifest").iloc[0]
    return Workload(_int(a["text_n"]), _int(a["images_n"]), _int(a["text_b"]), _int(a["images_b"]),
                    _int(m["headers"]), _int(m["header_b"]), _int(m["pixel_b"]), source=f"manifest {data.manifest_uri}")


def cost_estimate(data: Inputs, *, region: str = "us-east-1", prices: str | None = None,
                  bench_report: str | None = None, text: str | None = None, images: str | None = None,
                  **assumptions: Any) -> CostTables:
    """The cost model (``dicom_reassembly.estimate.cost``) applied to the manifest, as tables.

    ``text``/``images`` prefixes, when given, are listed for archive counts and bytes (pixel archives not yet
    indexed); ``assumptions`` are ``cost.Assumptions`` fields.
    """
    import pandas as pd

    from ..io import listing
    from . import cost
    from . import prices as estimate_prices
    from . import workload as estimate_workload

    workload = manifest_workload(data)
    if text and images:
        workload = estimate_workload.merge_listing(workload, *listing.count_objects(text), *listing.count_objects(images))
    est = cost.estimate_cost(workload, estimate_prices.read_prices(prices, region), cost.Assumptions(**assumptions),
                             bench_report)
    lines = pd.DataFrame([{"group": ln.group, "item": ln.item, "quantity": ln.quantity, "unit": ln.unit,
                           "unit price": ln.unit_price, f"cost ({est.currency})": ln.cost, "as of": ln.as_of}
                          for ln in est.lines])
    store = pd.DataFrame(est.storage)[["storage_class", "gb", "monthly_total", "put_cost_one_time", "price", "as_of"]]
    store = store.rename(columns={"monthly_total": f"per month ({est.currency})",
                                  "put_cost_one_time": f"PUTs one-time ({est.currency})"}).set_index("storage_class")
    d = est.derived
    cur = est.currency
    per_million = 1e6 / workload.instances if workload.instances else math.nan
    totals = pd.DataFrame({"value": pd.Series({
        "workload": workload.source,
        "instances": workload.instances,
        "archives": workload.archives,
        "archive GB": format_number(workload.archive_bytes / estimate_prices.GB),
        f"one-time total ({cur})": format_number(est.one_time_total),
        f"storage per month ({cur}, {est.assumptions['destination_class']})": format_number(est.monthly_total),
        f"one-time per million instances ({cur})": format_number(est.one_time_total * per_million),
        f"storage per month per million instances ({cur})": format_number(est.monthly_total * per_million),
        "worker node-hours": format_number(d["node_hours"]),
        "wall-clock hours": format_number(d["wall_clock_hours"]),
        "throughput per core (MB/s)": f"{d['per_core_mb_s']:g} ({d['per_core_mb_s_source']})",
        "prices": f"{est.prices_file} ({est.region})",
    }, dtype="object")}).rename_axis("estimate")
    return CostTables(lines, store, totals, est)
