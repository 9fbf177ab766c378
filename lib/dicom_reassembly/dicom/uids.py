"""UID syntax (PS3.5 9.1) and the project's own implementation identity."""

from __future__ import annotations

import re

# 2.25 + a fixed 128-bit integer: our ImplementationClassUID (PS3.5 B.2, UUID-derived).
IMPLEMENTATION_CLASS_UID = "2.25.196883724372519938210866398441871012093"
IMPLEMENTATION_VERSION_NAME = "DCMREASM_010"

# Components are "0" or start with a non-zero digit; no empty components.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def uid_problem(uid: str | None) -> str | None:
    """Why ``uid`` is not a valid UID, or None when it is."""
    if uid is None or uid == "":
        return "empty"
    if len(uid) > 64:
        return f"longer than 64 characters ({len(uid)})"
    if not _UID_RE.fullmatch(uid):
        return encoding_problem(uid) or (
            "padded with whitespace" if uid != uid.strip() else "not dot-separated digits without leading zeros")
    return None


def encoding_problem(uid: str) -> str | None:
    """Why ``uid`` would corrupt its encoding (not merely break its syntax), or None; read after "is".

    A NUL ends the value for readers, a backslash splits it into two values, other control
    characters and non-ASCII have no place in the default repertoire UI is written in.
    """
    if "\x00" in uid:
        return "broken by a NUL character"
    if "\\" in uid:
        return "two values joined by a backslash"
    stripped = uid.strip()  # surrounding whitespace is not a value's content: pydicom's UID() strips it
    if not stripped.isascii() or not stripped.isprintable():
        return "holding control or non-ASCII characters"
    return None


def is_valid_uid(uid: str | None) -> bool:
    """True when ``uid`` follows PS3.5 9.1."""
    return uid_problem(uid) is None


def member_uid(member_name: str) -> str:
    """The UID a tar member is named for: its basename minus the last extension.

    A UID is full of dots, so only the final suffix is removed.
    """
    base = member_name.rsplit("/", 1)[-1]
    stem, dot, _ext = base.rpartition(".")
    return stem if dot else base
