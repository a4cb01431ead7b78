"""The generated tables in docs/ list exactly the cases that exist, and all of them passed when generated.

Regenerate them with ``python tests/reliability/report.py`` after adding, renaming or removing a case.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_hubft_reliability_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load("report")


def _section(key: str) -> str:
    start, end = report.MARKERS[key]
    path = report.DOCS[key]
    text = path.read_text()
    assert start in text and end in text, \
        f"{path.relative_to(report.REPO)} lacks the {key} section: run tests/reliability/report.py"
    return text[text.index(start):text.index(end)]


def _table_column(section: str, column: int) -> list[str]:
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    cells = [re.split(r"(?<!\\)\|", row)[column + 1].strip() for row in rows[1:]]
    return [c.strip("`") for c in cells]


def test_the_error_table_lists_every_bad_input_case_once():
    source = (HERE / "test_bad_inputs.py").read_text()
    cases = re.findall(r'^    "([a-z0-9-]+)": Case\(', source, flags=re.M)
    assert len(cases) >= 30
    listed = _table_column(_section("errors"), 1)
    assert sorted(listed) == sorted(cases)


def test_the_survival_table_lists_every_campaign_test_and_only_existing_ones():
    listed = _table_column(_section("survival"), 3)
    recording = {
        (path.name, name)
        for path in HERE.glob("test_*.py")
        for name, body in re.findall(r"^def (test_\w+)\((.*?)(?=^def |\Z)", path.read_text(), flags=re.M | re.S)
        if re.search(r"^\s+survival\(", body, flags=re.M)
    }
    assert recording, "no test records a survival row"
    for file, name in recording:
        assert any(entry == f"{file}::{name}" or entry.startswith(f"{file}::{name}[") for entry in listed), \
            f"{file}::{name} is not in the survival table of docs/reliability.md"
    for entry in listed:
        path, _, rest = entry.partition("::")
        name, _, param = rest.partition("[")
        file = HERE / path if (HERE / path).is_file() else report.REPO / "tests" / path
        assert report.referenced_test_exists(f"{file.relative_to(report.REPO)}::{name}"), entry
        assert not param or f'"{param.removesuffix("]")}"' in file.read_text(), entry


def test_every_referenced_test_exists():
    missing = [n for n in report.REFERENCED if not report.referenced_test_exists(n)]
    assert not missing, f"renamed or removed: {missing}; update REFERENCED in tests/reliability/report.py"


@pytest.mark.parametrize("key", ["survival", "errors"])
def test_the_committed_tables_come_from_a_passing_run(key):
    section = _section(key)
    assert "FAILED" not in section and "NOT RUN" not in section


def test_main_writes_each_table_into_its_own_doc_and_check_compares_them(tmp_path, monkeypatch):
    # Without running the campaign: no test ran, so every referenced row reads NOT RUN, which is enough here.
    monkeypatch.setattr(pytest, "main", lambda args, plugins: 0)
    docs = {"survival": tmp_path / "reliability.md", "errors": tmp_path / "errors.md"}
    docs["survival"].write_text("# Reliability\n\nHand-written prose.\n")
    for key, path in docs.items():
        monkeypatch.setitem(report.DOCS, key, path)
    assert report.main([]) == 0
    survival, errors = docs["survival"].read_text(), docs["errors"].read_text()
    assert survival.startswith("# Reliability\n\nHand-written prose.\n\n" + report.MARKERS["survival"][0])
    assert "errors:start" not in survival and errors.startswith(report.MARKERS["errors"][0])
    assert report.main(["--check"]) == 0
    docs["errors"].write_text(errors.replace("| Message |", "| Messages |"))
    assert report.main(["--check"]) == 1
    assert "Messages" in docs["errors"].read_text()  # --check writes nothing
