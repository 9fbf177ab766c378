"""The package's layers hold: import-linter checks the contracts in pyproject.toml ([tool.importlinter]).

The core (io, dicom, manifest, selection, reassembly, records) never imports the deployment side (restore,
emr, stow.command, estimate, cli, intake, dicomweb, campaign, testing); dicom imports no Spark and no boto3;
the core packages import only the layers below them. `make lint` runs the same check.
"""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import ROOT


def test_import_contracts_are_kept() -> None:
    lint_imports = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    out = subprocess.run([lint_imports, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    assert "Contracts: 3 kept, 0 broken." in report, report
