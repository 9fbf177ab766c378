"""What the manifest-analysis notebook shows: tables (pandas) and charts (matplotlib), without Spark.

The manifest and the ledger are read with pyarrow, projecting only the columns shown (never ``header_json``),
so the notebook runs without a JVM. Each table is a function of the loaded frames, so it can be tested on
small hand-made data; each chart is a ``matplotlib.figure.Figure`` built without pyplot (Agg canvas, no
global figure state), which Jupyter displays when a cell returns it.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..io import listing
from ..records.ledger import STATUSES
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
_AS = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.IGNORECASE)
_AS_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
_REASON_CODE = re.compile(r"^([a-z][a-z0-9_]*):")


def format_number(value: float) -> str:
    """Two decimals for everyday amounts, significant digits for the tiny ones a sample gives."""
    if value != value:
        return "n/a"
    return f"{value:,.2f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"


def overview(inputs: Inputs) -> pd.DataFrame:
    """The key numbers: archives, members, instances, and the ledger run's outcome."""
    import pandas as pd

    m = inputs.manifest
    arch = m[m["kind"] == "archive"]
    members = m[m["kind"] != "archive"]
    headers = members[members["kind"] == "header"]
    led = inputs.ledger
    rows: dict[str, Any] = {
        "manifest": inputs.manifest_uri,
        "archives": int(arch["archive_uri"].nunique()),
        "text archives": int(arch.loc[arch["archive_role"] == "text", "archive_uri"].nunique()),
        "image archives": int(arch.loc[arch["archive_role"] == "images", "archive_uri"].nunique()),
        "damaged archives": int(arch.loc[arch["error"].notna(), "archive_uri"].nunique()),
        "archive bytes": int(arch.drop_duplicates("archive_uri")["archive_size"].fillna(0).sum()),
        "members": len(members),
        "header members": int((members["kind"] == "header").sum()),
        "pixel members": int((members["kind"] == "pixels").sum()),
        "other members": int((members["kind"] == "other").sum()),
        "members with an error": int(members["error"].notna().sum()),
        "instances (distinct header UIDs)": int(headers["sop_instance_uid"].nunique()),
        "index runs": int(arch["index_run"].nunique()),
        "ledger": inputs.ledger_uri,
        "ledger runs": len(inputs.runs),
        "ledger run shown": inputs.run_id or "none",
        "ledger rows": len(led),
        "written": int((led["status"] == "written").sum()) if len(led) else 0,
    }
    return pd.DataFrame({"value": pd.Series(rows, dtype="object")}).rename_axis("metric")


def archives_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per archive: role, size, its archive-level error, and its members by kind."""
    import pandas as pd

    arch = (manifest[manifest["kind"] == "archive"]
            .drop_duplicates("archive_uri")
            .set_index("archive_uri")[["archive_role", "archive_size", "index_run", "error"]])
    members = manifest[manifest["kind"] != "archive"]
    counts = pd.crosstab(members["archive_uri"], members["kind"]) if len(members) else pd.DataFrame()
    counts = counts.reindex(columns=list(MEMBER_KINDS), fill_value=0)
    out = arch.join(counts, how="left").fillna({k: 0 for k in MEMBER_KINDS})
    out[list(MEMBER_KINDS)] = out[list(MEMBER_KINDS)].astype("int64")
    out["members"] = out[list(MEMBER_KINDS)].sum(axis=1)
    out = out.rename(columns={"archive_role": "role", "archive_size": "bytes"})
    return out.sort_values(["role", "archive_uri"]).rename_axis("archive")


def members_by_role(archives: pd.DataFrame) -> pd.DataFrame:
    """Per role: archives, bytes, and members per archive (total, mean, min, max)."""
    grouped = archives.groupby("role")
    out = grouped.agg(archives=("members", "size"), bytes=("bytes", "sum"), members=("members", "sum"),
                      headers=("header", "sum"), pixels=("pixels", "sum"), other=("other", "sum"),
                      members_mean=("members", "mean"), members_min=("members", "min"),
                      members_max=("members", "max"))
    return out.round({"members_mean": 1})


def size_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Size statistics (bytes) of archives by role and of members by kind; header sizes are the JSON members."""
    import pandas as pd

    arch = manifest[manifest["kind"] == "archive"].drop_duplicates("archive_uri")
    groups: dict[str, pd.Series] = {}
    for role in ROLES:
        groups[f"{role} archives"] = arch.loc[arch["archive_role"] == role, "archive_size"]
    for kind in MEMBER_KINDS:
        groups[f"{kind} members"] = manifest.loc[manifest["kind"] == kind, "size"]
    rows = []
    for name, values in groups.items():
        v = values.dropna().astype("float64")
        rows.append({"what": name, "count": len(v), "total": v.sum() if len(v) else 0.0,
                     "min": v.min() if len(v) else None, "median": v.median() if len(v) else None,
                     "mean": v.mean() if len(v) else None, "p95": v.quantile(0.95) if len(v) else None,
                     "max": v.max() if len(v) else None})
    return pd.DataFrame(rows).set_index("what").round(0)


