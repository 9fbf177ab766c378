"""Where a campaign keeps its state under ``work``: the data are the state of record, not Prefect's database."""

from __future__ import annotations

from dataclasses import dataclass

from ..io.uris import join_uri


@dataclass(frozen=True)
class CampaignLayout:
    """The datasets of one campaign, all under ``work`` (a local folder or an s3:// prefix).

    The names match ``emr.WorkLayout`` (manifest, ledger, runs), so a campaign and ``emr/submit.py`` can share
    a work prefix.
    """

    work: str

    @property
    def manifest(self) -> str:
        return join_uri(self.work, "manifest")

    @property
    def ledger(self) -> str:
        return join_uri(self.work, "ledger")

    @property
    def runs(self) -> str:
        return join_uri(self.work, "runs")

    @property
    def computations(self) -> str:
        return join_uri(self.work, "computations")

    @property
    def restore_ledger(self) -> str:
        return join_uri(self.work, "restore_ledger")

    @property
    def reports(self) -> str:
        """One JSON report per finished flow run (counts only)."""
        return join_uri(self.work, "campaign", "reports")


def campaign_layout(work: str) -> CampaignLayout:
    """The layout of ``work`` (trailing slashes dropped, so keys do not get empty segments)."""
    return CampaignLayout(work.rstrip("/") if work not in ("/", "") else work)
