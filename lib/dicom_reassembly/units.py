"""Byte counts as people read them: decimal units, one decimal place (``1.5 GB``)."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """``n`` bytes in B, KB, MB, GB, TB or PB (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} PB"
