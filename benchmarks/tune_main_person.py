"""Choose video_main_person.py's defaults on the tuning sequences only, and show what each choice does to the held-out
ones beside it: a coordinate search, one flag at a time, in the order given.

Every candidate setting runs the whole pipeline on every sequence (eval_main_person.evaluate). In each stage the
FIRST value listed is the incumbent (today's default, or the winner so far). The tuning sequences' mean decides which
value is best (main person at IoU >= 0.5, then fewer identity switches while the previous person is still visible;
a tie keeps the incumbent: FPS on a shared machine is too noisy to break ties). The best value replaces the incumbent
only when, on the held-out sequences, the main-person mean (IoU >= 0.5) does not fall AND the mean of identity
switches while the previous person is visible does not rise; otherwise the incumbent stays and the row says
"held-out worse". So a change that helps the tuning set and hurts the held-out set is never kept, and every row shows
both sets side by side. The winner of one stage is the incumbent of the next.

Run:
    python benchmarks/tune_main_person.py --stage detector=ssdlite_person,yolox_nano --stage detector-size=240,360,480 \
        --stage hold-frames=0,2,5 --out runs/tune_main_person
Each --stage is FLAG=V1,V2,...: a video_main_person.py flag without its dashes and the values to try; every stage
starts from the winners so far and the --base flags (FLAG VALUE pairs). Last stdout line: the JSON summary.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import eval_main_person

from utils.cli import ArgumentParser, UserError, run_cli
from utils.outputs import write_run


def parse_stage(text: str) -> tuple[str, list[str]]:
    """'hold-frames=0,2,5' -> ('--hold-frames', ['0', '2', '5']); a UserError for anything else."""
    flag, _, values = text.partition("=")
    candidates = [value for value in values.split(",") if value]
    if not flag or not candidates or flag.startswith("-"):
        raise UserError(f"--stage {text!r}: write FLAG=V1,V2 with a video_main_person.py flag without dashes, e.g. hold-frames=0,5")
    return f"--{flag}", candidates


def tuning_key(row: dict[str, Any]) -> tuple[float, float]:
    """What the search maximises on the tuning sequences: main-person match, then fewer switches while visible."""
    return (row["tuning"]["main_match"], -row["tuning"]["id_switches_while_visible"])


def held_out_worse(candidate: dict[str, Any], incumbent: dict[str, Any]) -> bool:
    """Whether the candidate lowers the held-out main-person mean or raises its switches while visible."""
    if not candidate["held_out"] or not incumbent["held_out"]:
        return False  # nothing held out: the tuning set alone decides (the report says so)
    new, old = candidate["held_out"], incumbent["held_out"]
    return new["main_match"] < old["main_match"] or new["id_switches_while_visible"] > old["id_switches_while_visible"]


def pick(stage_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row to keep: the tuning-best, unless the held-out sequences do worse with it (then the incumbent, listed first)."""
    incumbent, best = stage_rows[0], max(stage_rows, key=tuning_key)  # max() returns the first of equals: the incumbent
    for row in stage_rows:
        row["verdict"] = ""
    if best is not incumbent and held_out_worse(best, incumbent):
        best["verdict"] = "tuning-best, held-out worse"
        best = incumbent
    best["verdict"] = (best["verdict"] + ", kept").lstrip(", ")
    return best


def run_setting(folders: list[Path], flags: dict[str, str], workdir: Path) -> dict[str, Any]:
    """One setting on every sequence, the pipeline's own output silenced (the sweep prints its own table)."""
    pipeline_args = [text for flag, value in flags.items() for text in (flag, value)]
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        scores, groups = eval_main_person.evaluate(folders, pipeline_args, workdir)
    return {"flags": dict(flags), "scores": scores, "tuning": groups["tuning"], "held_out": groups["held-out"]}


def row_text(stage: str, value: str, row: dict[str, Any]) -> str:
    tuning, held_out = row["tuning"], row["held_out"] or {}
    held = lambda key, spec: "-" if held_out.get(key) is None else format(held_out[key], spec)  # noqa: E731
    return (
        f"{stage:<16}{value:>16}{tuning['main_match']:>9.3f}{tuning['id_switches_while_visible']:>7.1f}{tuning['fps_end_to_end']:>7.1f}"
        f"{held('main_match', '.3f'):>10}{held('min_main_match', '.3f'):>8}{held('id_switches_while_visible', '.1f'):>7}"
        f"{held('fps_end_to_end', '.1f'):>7}  {row['verdict']}"
    )


