"""The README's commands, run or checked as they are written, so the README cannot drift from the code.

Every fenced ``sh`` block and every inline command of README.md is extracted here. The Quickstart's ``make demo`` and
then every command of "Your first ten minutes" run in the README's order in one fresh shell: no venv activated, no
venv on PATH, no SPARK_*/PYSPARK_* variables, in a fresh copy of the repository's working files (symlinks, next to
the real .venv, so no install happens). Everything else is checked as far as it can be without AWS: make targets
with ``make -n``, the command table's synopses against their ``--help``. A command nobody checks fails
``test_every_readme_command_is_checked``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pydicom
import pytest
from helpers import ROOT, dcmftest_ok, require_tool

README = os.path.join(ROOT, "README.md")
SEQUENCE_SECTION = "Your first ten minutes"
# Programs whose inline mentions with arguments are commands to check; a bare name is a mention, not a command.
PROGRAMS = ("dicom-reassembly", "spark-submit", "python", "make", "java", "apt-get")
# What the repository copy needs to run the README; data/ and out/ start empty, as on a fresh clone.
WORKING_FILES = (".venv", "Makefile", "setup.py", "requirements-test.txt", "pyproject.toml", "README.md", "lib",
                 "jobs", "conf", "notebooks", "bench", "emr", "docs")
SHELL_ENV_KEPT = ("HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TERM", "TMPDIR", "JAVA_HOME", "CI")
MARK = "@@@ "


# ------------------------------------------------------------------------------------------- extraction


def read_readme() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def sections(text: str) -> dict[str, str]:
    """Each ``##`` section's body by title (``###`` subsections stay inside their section)."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}


