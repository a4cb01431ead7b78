"""Run the reliability campaign and write the "What hubft survives" and error tables from its results.

    .venv/bin/python tests/reliability/report.py           # run the tests, rewrite the two generated sections
    .venv/bin/python tests/reliability/report.py --check   # run the tests, fail if a section is not up to date

The survival table lives in ``docs/reliability.md`` and the error table in ``docs/errors.md``, each between its
markers; the prose around them is hand-written. The tables are made from what the tests recorded
(``survival(...)`` rows, ``error_case`` records with the actual messages) and how they ended, never written by hand.
Tests of the Hub and training pieces that belong to the same campaign are run too and listed from
:data:`REFERENCED`. ``tests/reliability/test_report.py`` checks, without running anything, that the tables list
every case that exists.
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RELIABILITY_DOC = REPO / "docs" / "reliability.md"
ERRORS_DOC = REPO / "docs" / "errors.md"
# Each generated section: the file it lives in, between its two markers.
DOCS = {"survival": RELIABILITY_DOC, "errors": ERRORS_DOC}
MARKERS = {"survival": ("<!-- survival:start -->", "<!-- survival:end -->"),
           "errors": ("<!-- errors:start -->", "<!-- errors:end -->")}

# Campaign tests that live with the piece they test: node id -> (fault, what holds).
REFERENCED = {
    "tests/train/test_finetune.py::test_mid_epoch_resume_is_bit_identical": (
        "an in-process run stopped mid-epoch (fault `raise` after update 7), resumed from `latest`",
        "weights SHA-256, per-step losses and epoch history identical"),
    "tests/train/test_adapters.py::test_an_interrupted_adapter_run_resumes_bit_identical": (
        "an in-process LoRA adapter run (BatchNorm backbone, dropout in the adapters) stopped mid-epoch (fault "
        "`raise` after update 5), resumed from `latest`",
        "adapter_model.safetensors SHA-256 and per-step losses identical"),
    "tests/train/test_equivalence.py::test_a_two_process_run_killed_mid_epoch_resumes_bit_identical": (
        "kill -9 of both processes of a 2-process run (torchrun) mid-epoch, between checkpoints",
        "resumed with torchrun: model.safetensors and every log.jsonl record (losses, LRs, batch digests, epoch "
        "means) identical to the uninterrupted 2-process run"),
    "tests/train/test_equivalence.py::test_a_two_process_checkpoint_is_refused_by_one_process_with_the_difference_named": (
        "resume a 2-process run's checkpoint with 1 process",
        "refused with exit 2 naming `num_processes: checkpoint 2 vs now 1` (the batches and RNG streams would differ)"),
    "tests/hub/test_push.py::test_faults_still_give_exactly_one_commit_with_identical_files": (
        "503 / 429 / 5xx / dropped connections / answers lost after the commit, on a fraction of all requests or "
        "on every commit, upload and repo call of a push",
        "exactly one commit, files identical to the run directory's"),
    "tests/hub/test_push.py::test_retry_after_is_honoured_else_exponential_backoff": (
        "a 429 with `Retry-After`", "the retry waits what the Hub asked, else backs off exponentially"),
    "tests/hub/test_push.py::test_hub_down_gives_a_clear_error_and_a_later_cli_push_finishes": (
        "the Hub down during a push (connections refused, or 503 to everything)",
        "one-line error, run directory unchanged, a later `hubft push` makes exactly one commit"),
    "tests/hub/test_push.py::test_non_finite_weights_are_refused_before_any_request": (
        "a push of weights holding NaN/inf", "refused before any request reaches the Hub"),
    "tests/hub/test_push.py::test_a_staged_file_holding_the_token_is_never_uploaded": (
        "a run-directory file that contains the push's token", "the push is refused; the token is not echoed"),
    "tests/hub/test_push.py::test_a_read_only_token_is_refused_with_a_clear_error": (
        "a push with a read-only token", "refused with a one-line 'not authorised' error"),
    "tests/hub/test_finetune_hub.py::test_the_token_appears_in_no_file_log_output_or_upload": (
        "a canary token in HF_TOKEN through a whole fine-tune that pulls and pushes (in-process)",
        "the canary is in no file, log record, output or uploaded file"),
    "tests/hub/test_server_security.py::test_private_repo_invisible_to_strangers_and_read_only_with_the_read_token": (
        "a private repo on the local Hub", "invisible without a token, read-only with a read token"),
    "tests/hub/test_server_security.py::test_commits_and_downloads_that_escape_the_repo_are_refused": (
        "repo paths with `..`, absolute paths or backslashes in a commit or download",
        "refused by the Hub server"),
}


class Collector:
    """A pytest plugin keeping each test's outcome and recorded properties, in run order."""

    def __init__(self) -> None:
        self.tests: dict[str, dict] = {}

    def pytest_runtest_logreport(self, report) -> None:
        entry = self.tests.setdefault(report.nodeid, {"outcome": "passed", "properties": []})
        if report.failed or (report.skipped and entry["outcome"] == "passed"):
            entry["outcome"] = report.outcome
        if report.when == "call" or (report.when == "setup" and not report.passed):
            entry["properties"] = list(report.user_properties)


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=118, break_long_words=False, break_on_hyphens=False)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _result(outcomes: list[str]) -> str:
    passed = sum(o == "passed" for o in outcomes)
    ok = passed == len(outcomes)
    count = f" ({passed}/{len(outcomes)})" if len(outcomes) > 1 else ""
    return ("survived" if ok else "**FAILED**") + count


