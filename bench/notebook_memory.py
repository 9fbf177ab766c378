"""The analysis notebook's kernel memory at two sizes (issue 20): it must not grow with the manifest.

The notebook runs headless (notebooks/run_notebook.py) on the benchmark's own pipeline outputs (its manifest and
ledger, and the catalogue beside the ledger when reassemble wrote one) and on a generated manifest of
``--notebook-instances`` instances (10^5 by default) with its ledger and catalogue
(``dicom_reassembly.testing.synthetic``: the manifest's schema, 5-20 KB of header JSON per instance). The peak
is the kernel process's VmHWM, read from /proc by the runner after every cell (the kernel's own high-water mark,
so no spike is missed). tests/test_notebook.py asserts the same bound on the sample delivery.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "manifest_analysis.ipynb")
MIB = 2**20


def _runner() -> Any:
    spec = importlib.util.spec_from_file_location("run_notebook", os.path.join(ROOT, "notebooks", "run_notebook.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def run_once(name: str, manifest: str, ledger: str, catalog: str, instances: int, html: str) -> dict[str, Any]:
    """One headless run: the kernel's peak memory, its wall time, and what it read."""
    t0 = time.perf_counter()
    nb, error = _runner().run_notebook(NOTEBOOK, html, env={"MANIFEST": manifest, "LEDGER": ledger,
                                                            "CATALOG": catalog})
    wall = time.perf_counter() - t0
    memory = nb.metadata.get("kernel_memory", {})
    peak = memory.get("peak_rss_bytes")
    first = (memory.get("by_cell") or [{}])[0].get("peak_rss_bytes")
    return {"name": name, "instances": instances, "manifest_bytes": _folder_bytes(manifest),
            "catalog": os.path.isdir(catalog), "wall_s": wall, "error": None if error is None else str(error)[-500:],
            "kernel_peak_mib": peak / MIB if peak else None,
            "kernel_after_imports_mib": first / MIB if first else None}


def measure_notebook_memory(small: dict[str, Any], work: str, large_instances: int,
                            log: Callable[[str], None]) -> dict[str, Any]:
    """The notebook on the pipeline's outputs (``small``: instances, manifest_uri, ledger_uri) and on a generated
    manifest of ``large_instances``; both peaks and their ratio."""
    from dicom_reassembly.testing.synthetic import write_synthetic_outputs

    ledger = small["ledger_uri"]
    log(f"notebook on the pipeline's outputs ({small['instances']} instances)")
    runs = [run_once("pipeline", small["manifest_uri"], ledger, ledger.rstrip("/") + "_catalog", small["instances"],
                     os.path.join(work, "notebook", "pipeline.html"))]
    log(f"  kernel peak {runs[0]['kernel_peak_mib'] or float('nan'):.0f} MiB")
    log(f"generating a {large_instances:,}-instance manifest, ledger and catalogue (testing.synthetic)")
    t0 = time.perf_counter()
    truth = write_synthetic_outputs(os.path.join(work, "notebook-large"), large_instances)
    generated = time.perf_counter() - t0
    log(f"  {generated:.0f} s; notebook on it")
    runs.append(run_once("generated", truth["manifest"], truth["ledger"], truth["catalog"], large_instances,
                         os.path.join(work, "notebook", "generated.html")))
    log(f"  kernel peak {runs[1]['kernel_peak_mib'] or float('nan'):.0f} MiB")
    small_peak, large_peak = runs[0]["kernel_peak_mib"], runs[1]["kernel_peak_mib"]
    return {"runs": runs, "generate_s": generated,
            "ratio": large_peak / small_peak if small_peak and large_peak else None, "bound": 2.0}


def render_notebook_memory(results: dict[str, Any]) -> list[str]:
    """report.md's section: both runs and the ratio against the bound."""
    nm = results.get("notebook_memory")
    if not nm:
        return []
    lines = ["## Notebook kernel memory (VmHWM of the kernel process)", "",
             "| run | instances | manifest MB | catalogue | kernel peak MiB | after imports MiB | wall s |",
             "|---|---|---|---|---|---|---|"]
    for r in nm["runs"]:
        peak = "n/a" if r["kernel_peak_mib"] is None else f"{r['kernel_peak_mib']:.0f}"
        base = "n/a" if r["kernel_after_imports_mib"] is None else f"{r['kernel_after_imports_mib']:.0f}"
        lines.append(f"| {r['name']}{' (failed)' if r['error'] else ''} | {r['instances']:,} | "
                     f"{r['manifest_bytes'] / 1e6:,.1f} | {'yes' if r['catalog'] else 'no'} | {peak} | {base} | "
                     f"{r['wall_s']:.1f} |")
    ratio = nm.get("ratio")
    lines += ["", f"Peak ratio, generated / pipeline: {'n/a' if ratio is None else f'{ratio:.2f}'} "
                  f"(bound {nm['bound']:g}); generating the manifest took {nm['generate_s']:.0f} s.", ""]
    return lines
