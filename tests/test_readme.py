"""README.md is the front page: short, its links resolve, and every figure its results table quotes equals the report.

A figure in the results table carries its source right after it, as an HTML comment that GitHub does not show:

    0.983 <!-- eval_main_person: held_out/main_match -->

reads reports/eval_main_person/results.json, key "held_out", then key "main_match", and must print as 0.983 (the
value rounded to the decimals shown). A source may name another JSON file of the report's folder
(`tensorrt_convert/h200_results.json: ...`). In a path, `key=value` picks the one list entry whose `key` is `value`
(`rows/scheme=static/speedup_batch1`). A figure is a number (commas allowed, then optionally a unit: x, %, ms, MB, M)
or a `code` span, which must equal the value's text. Figures no report holds belong in docs/, not in this table.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 300  # issue 23: the front page stays short; the manuals live in docs/

# a figure, then its source comment: (figure, report source, JSON path)
FIGURE = re.compile(r"(`[^`]+`|(?<![\w.])\d[\d,]*(?:\.\d+)?)(?:\s?(?:x|%|ms|MB|M))?\s*<!--\s*([\w./-]+):\s*(.+?)\s*-->")
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+")
TARGET = re.compile(r"[<>]=\s*$")  # a target (">= 0.97") is not a measured figure
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```")


def results_rows(text: str) -> list[str]:
    """The body rows of the table in the README's "## Results and reports" section."""
    section = text.split("\n## Results and reports\n", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    return table[2:]  # after the header and the |---| line


def quoted_figures(row: str) -> list[tuple[str, str, str]]:
    return FIGURE.findall(row)


def report_value(source: str, path: str) -> Any:
    file = REPO / "reports" / (source if source.endswith(".json") else f"{source}/results.json")
    value = json.loads(file.read_text())
    for key in path.split("/"):
        if isinstance(value, list):
            field, _, wanted = key.partition("=")
            picked = [item for item in value if str(item.get(field)) == wanted]
            if len(picked) != 1:
                raise KeyError(f"{key!r} picks {len(picked)} entries")
            value = picked[0]
        else:
            value = value[key]
    return value


def printed_as(figure: str, value: Any) -> bool:
    """Whether `figure`, as the README prints it, is `value` at the printed precision."""
    if figure.startswith("`"):
        return figure.strip("`") == str(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    digits = figure.replace(",", "")
    decimals = len(digits.partition(".")[2])
    return f"{value:.{decimals}f}" == digits


def figure_mismatches(rows: list[str]) -> list[str]:
    problems = []
    for row in rows:
        name = row.split("|")[1].strip()
        for figure, source, path in quoted_figures(row):
            try:
                value = report_value(source, path)
            except (OSError, KeyError, TypeError) as error:
                problems.append(f"{name}: {figure} <- {source}: {path}: not found ({error})")
                continue
            if not printed_as(figure, value):
                problems.append(f"{name}: README says {figure}, {source}: {path} is {value!r}")
    return problems


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    found, fenced = set(), False
    for line in markdown.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def broken_links(markdown: Path) -> list[str]:
    """Relative links (and their #anchors into markdown files) that lead nowhere."""
    broken = []
    for target in LINK.findall(markdown.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (markdown.parent / path).resolve() if path else markdown
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file)):
            broken.append(target)
    return broken


def test_readme_is_a_short_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) < MAX_README_LINES, f"README.md has {len(lines)} lines: move the detail to a page under docs/"


def test_every_results_figure_equals_its_report():
    rows = results_rows(README.read_text())
    assert len(rows) >= 8, rows
    assert sum(len(quoted_figures(row)) for row in rows) >= 30
    assert figure_mismatches(rows) == []


def test_every_report_is_quoted_and_linked_from_its_row():
    rows = results_rows(README.read_text())
    reports = {path.parent.name for path in (REPO / "reports").glob("*/results.json")}
    quoted = set()
    for row in rows:
        for name in {source.split("/")[0] for _, source, _ in quoted_figures(row)}:
            quoted.add(name)
            assert f"](reports/{name}/)" in row, f"the row quoting {name} does not link reports/{name}/: {row[:80]}"
    assert quoted == reports


def test_every_decimal_in_the_results_table_names_its_source():
    for row in results_rows(README.read_text()):
        bare = FIGURE.sub("", row)
        for number in DECIMAL.finditer(bare):
            assert TARGET.search(bare[: number.start()]), f"{number.group()} has no <!-- report: path --> in: {row[:80]}"


def test_a_figure_that_drifted_is_caught():
    row = next(row for row in results_rows(README.read_text()) if "<!-- quantise:" in row)
    figure, source, path = quoted_figures(row)[0]
    drifted = row.replace(figure, "9.99", 1)
    assert figure_mismatches([row]) == []
    assert figure_mismatches([drifted]) == [f"`quantise.py`: README says 9.99, {source}: {path} is {report_value(source, path)!r}"]
    assert not printed_as("0.984", 0.9834) and printed_as("0.983", 0.9834) and printed_as("1,406", 1406)
    assert printed_as("`yolox_nano`", "yolox_nano") and not printed_as("`240`", "320")


def test_readme_links_resolve_and_link_every_docs_page():
    assert broken_links(README) == []
    linked = {(REPO / target.partition("#")[0]).resolve() for target in LINK.findall(README.read_text())}
    pages = {page.resolve() for page in DOCS.glob("*.md")}
    assert pages, "docs/ holds the manuals"
    assert sorted(page.name for page in pages - linked) == []


def test_docs_pages_links_resolve():
    broken = {page.name: broken_links(page) for page in sorted(DOCS.glob("*.md"))}
    assert {name: links for name, links in broken.items() if links} == {}


def test_a_broken_link_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A page: `here`\n\n```bash\n# not a heading\n```\n[ok](#a-page-here) [gone](missing.md) [bad](#not-a-heading)\n")
    assert broken_links(page) == ["missing.md", "#not-a-heading"]
