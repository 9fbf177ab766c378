"""Typed errors. Each carries a short machine-readable ``reason`` and the ledger
``status`` an instance gets when the error stops it."""

from __future__ import annotations


class ReassemblyError(Exception):
    """Base error: ``reason`` is a stable code, ``detail`` is for humans."""

    status = "failed"

    def __init__(self, reason: str, detail: str = "", *, uri: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.uri = uri
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The error as one line: ``reason: detail (uri)``."""
        text = self.reason if not self.detail else f"{self.reason}: {self.detail}"
        return f"{text} ({self.uri})" if self.uri else text

    def __str__(self) -> str:
        return self.one_line()


class HeaderError(ReassemblyError):
    """The header member (DICOM JSON) cannot make a valid dataset."""

    status = "invalid_header"


class PixelError(ReassemblyError):
    """The pixel member cannot make valid Pixel Data for its header."""

    status = "invalid_pixels"


class ArchiveError(ReassemblyError):
    """An archive is damaged, not a tar, or unreadable."""

    status = "unreadable_archive"


class NotRestoredError(ArchiveError):
    """The object is still in Glacier (S3 said InvalidObjectState)."""

    status = "not_restored"


class StorageError(ReassemblyError):
    """Storage could not be reached or refused a request."""

    status = "failed"


class AlreadyExistsError(StorageError):
    """A conditional write found an object already in place."""


class NotFoundError(ReassemblyError):
    """A requested UID, member or object does not exist."""

    status = "failed"


class CriteriaError(ReassemblyError):
    """A selection criterion is malformed; raised before any work starts."""


class ConfigError(ReassemblyError):
    """A configuration file or flag is invalid."""


class StowError(ReassemblyError):
    """A DICOMweb STOW-RS request failed."""


class EmrError(ReassemblyError):
    """An EMR request was refused, or a step or job run ended without success.

    ``reason`` is one of: aws_error, aws_unreachable, step_failed, step_cancelled,
    step_interrupted, job_failed, job_cancelled, wait_timeout, step_not_found.
    """