def damaged_archives(manifest: pd.DataFrame, ledger: pd.DataFrame) -> pd.DataFrame:
    """Archives the index could not read (archive-level errors), with the ledger rows that name them."""
    import pandas as pd

    arch = manifest[(manifest["kind"] == "archive") & manifest["error"].notna()].drop_duplicates("archive_uri")
    out = arch.set_index("archive_uri")[["archive_role", "archive_size", "error", "error_detail"]]
    out = out.rename(columns={"archive_role": "role", "archive_size": "bytes"})
    if len(ledger):
        hit = ledger[ledger["status"].isin(ARCHIVE_STATUSES)]
        names = pd.concat([hit["header_archive"], hit["pixel_archive"]]).dropna()
        per_archive = pd.concat([hit.assign(archive=hit["header_archive"]), hit.assign(archive=hit["pixel_archive"])])
        statuses = per_archive.dropna(subset=["archive"]).groupby("archive")["status"].agg(
            lambda s: ", ".join(sorted(set(s))))
        out["ledger_rows"] = names.value_counts().reindex(out.index, fill_value=0).astype("int64")
        out["ledger_status"] = statuses.reindex(out.index)
    return out.sort_index().rename_axis("archive")


def orphans(ledger: pd.DataFrame) -> pd.DataFrame:
    """Ledger rows for a header without pixels, or pixels without a header."""
    rows = ledger[ledger["status"].isin(ORPHAN_STATUSES)].copy()
    rows["archive"] = rows["header_archive"].where(rows["status"] == "orphan_header", rows["pixel_archive"])
    rows["member"] = rows["header_member"].where(rows["status"] == "orphan_header", rows["pixel_member"])
    return rows[["status", "sop_instance_uid", "archive", "member", "reason"]].sort_values(
        ["status", "sop_instance_uid"]).reset_index(drop=True)


def duplicates(ledger: pd.DataFrame) -> pd.DataFrame:
    """Ledger rows for extra copies of an instance: identical (duplicate) or differing (conflict)."""
    cols = ["status", "sop_instance_uid", "header_archive", "header_member", "pixel_archive", "pixel_member", "reason"]
    rows = ledger[ledger["status"].isin(DUPLICATE_STATUSES)]
    return rows[cols].sort_values(["status", "sop_instance_uid"]).reset_index(drop=True)


def member_pairing(manifest: pd.DataFrame) -> pd.DataFrame:
    """From the manifest alone (before any run): how each UID's header and pixel members pair up."""
    import pandas as pd

    members = manifest[manifest["kind"].isin(("header", "pixels")) & manifest["sop_instance_uid"].notna()]
    if not len(members):
        return pd.DataFrame({"uids": pd.Series(dtype="int64")}).rename_axis("pairing")
    counts = pd.crosstab(members["sop_instance_uid"], members["kind"]).reindex(columns=["header", "pixels"],
                                                                              fill_value=0)
    h, p = counts["header"], counts["pixels"]
    rows = {
        "header and pixels, one each": int(((h == 1) & (p == 1)).sum()),
        "header only (orphan)": int(((h >= 1) & (p == 0)).sum()),
        "pixels only (orphan)": int(((h == 0) & (p >= 1)).sum()),
        "several headers": int((h > 1).sum()),
        "several pixel members": int((p > 1).sum()),
    }
    return pd.DataFrame({"uids": pd.Series(rows, dtype="int64")}).rename_axis("pairing")


def status_counts(ledger: pd.DataFrame) -> pd.DataFrame:
    """Rows per ledger status, in the ledger's status order, with their share."""
    import pandas as pd

    counts = ledger["status"].value_counts() if len(ledger) else pd.Series(dtype="int64")
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


