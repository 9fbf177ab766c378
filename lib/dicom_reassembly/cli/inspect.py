"""``dicom-reassembly inspect``: key tags of a Part 10 file, and any tags asked for."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from ..errors import NotFoundError

log = logging.getLogger(__name__)


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


def add_inspect_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``inspect``."""
    i = sub.add_parser("inspect", help="print key tags of a .dcm file")
    i.add_argument("file")
    i.add_argument("tags", nargs="*", help="GGGGEEEE, (GGGG,EEEE) or keyword")
    i.set_defaults(func=cmd_inspect)
    return i
