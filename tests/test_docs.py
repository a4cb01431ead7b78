"""The README and docs/ stay true to the repository: excerpts equal their files, links resolve, no issue numbers.

A YAML block whose first line is a comment naming a file (``# recipes/configs/digits.yaml (abridged)``) claims to be
an excerpt of that file: it may leave keys out, never change a value. Issue numbers mean nothing to a reader of the
docs, so the text says the thing itself instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]

YAML_BLOCK = re.compile(r"^```ya?ml\n(.*?)^```", flags=re.M | re.S)
# The first line of an excerpt: "# " and a path (with a directory, or a .yaml/.yml name), then a space or the end.
CLAIM = re.compile(r"#\s+((?:[\w.-]+/)+[\w.-]+|[\w.-]+\.ya?ml)(?=\s|$)")
# "issue 8", "Issues #12 and", and a bare "#12" (not "&#12;", not "file.md#12", not a heading "# 12").
ISSUE_REF = re.compile(r"\bissues?\s*#?\d+|(?<![&\w/])#\d{1,5}\b", flags=re.I)
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
CODE = re.compile(r"^```.*?^```|`[^`\n]*`", flags=re.M | re.S)


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def excerpts(text: str) -> list[tuple[str, str]]:
    """The YAML blocks of a page that name a file on their first line, as (path, block)."""
    found = []
    for block in YAML_BLOCK.findall(text):
        claim = CLAIM.match(block.partition("\n")[0])
        if claim:
            found.append((claim.group(1), block))
    return found


def differences(shown, actual, where: str = "") -> list[str]:
    """Where an excerpt's value is not the file's: keys may be left out of mappings, nothing else may change."""
    here = where or "the top level"
    if isinstance(shown, dict):
        if not isinstance(actual, dict):
            return [f"{here}: a mapping in the excerpt, {actual!r} in the file"]
        found = []
        for key, value in shown.items():
            path = f"{where}.{key}" if where else str(key)
            found += differences(value, actual[key], path) if key in actual else [f"{path}: not in the file"]
        return found
    if isinstance(shown, list) and isinstance(actual, list) and len(shown) == len(actual):
        return [d for i, (s, a) in enumerate(zip(shown, actual)) for d in differences(s, a, f"{where}[{i}]")]
    # Types too: 5 is not "5", and 1 is not 1.0 or True.
    if type(shown) is not type(actual) or shown != actual:
        return [f"{here}: {shown!r} in the excerpt, {actual!r} in the file"]
    return []


def excerpt_problems(path: str, block: str, root: Path = REPO) -> list[str]:
    file = root / path
    if not file.is_file():
        return [f"names {path}, which does not exist"]
    return [f"{path}: {d}" for d in differences(yaml.safe_load(block), yaml.safe_load(file.read_text()))]


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings (a repeated heading gets -1, -2, ...)."""
    found, counts = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", CODE.sub("", text), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = counts[slug] = counts.get(slug, -1) + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def link_problems(page: Path) -> list[str]:
    problems = []
    for target in LINK.findall(CODE.sub("", page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{_rel(page)}: ({target}) points at {path}, which does not exist")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            problems.append(f"{_rel(page)}: ({target}) points at no heading of {_rel(file)}")
    return problems


def test_the_readme_stays_a_short_doorway():
    assert README.stat().st_size < 15_000, "README.md is 15 KB or more: move the detail into docs/"
    for key in ("survival", "errors"):
        assert f"<!-- {key}:start -->" not in README.read_text(), f"the generated {key} table belongs in docs/"


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in LINK.findall(README.read_text())}
    pages = set(PAGES[1:])
    assert {REPO / "docs" / n for n in ("benchmarks.md", "reliability.md", "errors.md")} <= pages
    assert pages <= linked, f"not linked from README.md: {sorted(_rel(p) for p in pages - linked)}"


def test_every_config_excerpt_equals_the_file_it_names():
    found = [(page, path, block) for page in PAGES for path, block in excerpts(page.read_text())]
    problems = [f"{_rel(page)}: {p}" for page, path, block in found for p in excerpt_problems(path, block)]
    assert not problems, "\n".join(problems)
    assert any(path == "recipes/configs/digits.yaml" for _, path, _ in found), "the README's demo config excerpt"


def test_the_excerpt_check_catches_changed_values_and_missing_files(tmp_path):
    (tmp_path / "c.yaml").write_text("a: {b: 1, c: [x, '5']}\nd: 0.5\ne: true\n")
    assert excerpts("```yaml\n# c.yaml (abridged)\na: {b: 1}\n```\n```yaml\ndata:\n  x: 1\n```\n") == \
        [("c.yaml", "# c.yaml (abridged)\na: {b: 1}\n")]
    assert excerpt_problems("c.yaml", "# c.yaml\na: {c: [x, '5']}\ne: true\n", tmp_path) == []
    assert excerpt_problems("c.yaml", "a: {b: 2}\n", tmp_path) == ["c.yaml: a.b: 2 in the excerpt, 1 in the file"]
    assert excerpt_problems("c.yaml", "a: {c: [x, 5]}\n", tmp_path) == \
        ["c.yaml: a.c[1]: 5 in the excerpt, '5' in the file"]
    assert excerpt_problems("c.yaml", "d: 0.5\ne: 1\nf: 1\n", tmp_path) == \
        ["c.yaml: e: 1 in the excerpt, True in the file", "c.yaml: f: not in the file"]
    assert excerpt_problems("gone.yaml", "a: 1\n", tmp_path) == ["names gone.yaml, which does not exist"]


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_no_page_cites_issue_numbers(page):
    cited = [line for line in page.read_text().splitlines() if ISSUE_REF.search(line)]
    assert not cited, f"{_rel(page)} cites issue numbers; say the thing itself:\n" + "\n".join(cited)


@pytest.mark.parametrize("text, cites", [
    ("as issue 8 asked", True), ("see Issue #12", True), ("issues 3 and 4", True), ("fixed in #123.", True),
    ("(#7)", True), ("# 1 throughput", False), ("## Results", False), ("| # | metric |", False),
    ("colour #1e90ff", False), ("[x](benchmarks.md#1-throughput)", False), ("&#8212;", False),
    ("an issue with the loader", False), ("echo hi  # 2 cores", False),
])
def test_the_issue_number_pattern(text, cites):
    assert bool(ISSUE_REF.search(text)) is cites


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_relative_link_points_at_a_file_that_exists(page):
    problems = link_problems(page)
    assert not problems, "\n".join(problems)


def test_the_link_check_catches_missing_files_and_anchors(tmp_path):
    (tmp_path / "a.md").write_text("# A\n\n## Results on CPU\n\n```bash\n# not a heading\n```\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#results-on-cpu) [web](https://x.org/y) `[code](nowhere.md)`\n"
                    "[gone](c.md) [a comment in code is no heading](a.md#not-a-heading)\n")
    assert [p.split(": ", 1)[1] for p in link_problems(page)] == [
        "(c.md) points at c.md, which does not exist",
        f"(a.md#not-a-heading) points at no heading of {tmp_path / 'a.md'}"]
    assert anchors("# A\n## A\n## B c\n") == {"a", "a-1", "b-c"}


def test_the_readme_counts_what_the_generated_tables_hold():
    readme = README.read_text()
    survival = (REPO / "docs" / "reliability.md").read_text()
    errors = (REPO / "docs" / "errors.md").read_text()
    faults = int(re.search(r"\((\d+) faults, \d+ survived\)", " ".join(survival.split())).group(1))
    cases = len(re.findall(r"^\| .* \| `[a-z0-9-]+` \|", errors, flags=re.M))
    assert f"{faults} of {faults} injected faults survived" in " ".join(readme.split())
    assert f"{cases} bad-input cases" in " ".join(readme.split())
