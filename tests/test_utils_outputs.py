"""utils/outputs.py: one writer for run outputs: atomic, strict JSON, plots without a display."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.outputs import atomic_path, new_figure, save_figure, to_json, write_json, write_run


def test_write_run_writes_strict_json_and_the_report(tmp_path):
    results = {"fps": np.float32(12.5), "frames": np.int64(3), "boxes": np.zeros((1, 4)), "loss": torch.tensor(0.25),
               "auc": float("nan"), "edge": -math.inf, "out": tmp_path, "sizes": (1, 2), 7: "seven"}  # fmt: skip
    path = write_run(tmp_path / "new" / "run", results, report="# Report")
    text = path.read_text()
    assert path.name == "results.json" and text.endswith("}\n") and "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"fps": 12.5, "frames": 3, "boxes": [[0.0] * 4], "loss": 0.25, "auc": None, "edge": None,
                                "out": str(tmp_path), "sizes": [1, 2], "7": "seven"}  # fmt: skip
    assert (path.parent / "report.md").read_text() == "# Report\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.md", "results.json"]  # no .partial left


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_partial(tmp_path):
    path = write_json(tmp_path / "results.json", {"run": 1})
    with pytest.raises(TypeError):
        write_json(path, {"run": 2, "oops": object()})  # not JSON: fails while writing
    assert json.loads(path.read_text()) == {"run": 1}
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "model.onnx") as partial:
        partial.write_bytes(b"half a model")
        raise RuntimeError("killed mid-export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_to_json_leaves_plain_values_alone():
    assert to_json({"a": [1, "x", None, True, 2.5]}) == {"a": [1, "x", None, True, 2.5]}


def test_save_figure_writes_a_png_and_closes_the_figure(tmp_path):
    import matplotlib.pyplot as plt

    figure, axes = new_figure(1, 2, figsize=(4, 2))
    assert len(axes) == 2 and plt.get_backend().lower() == "agg"
    axes[0].plot([0, 1], [1, 0])
    path = save_figure(figure, tmp_path / "plot.png")
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(figure.number) and [p.name for p in tmp_path.iterdir()] == ["plot.png"]
