"""Execute a notebook headless with nbclient and write an HTML copy.

    python notebooks/run_notebook.py notebooks/manifest_analysis.ipynb --html out/notebook/manifest_analysis.html

The kernel runs with the current interpreter, from the notebook's folder, with this process's environment
(so MANIFEST, LEDGER, ... reach it). The HTML comes from nbconvert when it is installed; otherwise from the
small exporter below, which renders what this project's notebooks produce: Markdown cells, code, text streams,
errors, HTML tables and PNG images (inline, base64), so the page is one self-contained file.
On a failing cell the HTML is still written (with the error) and the exit code is 1.

The kernel's memory is measured from outside it: after each cell, the runner reads the kernel process's
``VmHWM`` (its peak resident set, kept by the Linux kernel, so no spike between two readings is missed) and
``VmRSS`` from ``/proc/<pid>/status``. The executed notebook carries them in ``metadata.kernel_memory``; the last
cell's ``VmHWM`` is the run's peak (``--executed`` writes it out). Nothing is added to the notebook's code.
"""

from __future__ import annotations

import argparse
import base64
import html
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from traitlets.config import Config

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
pre { background: #f6f8fa; padding: .6em .8em; overflow-x: auto; font-size: 12.5px; border-radius: 4px; }
pre.input { border-left: 3px solid #9ab; }
pre.stderr { background: #fff6e5; }
pre.error { background: #fdecea; color: #8a1c1c; }
table.dataframe { border-collapse: collapse; font-size: 12.5px; margin: .5em 0; }
table.dataframe th, table.dataframe td { border: 1px solid #ccd; padding: 2px 8px; text-align: right; }
table.dataframe thead th { background: #eef1f5; }
img { max-width: 100%; }
code { background: #f1f1f1; padding: 0 3px; border-radius: 3px; }
.output { margin: .3em 0 1.2em 0; }
"""


# ------------------------------------------------------------------------------------------------ execution


def read_process_memory(pid: int) -> dict[str, int] | None:
    """``{"rss_bytes", "peak_rss_bytes"}`` of a live process from /proc (Linux), or None where there is none."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return {"rss_bytes": int(fields["VmRSS"].split()[0]) * 1024,
                "peak_rss_bytes": int(fields["VmHWM"].split()[0]) * 1024}
    except (OSError, KeyError, ValueError):
        return None


class KernelMemory:
    """Readings of the kernel's memory after each executed cell (``on_cell_executed``)."""

    def __init__(self, client: NotebookClient) -> None:
        self.client = client
        self.by_cell: list[dict[str, int]] = []

    def __call__(self, cell: Any = None, cell_index: int = -1, **_: Any) -> None:
        provisioner = getattr(self.client.km, "provisioner", None)
        pid = getattr(provisioner, "pid", None)
        reading = read_process_memory(pid) if pid else None
        if reading is not None:
            self.by_cell.append({"cell": cell_index, **reading})

    def summary(self) -> dict[str, Any]:
        """The run's peak (the last VmHWM read) and every reading, for ``metadata.kernel_memory``."""
        peak = self.by_cell[-1]["peak_rss_bytes"] if self.by_cell else None
        return {"peak_rss_bytes": peak, "by_cell": self.by_cell,
                "source": "VmHWM and VmRSS of the kernel process, /proc/<pid>/status, read after each cell"}


def execute_notebook(path: str, env: Mapping[str, str] | None = None, timeout: int = 600,
                     kernel_name: str | None = None) -> tuple[nbformat.NotebookNode, CellExecutionError | None]:
    """Run every cell of ``path``; returns the executed notebook and the error that stopped it, if any.

    ``nb.metadata.kernel_memory`` holds the kernel's peak resident memory (``peak_rss_bytes``; None where /proc
    is not there) and the readings after each cell.
    """
    nb = nbformat.read(path, as_version=4)
    name = kernel_name or nb.metadata.get("kernelspec", {}).get("name") or "python3"
    workdir = os.path.dirname(os.path.abspath(path))
    kernel_env = {**os.environ, **(env or {})}
    # The debugger's frozen-modules warning is noise in a headless run.
    kernel_env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    # The kernel talks to this process over Unix sockets (ZeroMQ's IPC transport) in a private folder instead of
    # TCP on localhost, which any local user could reach (ipykernel warns about it); a short path keeps the
    # sockets under the 107-byte limit of a Unix socket name.
    with tempfile.TemporaryDirectory(prefix="nb-") as ipc_dir:
        config = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(ipc_dir, "kernel")}})
        client = NotebookClient(nb, timeout=timeout, kernel_name=name, resources={"metadata": {"path": workdir}},
                                config=config)
        memory = KernelMemory(client)
        client.on_cell_executed = memory
        try:
            client.execute(env=kernel_env)
        except CellExecutionError as exc:
            return nb, exc
        finally:
            nb.metadata["kernel_memory"] = memory.summary()
    return nb, None


# ---------------------------------------------------------------------------------------------------- HTML


def _inline_md(text: str) -> str:
    """Inline Markdown on already-escaped text: code spans, bold, italics, links."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(f"<code>{part[1:-1]}</code>")
            continue
        part = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", part)
        part = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<em>\1</em>", part)
        part = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', part)
        out.append(part)
    return "".join(out)


def markdown_to_html(source: str) -> str:
    """A small Markdown subset: ATX headings, paragraphs, bullet and numbered lists, fenced code."""
    blocks: list[str] = []
    para: list[str] = []
    items: list[str] = []
    list_tag = ""
    fence: list[str] | None = None

    def flush() -> None:
        nonlocal list_tag
        if para:
            blocks.append(f"<p>{_inline_md(' '.join(para))}</p>")
            para.clear()
        if items:
            blocks.append(f"<{list_tag}>" + "".join(f"<li>{_inline_md(i)}</li>" for i in items) + f"</{list_tag}>")
            items.clear()
            list_tag = ""

    for raw in source.splitlines():
        if fence is not None:
            if raw.strip().startswith("```"):
                blocks.append(f"<pre>{html.escape(chr(10).join(fence))}</pre>")
                fence = None
            else:
                fence.append(raw)
            continue
        line = html.escape(raw.rstrip())
        if raw.strip().startswith("```"):
            flush()
            fence = []
        elif m := re.match(r"^(#{1,6})\s+(.*)$", line):
            flush()
            level = len(m.group(1))
            blocks.append(f"<h{level}>{_inline_md(m.group(2).strip())}</h{level}>")
        elif m := re.match(r"^\s*(?:[-*+]|(\d+)[.)])\s+(.*)$", line):
            tag = "ol" if m.group(1) else "ul"
            if para or (items and tag != list_tag):
                flush()
            list_tag = tag
            items.append(m.group(2))
        elif not line.strip():
            flush()
        elif items and raw.startswith((" ", "\t")):
            items[-1] += " " + line.strip()
        else:
            if items:
                flush()
            para.append(line.strip())
    if fence is not None:
        blocks.append(f"<pre>{html.escape(chr(10).join(fence))}</pre>")
    flush()
    return "\n".join(blocks)


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _output_html(output: Mapping[str, Any]) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        cls = "stderr" if output.get("name") == "stderr" else "stdout"
        return f'<pre class="{cls}">{html.escape(_ANSI.sub("", _text(output.get("text", ""))))}</pre>'
    if kind == "error":
        trace = _ANSI.sub("", "\n".join(output.get("traceback", [])))
        head = f"{output.get('ename', '')}: {output.get('evalue', '')}"
        return f'<pre class="error">{html.escape(trace or head)}</pre>'
    data = output.get("data", {})
    if "image/png" in data:
        png = _text(data["image/png"]).replace("\n", "")
        base64.b64decode(png, validate=True)  # a broken image should fail here, not in the reader's browser
        return f'<img src="data:image/png;base64,{png}" alt="figure">'
    if "text/html" in data:
        return _text(data["text/html"])
    if "text/markdown" in data:
        return markdown_to_html(_text(data["text/markdown"]))
    if "text/plain" in data:
        return f"<pre>{html.escape(_text(data['text/plain']))}</pre>"
    return ""


def builtin_html(nb: nbformat.NotebookNode, title: str, show_input: bool = True) -> str:
    """The executed notebook as one self-contained HTML page (no nbconvert needed)."""
    body: list[str] = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            body.append(markdown_to_html(_text(cell.source)))
        elif cell.cell_type == "code":
            if show_input and _text(cell.source).strip():
                body.append(f'<pre class="input">{html.escape(_text(cell.source))}</pre>')
            outs = [_output_html(o) for o in cell.get("outputs", [])]
            body.append('<div class="output">' + "\n".join(o for o in outs if o) + "</div>")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def notebook_html(nb: nbformat.NotebookNode, title: str, exporter: str = "auto") -> str:
    """HTML for an executed notebook: nbconvert's when available (``auto``), else the built-in exporter."""
    if exporter not in ("auto", "nbconvert", "builtin"):
        raise ValueError(f"exporter must be auto, nbconvert or builtin, got {exporter!r}")
    if exporter != "builtin":
        try:
            from nbconvert import HTMLExporter
        except ImportError:
            if exporter == "nbconvert":
                raise
        else:
            body, _ = HTMLExporter(embed_images=True).from_notebook_node(nb, resources={"metadata": {"name": title}})
            return body
    return builtin_html(nb, title)


def run_notebook(path: str, html_path: str | None = None, executed_path: str | None = None,
                 env: Mapping[str, str] | None = None, timeout: int = 600,
                 exporter: str = "auto") -> tuple[nbformat.NotebookNode, CellExecutionError | None]:
    """Execute ``path``, then write the HTML copy and (optionally) the executed notebook, even after an error."""
    nb, error = execute_notebook(path, env=env, timeout=timeout)
    title = os.path.splitext(os.path.basename(path))[0]
    if html_path:
        page = notebook_html(nb, title, exporter)
        os.makedirs(os.path.dirname(os.path.abspath(html_path)), exist_ok=True)
        with open(html_path, "w", encoding="utf-8") as f:
            f.write(page)
    if executed_path:
        os.makedirs(os.path.dirname(os.path.abspath(executed_path)), exist_ok=True)
        nbformat.write(nb, executed_path)
    return nb, error


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: run the notebook, write its HTML; exit 1 when a cell fails."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebook")
    p.add_argument("--html", help="write the HTML copy here")
    p.add_argument("--executed", help="write the executed notebook (.ipynb) here")
    p.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    p.add_argument("--exporter", choices=("auto", "nbconvert", "builtin"), default="auto")
    args = p.parse_args(argv)
    _, error = run_notebook(args.notebook, args.html, args.executed, timeout=args.timeout, exporter=args.exporter)
    if error is not None:
        lines = _ANSI.sub("", str(error)).strip().splitlines()
        print(f"run_notebook: a cell failed: {lines[-1] if lines else type(error).__name__}", file=sys.stderr)
        if args.html:
            print(f"run_notebook: the HTML with the error is at {args.html}", file=sys.stderr)
        return 1
    if args.html:
        print(f"notebook: {os.path.abspath(args.html)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
