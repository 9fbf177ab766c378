"""Criteria compiled to a DuckDB SQL condition over the catalogue's ``criteria_values`` column.

``criteria_values`` holds ``selectable_values`` of each header (every top-level DA, CS and AS element, by tag,
its parts stripped), so a compiled criterion holds on a row exactly when ``Criterion.check`` holds on the
header (tests/test_cohort.py proves it on generated edge cases: missing and empty values, multi-valued CS,
AS units, invalid dates). The SQL re-states each VR's parser:

- DA: eight ASCII digits that make a calendar date, year 1 or later, compared as the integer YYYYMMDD;
- AS: one to three ASCII digits and a unit, compared in 1/48 day (``criteria._AS_UNITS``);
- CS: the stripped text, compared for equality.

A criterion holds when any part of the element satisfies it; criteria are ANDed. References are validated
when the criteria are compiled (dates, ages, code strings without quotes' meaning), and quoted here.
"""

from __future__ import annotations

from collections.abc import Sequence

from .criteria import _AS_UNITS, Criterion

COLUMN = "criteria_values"
_PART = "crit_part"  # the lambda's variable: no catalogue column has this name

_DA_VALID = (
    f"regexp_full_match({_PART}, '[0-9]{{8}}') AND substr({_PART}, 1, 4) <> '0000' AND "
    f"TRY_CAST(substr({_PART}, 1, 4) || '-' || substr({_PART}, 5, 2) || '-' || substr({_PART}, 7, 2) AS DATE) "
    f"IS NOT NULL"
)
_DA_VALUE = f"TRY_CAST({_PART} AS INTEGER)"
_AS_VALID = f"regexp_full_match({_PART}, '[0-9]{{1,3}}[DWMY]')"
_AS_VALUE = (f"TRY_CAST(left({_PART}, length({_PART}) - 1) AS INTEGER) * CASE right({_PART}, 1) "
             + " ".join(f"WHEN '{u}' THEN {n}" for u, n in _AS_UNITS.items()) + " END")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _comparison(c: Criterion, value: str) -> str:
    if c.operation == "GREATER":
        return f"{value} > {c.ref_point}"
    if c.operation == "LESS":
        return f"{value} < {c.ref_point}"
    return f"{value} IN ({', '.join(str(v) for v in sorted(c.ref_values))})"


def criterion_sql(c: Criterion, column: str = COLUMN) -> str:
    """One criterion as a DuckDB boolean expression (never NULL) over the map column ``column``."""
    parts = f"coalesce({column}[{_literal(c.key)}], [])"
    if c.vr == "CS":
        refs = ", ".join(_literal(v) for v in sorted(c.ref_values))
        return f"list_has_any({parts}, [{refs}])"
    valid, value = (_DA_VALID, _DA_VALUE) if c.vr == "DA" else (_AS_VALID, _AS_VALUE)
    test = f"CASE WHEN {valid} THEN coalesce({_comparison(c, value)}, false) ELSE false END"
    return f"len(list_filter({parts}, lambda {_PART}: {test})) > 0"


def criteria_sql(criteria: Sequence[Criterion], column: str = COLUMN) -> str:
    """Every criterion ANDed, ``TRUE`` for none (no criteria select every instance, as ``first_failure``)."""
    crits = getattr(criteria, "criteria", criteria)  # a CriteriaSpec, or its criteria
    if not crits:
        return "TRUE"
    return " AND ".join(f"({criterion_sql(c, column)})" for c in crits)
