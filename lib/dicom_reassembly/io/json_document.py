"""Small JSON documents a user hands us (job configuration, selection criteria), read with bounds.

``json.loads`` recurses once per nesting level, so a document nested thousands deep raises RecursionError,
and a file of any size would be read whole. Here both are bounded before parsing: the read stops one byte
past ``max_bytes``, and the nesting depth is counted by a linear scan of the text. Callers turn the typed
errors into their own one-line errors.
"""

from __future__ import annotations

import json
import re
from typing import Any

from . import reads

# Real documents are tiny (conf/emr.json: 4 KB, 5 levels); these bounds leave room for long IN lists.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
MAX_DOCUMENT_DEPTH = 32

# A JSON string (escapes included) or one bracket: strings are skipped whole, so brackets inside them do not count.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


class DocumentTooLarge(ValueError):
    """The document is larger than the size bound."""


class DocumentTooDeep(ValueError):
    """The document nests objects and arrays deeper than the depth bound."""


def read_document_bytes(uri: str, max_bytes: int = MAX_DOCUMENT_BYTES) -> bytes:
    """The bytes of a local file or S3 object, at most ``max_bytes`` of them; storage errors pass through."""
    with reads.open_read(uri) as stream:
        data = reads.read_exact(stream, max_bytes + 1)
    if len(data) > max_bytes:
        raise DocumentTooLarge(f"larger than {max_bytes} bytes")
    return bytes(data)


def nesting_depth(text: str, stop_above: int | None = None) -> int:
    """How deep objects and arrays nest in ``text`` (0 for a scalar); stops counting once past ``stop_above``."""
    depth = deepest = 0
    for m in _TOKENS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_above is not None and deepest > stop_above:
                    break
        elif c in "]}":
            depth -= 1
    return deepest


def loads_document(text: str, max_depth: int = MAX_DOCUMENT_DEPTH) -> Any:
    """``json.loads(text)`` after checking the nesting depth; raises DocumentTooDeep or json.JSONDecodeError."""
    if nesting_depth(text, max_depth) > max_depth:
        raise DocumentTooDeep(f"nested deeper than {max_depth} levels")
    return json.loads(text)
