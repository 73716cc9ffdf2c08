"""report.ipynb: the committed notebook carries a real run's outputs (every code cell, the machine named, every
section), and executing it afresh with nbclient, on this interpreter's kernel, runs every section without an error
and writes nothing into the repository."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest
from conftest import REPO

NOTEBOOK = REPO / "report.ipynb"
SECTIONS = 12  # one per deliverable, track_verify included
HEADING = re.compile(r"^## (\d+)\. ", re.MULTILINE)
MACHINE_LABELS = ("date (UTC)", "platform", "CPU", "GPU", "Python", "torch")
# What the scripts write to --out: none of it may land in the repository during a run of the notebook
ARTEFACT_SUFFIXES = {".json", ".jsonl", ".md", ".png", ".jpg", ".pt", ".onnx", ".engine", ".db", ".journal", ".mp4", ".csv"}


def output_text(cell) -> str:
    """Everything a code cell printed or displayed as text (streams, markdown, plain), joined."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        for mime in ("text/markdown", "text/plain"):
            if mime in output.get("data", {}):
                parts.append(output.data[mime])
    return "\n".join(parts)


def code_cells_by_section(notebook) -> dict[int, list]:
    """Section number -> the code cells after its `## N.` heading, up to the next heading (two headings in one
    markdown cell share the cells that follow it)."""
    sections: dict[int, list] = {}
    current: list[int] = []
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            numbers = [int(number) for number in HEADING.findall(cell.source)]
            if numbers or cell.source.lstrip().startswith("## "):
                current = numbers
                for number in numbers:
                    sections.setdefault(number, [])
        elif cell.cell_type == "code":
            for number in current:
                sections[number].append(cell)
    return sections


def errors_in(notebook) -> list[str]:
    return [
        f"{output.ename}: {output.evalue}"
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.output_type == "error"
    ]


def assert_complete(notebook) -> None:
    """No error anywhere; every code cell has output; every section ran a cell that showed something."""
    assert errors_in(notebook) == []
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    silent = [cell.source.splitlines()[0] for cell in code if not cell.get("outputs")]
    assert silent == [], f"code cells without output: {silent}"
    sections = code_cells_by_section(notebook)
    assert sorted(sections) == list(range(1, SECTIONS + 1))
    for number, cells in sections.items():
        assert any("ran in" in output_text(cell) or "GET /" in output_text(cell) for cell in cells), f"section {number} ran nothing"
        assert any(output.output_type == "display_data" for cell in cells for output in cell.outputs), f"section {number} showed no table"


def test_committed_notebook_has_outputs_in_every_cell_and_names_the_machine():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert_complete(notebook)
    machine = output_text(next(cell for cell in notebook.cells if cell.cell_type == "code"))
    for label in MACHINE_LABELS:
        assert f"| {label}" in machine, f"the first code cell does not name the {label}"
    assert re.search(r"\| date \(UTC\) \| \d{4}-\d\d-\d\d \d\d:\d\d \|", machine)
    assert NOTEBOOK.stat().st_size < 2_000_000  # pictures are shrunk before they are stored


def test_section_parser_finds_shared_headings_and_notices_a_missing_one():
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("## 1. one"),
            nbformat.v4.new_code_cell("a = 1"),
            nbformat.v4.new_markdown_cell("## 2. two\n\n## 3. three"),
            nbformat.v4.new_code_cell("b = 2"),
            nbformat.v4.new_markdown_cell("## What was not run"),
            nbformat.v4.new_code_cell("c = 3"),
        ]
    )
    sections = code_cells_by_section(notebook)
    assert {number: [cell.source for cell in cells] for number, cells in sections.items()} == {1: ["a = 1"], 2: ["b = 2"], 3: ["b = 2"]}
    with pytest.raises(AssertionError):
        assert_complete(notebook)  # no outputs, and sections 4-12 are missing


@pytest.mark.slow
def test_notebook_executes_every_section_on_this_interpreter_and_writes_nothing_into_the_repo(tmp_path):
    import nbclient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None  # the committed outputs must not count
    started = time.time()
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
    try:
        client.execute()
    finally:
        nbformat.write(notebook, tmp_path / "report.ipynb")  # a copy to look at; the committed notebook is never touched
    assert_complete(notebook)
    machine = output_text(next(cell for cell in notebook.cells if cell.cell_type == "code"))
    assert f"({sys.executable})" in machine, "the kernel ran another Python than this one (its packages may differ)"
    assert files_written_since(REPO, started) == [], "the notebook wrote into the repository"


def files_written_since(root: Path, started: float) -> list[str]:
    """Script artefacts under root (hidden folders such as .venv and .git skipped) modified since `started`."""
    written = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in files:
            path = Path(folder) / name
            if path.suffix in ARTEFACT_SUFFIXES and path.stat().st_mtime >= started:
                written.append(str(path.relative_to(root)))
    return sorted(written)


def test_files_written_since_sees_new_artefacts_and_skips_hidden_folders(tmp_path):
    (tmp_path / "old.json").write_text("{}")
    started = time.time() + 1e-3
    time.sleep(0.01)
    for relative in ("runs/x/results.json", "runs/x/notes.txt", ".venv/lib/cache.json", "plot.png"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("new")
    assert files_written_since(tmp_path, started) == ["plot.png", "runs/x/results.json"]
