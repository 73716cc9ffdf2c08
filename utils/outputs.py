"""Run outputs, written one way by every script: results.json and report.md atomically, plots through one helper.

    write_run(out, results, report)   # OUT/results.json (+ OUT/report.md): what every script leaves behind
    with atomic_path(out / "model.onnx") as partial: export(partial)   # any other artefact, all or nothing

- atomic_path(path): a hidden temporary path beside `path` (.NAME.partial, same folder, so same file system); on
  success it is renamed onto `path` with os.replace (a reader sees the old file or the new one, never half of one),
  on any failure it is removed, so a crash never leaves something that looks like a finished output.
- write_json / write_text: through atomic_path. JSON is indented by 2 with a final newline; numpy scalars and
  arrays, tensors and paths become plain JSON; NaN and infinities become null, so the file is strict JSON that jq,
  browsers and every JSON reader accept (Python's json would write the non-standard NaN).
- new_figure / save_figure: matplotlib on its Agg backend (no display needed, chosen once, here), the figure saved
  atomically and closed (an open figure per run would pile up in a long process).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULTS_NAME = "results.json"
REPORT_NAME = "report.md"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write `path` through: renamed onto it when the block ends, removed if the block raises."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)  # only still there when the block failed: nothing half-written is left


def to_json(value: Any) -> Any:
    """`value` as plain JSON types: numpy/torch scalars and arrays to numbers and lists, paths to strings, tuples
    and sets to lists, dict keys to strings, NaN and +-inf to None."""
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars, torch tensors
        return to_json(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as partial:
        partial.write_text(text)
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Write `data` (see to_json) to `path` as indented strict JSON with a final newline, atomically; returns the path."""
    return write_text(path, json.dumps(to_json(data), indent=2, allow_nan=False) + "\n")


def write_run(out: str | Path, results: dict[str, Any], report: str | None = None) -> Path:
    """A run's outputs in OUT (created if needed): results.json, and report.md when given; returns results.json's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if report is not None:
        write_text(out / REPORT_NAME, report if report.endswith("\n") else report + "\n")
    return write_json(out / RESULTS_NAME, results)


def new_figure(*subplots: int, **options: Any) -> tuple[Any, Any]:
    """matplotlib's (figure, axes) on the Agg backend: plt.subplots(*subplots, **options) without a display."""
    import matplotlib  # here, not at the top: most scripts never plot, and matplotlib costs ~0.3 s to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*subplots, **options)


def save_figure(figure: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure to `path` atomically (its format from the suffix) and close it; returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as partial:
            figure.savefig(partial, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(figure)
    return path