def fenced_blocks(body: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", body, flags=re.MULTILINE | re.DOTALL)


def shell_commands(block: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines left out."""
    commands, current = [], ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1].rstrip() + " "
            continue
        current += line.strip()
        if current and not current.startswith("#"):
            commands.append(" ".join(current.split()))
        current = ""
    return commands


def inline_commands(text: str) -> list[str]:
    """Inline code outside fenced blocks that runs a program with arguments, or a venv script by its path."""
    prose = re.sub(r"^```.*?^```$", "", text, flags=re.MULTILINE | re.DOTALL)
    spans = [s.replace("\\|", "|") for s in re.findall(r"`([^`\n]+)`", prose)]  # a table cell escapes its pipes
    return [s for s in spans if s.startswith(".venv/bin/") or (s.split()[0] in PROGRAMS and len(s.split()) > 1)]


def table_synopses(text: str) -> list[str]:
    """The first column of the Reference's command table."""
    body = sections(text)["Reference"]
    return [m.replace("\\|", "|") for m in re.findall(r"^\| `((?:[^`]|\\\|)+)` \|", body, flags=re.MULTILINE)]


def make_targets(text: str) -> list[str]:
    line = next(ln for ln in sections(text)["Reference"].split("\n\n") if ln.startswith("`make` targets:"))
    listed = re.sub(r"\([^)]*\)", "", line.split(":", 1)[1].split(". ", 1)[0])  # not the asides in brackets
    return re.findall(r"`([a-z][a-z0-9-]*)`", listed)


# ----------------------------------------------------------------------------------------------- checks


def fresh_shell_env() -> dict[str, str]:
    """A login shell's environment: no venv activated or on PATH, no Spark or make variables from this run."""
    env = {k: os.environ[k] for k in SHELL_ENV_KEPT if k in os.environ}
    venv_bins = {os.path.dirname(sys.executable), os.path.join(ROOT, ".venv", "bin")}
    path = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
            if p and os.path.normpath(p) not in venv_bins and not re.search(r"/\.venv[^/]*/bin/?$", p)]
    env["PATH"] = os.pathsep.join(path)
    return env


def run_fresh(command: str, cwd: str = ROOT, timeout: int = 120, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env={**fresh_shell_env(), **extra}, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, check=False)


def help_checks(synopsis: str) -> list[tuple[list[str], list[str]]]:
    """For a synopsis: the ``--help`` command(s) that document it and the flags each must list."""
    words = synopsis.split()
    flags = sorted({w.strip("[]").split("=")[0] for w in words if w.strip("[]").startswith("--")})
    python = [sys.executable]
    if words[0] == "dicom-reassembly":
        subs = [w for w in words[1:3] if re.fullmatch(r"[a-z|]+", w)]
        alternatives = subs[1].split("|") if len(subs) > 1 else [None]
        base = [os.path.join(os.path.dirname(sys.executable), "dicom-reassembly"), subs[0]]
        return [(base + ([a] if a else []) + ["--help"], flags) for a in alternatives]
    if words[0] in ("spark-submit", "python") and words[1].endswith(".py"):
        # The job's own argparse, without starting a JVM: spark-submit hands it these arguments unchanged.
        return [(python + [os.path.join(ROOT, words[1]), "--help"], flags)]
    raise AssertionError(f"no --help check for README command {synopsis!r}: teach tests/test_readme.py")


def check_inline(command: str) -> str | None:
    """Check one inline README command; returns what went wrong, or None."""
    words = command.split()
    if words[0] == "make":
        result = run_fresh(f"make -n {shlex.quote(words[1])}")
        return None if result.returncode == 0 else f"make -n {words[1]}: {result.stdout[-300:]}"
    if command in (".venv/bin/dicom-reassembly", ".venv/bin/spark-submit"):
        result = run_fresh(f"{command} --{'help' if 'dicom' in command else 'version'}", timeout=120)
        return None if result.returncode == 0 else f"{command}: {result.stdout[-300:]}"
    if words[:2] == ["java", "-version"]:
        result = run_fresh("java -version")
        return None if re.search(r'version "17[."]', result.stdout) else f"java -version: {result.stdout}"
    if words[:2] == ["apt-get", "install"]:
        missing = [p for p in words[2:] if run_fresh(f"apt-cache show {shlex.quote(p)}").returncode != 0]
        return f"no such apt package: {missing}" if missing else None
    if words[0] in ("dicom-reassembly", "spark-submit", "python"):
        return None if command in table_synopses(read_readme()) else f"{command!r} is not in the command table"
    return f"no check for README command {command!r}: teach tests/test_readme.py"


# ------------------------------------------------------------------------------------------------ tests


def test_readme_reads_in_five_minutes() -> None:
    text = read_readme()
    assert len(text.encode("utf-8")) < 10_000
    titles = list(sections(text))
    assert titles[:5] == ["Prerequisites", "Quickstart", SEQUENCE_SECTION, "How a Part 10 object is made", "Reference"]
    assert [c for b in fenced_blocks(sections(text)["Quickstart"], "sh") for c in shell_commands(b)] == \
        ["make demo", "make test"]
    for sub in ("### Commands", "### Configuration", "### Layout"):
        assert sub in sections(text)["Reference"], sub


def test_the_criteria_shown_are_the_criteria_file() -> None:
    (shown,) = fenced_blocks(sections(read_readme())[SEQUENCE_SECTION], "json")
    with open(os.path.join(ROOT, "conf", "criteria-example.json"), encoding="utf-8") as f:
        assert json.loads(shown) == json.load(f)


def test_every_readme_command_is_checked() -> None:
    """sh blocks only where they are run; inline commands each with a check that passes."""
    text = read_readme()
    openings = re.findall(r"^```(.*)$", text, flags=re.MULTILINE)[::2]
    assert set(openings) <= {"sh", "json"}, f"fenced blocks other than sh and json are not checked: {openings}"
    for title, body in sections(text).items():
        if title not in ("Quickstart", SEQUENCE_SECTION):
            assert not fenced_blocks(body, "sh"), f"README section {title!r} has a shell block nothing runs"
    inline = inline_commands(text)
    assert {"make test", ".venv/bin/spark-submit", ".venv/bin/dicom-reassembly"} <= set(inline)
    problems = [p for p in (check_inline(c) for c in dict.fromkeys(inline)) if p]
    assert not problems, problems


@pytest.mark.parametrize("synopsis", table_synopses(read_readme()))
def test_the_command_table_matches_each_commands_help(synopsis: str) -> None:
    for argv, flags in help_checks(synopsis):
        result = subprocess.run(argv, cwd=ROOT, text=True, capture_output=True, timeout=120, check=False)
        assert result.returncode == 0, (argv, result.stderr[-500:])
        missing = [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", result.stdout)]
        assert not missing, f"{' '.join(argv)} lists none of {missing}"


def test_every_make_target_the_readme_names_exists() -> None:
    targets = make_targets(read_readme())
    assert {"demo", "test", "notebook"} <= set(targets)
    failed = {t: r.stdout[-200:] for t in targets if (r := run_fresh(f"make -n {t}")).returncode != 0}
    assert not failed, failed


def test_the_venvs_spark_submit_runs_without_activation_with_the_local_settings() -> None:
    """Not activated, PATH's python3 without pyspark: it still finds its Spark, C1-only JIT, conf/ on the classpath."""
    with open(os.path.join(ROOT, ".venv", "bin", "spark-submit"), encoding="utf-8") as ours, \
            open(os.path.join(ROOT, "conf", "venv-spark-submit"), encoding="utf-8") as wrapper:
        if ours.read() != wrapper.read():
            pytest.fail(".venv/bin/spark-submit is not conf/venv-spark-submit: run `make setup`")
    result = run_fresh(".venv/bin/spark-submit --version", SPARK_PRINT_LAUNCH_COMMAND="1")
    assert result.returncode == 0, result.stdout[-1000:]
    launch = next(line for line in result.stdout.splitlines() if line.startswith("Spark Command:"))
    assert "-XX:TieredStopAtLevel=1" in launch.split()
    assert os.path.join(ROOT, "conf") + "/:" in launch
    assert "jdk.incubator.vector" not in result.stdout.replace(launch, "")


@pytest.fixture(scope="module")
def first_ten_minutes(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str], str]:
    """The Quickstart's `make demo`, then each command of the first ten minutes, in one fresh shell."""
    repo = str(tmp_path_factory.mktemp("clone"))
    for name in WORKING_FILES:
        os.symlink(os.path.join(ROOT, name), os.path.join(repo, name))
    commands = ["make demo"] + [c for b in fenced_blocks(sections(read_readme())[SEQUENCE_SECTION], "sh")
                                for c in shell_commands(b)]
    script = "set -eo pipefail\n" + "".join(f"printf '\\n{MARK}%s\\n' {shlex.quote(c)}\n{c}\n" for c in commands)
    result = run_fresh(script, cwd=repo, timeout=1200)
    transcript = result.stdout
    outputs: dict[str, str] = {}
    for chunk in transcript.split("\n" + MARK)[1:]:
        command, _, output = chunk.partition("\n")
        outputs[command] = output
    assert result.returncode == 0, f"README command failed: {list(outputs)[-1:]}\n{transcript[-3000:]}"
    assert list(outputs) == commands
    return repo, outputs, transcript


def _readme_uid() -> str:
    (uid,) = set(re.findall(r"dicom-reassembly uid (2\.25\.\d+)", sections(read_readme())[SEQUENCE_SECTION]))
    return uid


@pytest.mark.e2e
def test_make_demo_is_short_and_says_what_to_try_next(first_ten_minutes) -> None:  # noqa: ANN001
    repo, outputs, _ = first_ten_minutes
    demo = outputs["make demo"].rstrip("\n").splitlines()
    assert len(demo) <= 30, "\n".join(demo)
    uid = _readme_uid()
    assert any(line.split()[:1] == [uid] for line in demo), "the README's UID is not one the demo prints"
    assert f"dicom-reassembly uid {uid}" in demo[-2], "the demo's next command is not the README's first step"
    for written in ("dcm/", "manifest/", "ledger/", "preview.png"):
        assert any(written in line for line in demo[-12:]), written
    with open(os.path.join(repo, "data", "expected.json"), encoding="utf-8") as f:
        expected = json.load(f)
    assert expected["instances"][uid]["status"] == "written"
    assert os.path.isdir(os.path.join(repo, "data", "text")) and os.path.isdir(os.path.join(repo, "data", "images"))


@pytest.mark.e2e
def test_nothing_in_the_first_ten_minutes_warns(first_ten_minutes) -> None:  # noqa: ANN001
    _, _, transcript = first_ten_minutes
    noisy = [line for line in transcript.splitlines()
             if re.search(r"\bWARN(ING)?\b|Traceback|without encryption|incubator", line)]
    assert not noisy, noisy


@pytest.mark.e2e
def test_the_uid_and_inspect_steps_write_and_read_a_valid_object(first_ten_minutes) -> None:  # noqa: ANN001
    repo, outputs, _ = first_ten_minutes
    require_tool("dcmftest")
    uid = _readme_uid()
    path = os.path.join(repo, f"{uid}.dcm")
    assert dcmftest_ok(path)
    ds = pydicom.dcmread(path)
    assert ds.SOPInstanceUID == uid
    inspect_plain, inspect_tags = [o for c, o in outputs.items() if c.startswith("dicom-reassembly inspect")]
    assert f"Modality: {ds.Modality}" in inspect_plain
    assert f"(0028,0010) Rows: {ds.Rows}" in inspect_tags
    assert f"(0028,0011) Columns: {ds.Columns}" in inspect_tags
    assert f"(0028,0100) BitsAllocated: {ds.BitsAllocated}" in inspect_tags


@pytest.mark.e2e
def test_the_criteria_run_selects_what_the_readme_says(first_ten_minutes) -> None:  # noqa: ANN001
    repo, outputs, _ = first_ten_minutes
    (run,) = [o for c, o in outputs.items() if c.startswith("spark-submit jobs/reassemble.py")]
    counts = {m[0]: int(m[1]) for m in re.findall(r"^\s+(\w+)\s+(\d+)$", run, flags=re.MULTILINE)}
    said = re.search(r"It prints (\d+) `written` and (\d+) `filtered_out`", sections(read_readme())[SEQUENCE_SECTION])
    assert said and (counts["written"], counts["filtered_out"]) == (int(said[1]), int(said[2]))
    with open(os.path.join(repo, "data", "expected.json"), encoding="utf-8") as f:
        instances = json.load(f)["instances"].values()
    chosen = [i for i in instances if i["modality"] in ("CT", "MR") and i["study_date"] > "20180101"]
    assert counts["written"] == len(chosen) and counts["filtered_out"] == len(instances) - len(chosen)
    assert re.search(r"^run_id=", outputs["ls out/selected/ledger"], flags=re.MULTILINE)


@pytest.mark.e2e
def test_the_notebook_steps_render_the_runs_they_are_given(first_ten_minutes) -> None:  # noqa: ANN001
    repo, outputs, _ = first_ten_minutes
    html = os.path.join(repo, "out", "notebook", "manifest_analysis.html")
    assert outputs["make notebook"].strip() == f"notebook: {html}"
    (run,) = [o for c, o in outputs.items() if c.startswith("spark-submit jobs/reassemble.py")]
    run_id = re.search(r"^run (\S+)$", run, flags=re.MULTILINE)[1]
    filtered = re.search(r"^\s+filtered_out\s+(\d+)$", run, flags=re.MULTILINE)[1]
    with open(html, encoding="utf-8") as f:
        page = f.read()  # the second run's, on the selection's ledger
    assert run_id in page and re.search(rf"<th>filtered_out</th>\s*<td>{filtered}</td>", page)
