"""Tranches: the part of a delivery one run takes on, so a campaign works through it run by run.

The grammar (``--tranche``), one term or several joined by ``;`` (each kind at most once, all must hold):

- ``prefix:URI[,URI...]``: archives whose URI starts with one of these (a plain string prefix: end it with ``/``
  to name a folder; a local path is made absolute);
- ``hash:A-B/M``: archives whose stable hash (CRC-32 of the URI's UTF-8 bytes) mod ``M`` lies in ``[A, B]``, so
  ``hash:0-63/256``, ``hash:64-127/256``, ... cut a delivery into disjoint tranches that cover it;
- ``limit:N``: at most ``N`` instances (reassemble only): the first ``N`` not yet final, whole archives first, in
  archive URI order, so successive runs walk the delivery.

An instance belongs to the archive of its pixel member (its header archive when it has no pixel member). The hash
is computed the same way in Python (``matches_archive``) and in Spark (``archive_condition``), so the restore plan,
build_manifest and reassemble agree on which archives a tranche holds.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..io.uris import is_s3

_HASH = re.compile(r"(\d+)-(\d+)/(\d+)")
MAX_HASH_BUCKETS = 1 << 20


@dataclass(frozen=True)
class Tranche:
    """A parsed ``--tranche``: archive prefixes, a hash range and/or an instance limit."""

    prefixes: tuple[str, ...] = ()
    hash_range: tuple[int, int, int] | None = None  # (low, high, modulus)
    limit: int | None = None

    @property
    def bounds_archives(self) -> bool:
        """True when the tranche names archives (prefix or hash), not only a number of instances."""
        return bool(self.prefixes) or self.hash_range is not None

    def archive_terms(self) -> Tranche | None:
        """The tranche without its ``limit:`` (what build_manifest and restore planning take), or None."""
        return Tranche(self.prefixes, self.hash_range) if self.bounds_archives else None

    def matches_archive(self, uri: str) -> bool:
        """True when the archive ``uri`` is in this tranche's archives (always, for a limit alone)."""
        if self.prefixes and not uri.startswith(self.prefixes):
            return False
        if self.hash_range is not None:
            low, high, modulus = self.hash_range
            return low <= archive_hash(uri, modulus) <= high
        return True

    def archive_condition(self, column: Any) -> Any:
        """The same test as ``matches_archive`` as a Spark Column over a column of archive URIs."""
        from pyspark.sql import functions as F

        cond = F.lit(True)
        if self.prefixes:
            any_prefix = F.lit(False)
            for p in self.prefixes:
                any_prefix = any_prefix | column.startswith(p)
            cond = cond & any_prefix
        if self.hash_range is not None:
            low, high, modulus = self.hash_range
            bucket = F.pmod(F.crc32(column.cast("binary")), F.lit(modulus))
            cond = cond & bucket.between(low, high)
        return cond & column.isNotNull()

    def __str__(self) -> str:
        terms = []
        if self.prefixes:
            terms.append("prefix:" + ",".join(self.prefixes))
        if self.hash_range is not None:
            terms.append("hash:{}-{}/{}".format(*self.hash_range))
        if self.limit is not None:
            terms.append(f"limit:{self.limit}")
        return ";".join(terms)


def archive_hash(uri: str, modulus: int) -> int:
    """The archive's stable hash bucket: CRC-32 of its URI (UTF-8) mod ``modulus`` (Spark's ``crc32`` agrees)."""
    return zlib.crc32(uri.encode("utf-8")) % modulus


def _bad(text: str, why: str) -> ConfigError:
    return ConfigError("bad_tranche", f"{text!r}: {why}; expected prefix:URI[,URI...], hash:A-B/M or limit:N, "
                                      "joined by ';'")


def parse_tranche(text: str | None) -> Tranche | None:
    """Parse the ``--tranche`` grammar (see the module docstring); None or blank means the whole delivery."""
    if text is None or not text.strip():
        return None
    values: dict[str, Any] = {}
    for term in (t.strip() for t in text.split(";")):
        if not term:
            continue
        kind, sep, rest = term.partition(":")
        kind = kind.strip().lower()
        if not sep or not rest.strip():
            raise _bad(text, f"term {term!r} has no value")
        if kind in values:
            raise _bad(text, f"{kind} given twice")
        rest = rest.strip()
        if kind == "prefix":
            prefixes = [p.strip() for p in rest.split(",") if p.strip()]
            if not prefixes:
                raise _bad(text, "no prefix")
            # Local archive URIs are absolute paths (the listing makes them so); a relative prefix would match none.
            values[kind] = tuple(p if is_s3(p) or "://" in p else _absolute(p) for p in prefixes)
        elif kind == "hash":
            m = _HASH.fullmatch(rest)
            if not m:
                raise _bad(text, f"hash range {rest!r} is not A-B/M")
            low, high, modulus = (int(g) for g in m.groups())
            if not (0 < modulus <= MAX_HASH_BUCKETS and 0 <= low <= high < modulus):
                raise _bad(text, f"hash range needs 0 <= A <= B < M <= {MAX_HASH_BUCKETS}")
            values[kind] = (low, high, modulus)
        elif kind == "limit":
            if not rest.isdigit() or int(rest) < 1:
                raise _bad(text, f"limit {rest!r} is not a positive whole number")
            values[kind] = int(rest)
        else:
            raise _bad(text, f"unknown term {kind!r}")
    if not values:
        return None
    return Tranche(prefixes=values.get("prefix", ()), hash_range=values.get("hash"), limit=values.get("limit"))


def _absolute(path: str) -> str:
    """An absolute local prefix that keeps a trailing separator (a folder, not a name beginning)."""
    absolute = os.path.abspath(path)
    return absolute + os.sep if path.endswith(("/", os.sep)) and not absolute.endswith(os.sep) else absolute


def archive_tranche(tranche: Tranche | None, where: str) -> Tranche | None:
    """The tranche for a step that works on archives (build_manifest, restore): ``limit:`` has no meaning there."""
    if tranche is not None and tranche.limit is not None:
        raise ConfigError("bad_tranche", f"limit:N counts instances, which {where} does not plan; use prefix: or "
                                         "hash: here (reassemble takes all three)")
    return tranche


TRANCHE_HELP = ("bound this run to part of the delivery: prefix:URI[,URI...] (archives under these), hash:A-B/M "
                "(archives whose CRC-32 of the URI mod M is in [A, B]) or limit:N (N instances); join terms with ';'")