def render_survival(tests: dict[str, dict]) -> str:
    rows = []
    for nodeid, entry in tests.items():
        for name, value in entry["properties"]:
            if name == "survival":
                row = json.loads(value)
                rows.append((row["fault"], row["holds"], _result([entry["outcome"]]),
                             nodeid.removeprefix("tests/reliability/")))
    for prefix, (fault, holds) in REFERENCED.items():
        outcomes = [e["outcome"] for n, e in tests.items() if n == prefix or n.startswith(prefix + "[")]
        rows.append((fault, holds, _result(outcomes) if outcomes else "**NOT RUN**", prefix.removeprefix("tests/")))
    failed = sum("FAILED" in r[2] or "NOT RUN" in r[2] for r in rows)
    lines = [
        MARKERS["survival"][0],
        "## What hubft survives",
        "",
        _wrap(f"Generated by `python tests/reliability/report.py` from a run of the tests named in the last column "
              f"({len(rows)} faults, {len(rows) - failed} survived). Every run is CPU-only and deterministic, and "
              "a resumed run is compared with an uninterrupted one. Kills are real `SIGKILL`s at exact points "
              "(`HUBFT_FAULT=point@n:kill`, see `hubft/faults.py`) of `hubft.cli.main` in a process forked from a "
              "pre-imported interpreter (`_zygote.py`, pinned to the console script's entry point by a test), plus "
              "a `kill -9` sent from outside to the `hubft` console script itself. Test paths "
              "are under `tests/reliability/` unless they name another directory of `tests/`."),
        "",
        "| Fault | What holds | Result | Test |",
        "|---|---|---|---|",
        *(f"| {_cell(f)} | {_cell(h)} | {r} | `{_cell(t)}` |" for f, h, r, t in rows),
        MARKERS["survival"][1],
    ]
    return "\n".join(lines)


def render_errors(tests: dict[str, dict]) -> str:
    rows = []
    for nodeid, entry in tests.items():
        for name, value in entry["properties"]:
            if name == "error_case":
                case = json.loads(value)
                state = "" if entry["outcome"] == "passed" else " **(test FAILED)**"
                note = "" if case["untouched"] else " (see the first column)"
                rows.append(f"| {_cell(case['wrong'])} | `{case['id']}` | `{_cell(case['example'])}` | "
                            f"{case['exit']}{note}{state} | {_cell(case['message'])} |")
    lines = [
        MARKERS["errors"][0],
        "## Error messages",
        "",
        _wrap("What `hubft` prints for each foreseeable mistake, generated by `python tests/reliability/report.py` "
              "from the bad-input tests (`tests/reliability/test_bad_inputs.py`). Each is one line on stderr, "
              "`hubft: error: <cause>. Fix: <what to do>`, with no traceback (`--debug` shows it), and leaves the "
              "outputs of an earlier run in `train.output_dir` untouched. Exit codes: 0 success, 1 internal error "
              "(please report it), 2 bad input, 3 training stopped (non-finite loss, disk full), 75 preempted by "
              "SIGTERM after a checkpoint (resume with `--train.resume latest`), 130 interrupted. `<name>` stands "
              "for a path."),
        "",
        "| What is wrong | Case | Example | Exit | Message |",
        "|---|---|---|---|---|",
        *rows,
        MARKERS["errors"][1],
    ]
    return "\n".join(lines)


def referenced_test_exists(nodeid: str) -> bool:
    path, _, name = nodeid.partition("::")
    file = REPO / path
    return file.is_file() and re.search(rf"^def {re.escape(name)}\(", file.read_text(), flags=re.M) is not None


def replace_section(text: str, key: str, section: str) -> str:
    start, end = MARKERS[key]
    if start in text and end in text:
        return re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: section, text, flags=re.S)
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + section + "\n"


def main(argv: list[str]) -> int:
    import pytest

    check = "--check" in argv
    # The tests compare their rows with the tables this run is about to write: not while it writes them.
    os.environ["HUBFT_REGENERATING_DOCS"] = "1"
    collector = Collector()
    # A referenced test that was renamed would stop pytest from running anything: leave it out (NOT RUN).
    targets = ["tests/reliability", *(n for n in REFERENCED if referenced_test_exists(n))]
    # test_report.py checks the docs this run is about to write: leave it out.
    code = pytest.main(["-q", "-p", "no:cacheprovider", "--ignore", str(Path(__file__).with_name("test_report.py")),
                        *targets], plugins=[collector])
    rendered = {"survival": render_survival(collector.tests), "errors": render_errors(collector.tests)}
    stale = []
    for key, section in rendered.items():
        path = DOCS[key]
        text = path.read_text() if path.is_file() else ""
        new = replace_section(text, key, section)
        if new != text:
            stale.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(new)
    if check:
        if stale:
            print(f"out of date: {', '.join(map(str, stale))}: run python tests/reliability/report.py")
            return 1
        return int(code)
    print(f"wrote the survival and error tables into {RELIABILITY_DOC} and {ERRORS_DOC} "
          f"(tests exit code {int(code)})")
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