def reason_counts(ledger: pd.DataFrame) -> pd.DataFrame:
    """Rows per (status, reason code) for everything that was not written."""
    import pandas as pd

    bad = ledger[~ledger["status"].isin(("written", "skipped_existing"))]
    if not len(bad):
        return pd.DataFrame({"rows": pd.Series(dtype="int64")},
                            index=pd.MultiIndex.from_arrays([[], []], names=["status", "reason"]))
    codes = bad["reason"].map(reason_code).fillna("")
    out = bad.assign(reason=codes).groupby(["status", "reason"]).size().rename("rows").to_frame()
    return out.sort_values("rows", ascending=False)


def parse_age(value: Any) -> float:
    """A DICOM AS value (``nnnD|W|M|Y``) in years; NaN when missing or not an AS value."""
    if not isinstance(value, str):
        return math.nan
    match = _AS.match(value)
    if not match:
        return math.nan
    return int(match.group(1)) * _AS_YEARS[match.group(2).upper()]


def instances(manifest: pd.DataFrame) -> pd.DataFrame:
    """One header row per SOP Instance UID (the first copy), for the demographic distributions."""
    headers = manifest[manifest["kind"] == "header"]
    return headers.drop_duplicates("sop_instance_uid").reset_index(drop=True)


def modality_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    """Instances per modality; headers without one count as ``(missing)``."""
    inst = instances(manifest)
    values = inst["modality"].astype("object").where(inst["modality"].notna() & (inst["modality"] != ""), MISSING)
    return values.value_counts().rename("instances").rename_axis("modality").to_frame()


def study_date_counts(manifest: pd.DataFrame, freq: str = "year") -> pd.DataFrame:
    """Instances per study year or month (``freq``: year|month); unparsable or missing dates count apart."""
    import pandas as pd

    if freq not in ("year", "month"):
        raise ConfigError("bad_freq", f"freq must be year or month, got {freq!r}")
    inst = instances(manifest)
    raw = inst["study_date"].astype("object").map(lambda v: v.strip().replace(".", "") if isinstance(v, str) else v)
    dates = pd.to_datetime(raw, format="%Y%m%d", errors="coerce")
    fmt = "%Y" if freq == "year" else "%Y-%m"
    labels = dates.dt.strftime(fmt)
    counts = labels.value_counts().sort_index()
    missing = int(dates.isna().sum())
    if missing:
        counts = pd.concat([counts, pd.Series({MISSING: missing})])
    return counts.astype("int64").rename("instances").rename_axis(freq).to_frame()


def age_distribution(manifest: pd.DataFrame, bin_years: int = 10) -> pd.DataFrame:
    """Instances per patient-age band (AS parsed to years); missing or invalid ages count apart."""
    import pandas as pd

    if bin_years < 1:
        raise ConfigError("bad_bin", "bin_years must be >= 1")
    years = instances(manifest)["patient_age"].map(parse_age).astype("float64")
    valid = years.dropna()
    top = int(valid.max() // bin_years + 1) * bin_years if len(valid) else bin_years
    edges = list(range(0, top + bin_years, bin_years))
    labels = [f"{lo}-{lo + bin_years - 1}" for lo in edges[:-1]]
    bands = pd.cut(valid, bins=edges, right=False, labels=labels)
    counts = bands.value_counts().reindex(labels, fill_value=0)
    missing = int(years.isna().sum())
    if missing:
        counts = pd.concat([counts, pd.Series({MISSING: missing})])
    return counts.astype("int64").rename("instances").rename_axis("age (years)").to_frame()


def age_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Patient age in years: count, min, median, mean, max of the parsable values."""
    years = instances(manifest)["patient_age"].map(parse_age).astype("float64").dropna()
    return years.describe()[["count", "min", "50%", "mean", "max"]].rename({"50%": "median"}).round(2).to_frame(
        "years")


@dataclass
class CostTables:
    """The cost model's estimate as tables: one-time lines, monthly storage per class, totals."""

    lines: pd.DataFrame
    storage: pd.DataFrame
    totals: pd.DataFrame
    estimate: Any  # cost.Estimate


def cost_estimate(manifest_uri: str, *, region: str = "us-east-1", prices: str | None = None,
                  bench_report: str | None = None, text: str | None = None, images: str | None = None,
                  **assumptions: Any) -> CostTables:
    """The cost model (``dicom_reassembly.cost``) applied to the manifest, as tables.

    ``text``/``images`` prefixes, when given, are listed for archive counts and bytes (pixel archives not yet
    indexed); ``assumptions`` are ``cost.Assumptions`` fields.
    """
    import pandas as pd

    from . import cost
    from . import prices as estimate_prices
    from . import workload as estimate_workload

    workload = estimate_workload.read_manifest_workload(manifest_uri)
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