def search(folders: list[Path], stages: list[tuple[str, list[str]]], base: dict[str, str], workdir: Path) -> list[dict[str, Any]]:
    """Coordinate search: each stage tries its values on top of the winners so far and keeps the tuning-best one."""
    chosen = dict(base)
    rows: list[dict[str, Any]] = []
    progress = tqdm(total=sum(len(values) for _, values in stages), unit="setting", desc="tuning", file=sys.stderr)
    header = f"{'stage':<16}{'value':>16}{'tune@.5':>9}{'sw.vis':>7}{'FPS':>7}{'held@.5':>10}{'worst':>8}{'sw.vis':>7}{'FPS':>7}"
    print(header, file=sys.stderr)
    for flag, values in stages:
        stage_rows = []
        for value in values:
            row = run_setting(folders, {**chosen, flag: value}, workdir)
            stage_rows.append({"stage": flag, "value": value, **row})
            progress.update()
        best = pick(stage_rows)
        chosen[flag] = best["value"]
        for row in stage_rows:
            row["kept"] = row is best
            tqdm.write(row_text(flag, row["value"], row), file=sys.stderr)
        rows += stage_rows
    progress.close()
    return rows


def write_report(out: Path, rows: list[dict[str, Any]], chosen: dict[str, str]) -> None:
    """results.json (every row, every sequence) and report.md (the side-by-side table)."""
    lines = [
        "# Tuning video_main_person.py's defaults (benchmarks/tune_main_person.py)",
        "",
        f"Tuning: {', '.join(eval_main_person.TUNING_SEQUENCES)}. Held out: every other sequence. The tuning columns choose; "
        "a choice is kept only if the held-out main-person mean does not fall and its switches while visible do not rise "
        "(else the incumbent, listed first, stays).",
        "",
        "| stage | value | tuning IoU>=0.5 | tuning switches (visible) | held-out IoU>=0.5 | held-out worst | held-out switches (visible) | FPS | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        held = row["held_out"] or {}
        lines.append(
            f"| {row['stage']} | {row['value']} | {row['tuning']['main_match']:.3f} | {row['tuning']['id_switches_while_visible']:.1f} | "
            f"{held.get('main_match', float('nan')):.3f} | {held.get('min_main_match') or float('nan'):.3f} | "
            f"{held.get('id_switches_while_visible', float('nan')):.1f} | {row['tuning']['fps_end_to_end']:.1f} | {row['verdict']} |"
        )
    lines += ["", f"Chosen: `{' '.join(f'{flag} {value}' for flag, value in chosen.items())}`", ""]
    write_run(out, {"chosen": chosen, "rows": rows}, "\n".join(lines))


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", action="append", required=True, help="FLAG=V1,V2,...: one stage of the search (repeatable, in order)")
    parser.add_argument("--base", default="", help='flags every setting shares, one string: "--threads 2" (default: none)')
    eval_main_person.add_sequences_argument(parser)
    parser.add_argument("--out", default=None, help="write results.json and report.md here (default: none)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    stages = [parse_stage(text) for text in args.stage]
    base_list = shlex.split(args.base)
    base = dict(zip(base_list[::2], base_list[1::2], strict=True))
    roots = eval_main_person.sequence_roots(args.sequences)
    folders = eval_main_person.select_sequences(roots, "all")
    if not any(folder.name in eval_main_person.TUNING_SEQUENCES for folder in folders):
        raise UserError(f"none of the tuning sequences ({', '.join(eval_main_person.TUNING_SEQUENCES)}) found: nothing may choose")
    with tempfile.TemporaryDirectory() as workdir:
        rows = search(folders, stages, base, Path(workdir))
    chosen = {**base, **{row["stage"]: row["value"] for row in rows if row["kept"]}}
    if args.out:
        write_report(Path(args.out), rows, chosen)
    summary = {"chosen": chosen, "rows": [{k: row[k] for k in ("stage", "value", "tuning", "held_out", "kept", "verdict")} for row in rows]}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
