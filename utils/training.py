"""The training core shared by the training scripts: RNG state, atomic checkpoints, the resume check, the schedule.

A checkpoint holds whatever a script needs to continue its run (model, optimizer, scheduler, scaler, step, args,
RNG state, and the script's own extras) in one dict written atomically; resume reads it on the CPU, refuses a run
with other run-defining flags in one line, and puts every state back.

    state = rng_state()                                   # python, numpy, torch CPU and every CUDA device
    save_checkpoint(out / "checkpoint.pt", model=model, optimizer=optimizer, step=step, args=args, rng=state)
    checkpoint = load_checkpoint(path, required=("model", "step"), context="cannot resume from")
    check_resume_flags(checkpoint["args"], args, RUN_DEFINING_FLAGS, path)
    restore_states(checkpoint, path, model=model, optimizer=optimizer)
    restore_rng_state(checkpoint["rng"])
"""

from __future__ import annotations

import argparse
import math
import os
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.cli import UserError

######################################################################################################################
# RNG state


def rng_state() -> dict[str, Any]:
    """Every RNG a training process draws from, as CPU objects: python, numpy, torch's CPU generator and, once CUDA is
    in use, every CUDA device's (torch.cuda.get_rng_state_all gives CPU bytes, so the state loads on any machine)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # an unused CUDA has drawn nothing: no context to start
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back rng_state(); its tensors must be CPU ByteTensors (torch.set_rng_state refuses any other device), so
    load checkpoints with map_location='cpu'. CUDA states are restored for the devices this machine has."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


######################################################################################################################
# Checkpoints


def _stored(part: Any) -> Any:
    """What a checkpoint keeps of `part`: a module's, optimizer's, scheduler's or scaler's state dict, flags as a dict."""
    if isinstance(part, argparse.Namespace):
        return vars(part)
    return part.state_dict() if hasattr(part, "state_dict") else part


def save_checkpoint(path: str | Path, **parts: Any) -> None:
    """Write `parts` as one dict to `path` atomically: into `<name>.partial` beside it, fsync, then os.replace, so an
    interrupted save leaves the previous checkpoint as it was and never a half file under the real name.

    Parts with a state_dict() (model, optimizer, scheduler, GradScaler) are stored as their state dict, an
    argparse.Namespace (args) as a dict; anything else (step, history, rng_state()) as it is.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    contents = {name: _stored(part) for name, part in parts.items()}
    try:
        with partial.open("wb") as file:
            torch.save(contents, file)
            file.flush()
            os.fsync(file.fileno())  # on disk before the rename: a crash right after it must not leave an empty file
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)  # a failed save (disk full, Ctrl-C) leaves nothing that looks like a checkpoint
        raise


def _first_line(error: BaseException) -> str:
    """An exception's first line, short enough for a one-line error (its type when it has no message)."""
    text = str(error).strip()
    return text.splitlines()[0][:160] if text else type(error).__name__


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", required: Iterable[str] = (), context: str = "cannot load"
) -> dict[str, Any]:
    """The dict save_checkpoint wrote, its tensors on `map_location` (keep 'cpu' when it holds RNG state).

    A missing, unreadable or foreign file (not a dict, or without a `required` key) is a one-line UserError that
    starts with `context` and the path, e.g. 'cannot resume from runs/x.pt: no such file'.
    """
    try:
        contents = torch.load(path, map_location=map_location, weights_only=False)  # our own files: they hold NumPy's RNG
    except FileNotFoundError:
        raise UserError(f"{context} {path}: no such file") from None
    except Exception as error:  # truncated or not a torch file: pickle, zip and torch raise their own types
        raise UserError(f"{context} {path}: not readable ({type(error).__name__}: {_first_line(error)})") from None
    required = list(required)
    missing = [key for key in required if key not in contents] if isinstance(contents, dict) else required
    if not isinstance(contents, dict) or missing:
        raise UserError(f"{context} {path}: not a checkpoint of this script" + (f" (no {', '.join(missing)})" if missing else ""))
    return contents


def restore_states(checkpoint: Mapping[str, Any], path: str | Path, **objects: Any) -> None:
    """Load each object's state dict from checkpoint[name] (model, optimizer, scheduler, scaler); an empty saved state
    is skipped: a disabled GradScaler (CPU run) saves {}, and a CUDA run resuming it starts a fresh scale.
    A state that does not fit (other architecture, other parameter groups) is a one-line UserError."""
    try:
        for name, target in objects.items():
            if checkpoint[name]:
                target.load_state_dict(checkpoint[name])  # an optimizer moves its state to each parameter's device
    except (RuntimeError, ValueError, KeyError) as error:
        raise UserError(f"cannot resume from {path}: it does not fit this model ({_first_line(error)})") from None


######################################################################################################################
# The resume check


def _flag_text(value: Any) -> str:
    """A flag's value as typed on the command line: '120 160', not [120, 160] or (120, 160)."""
    return " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def check_resume_flags(
    saved_args: Mapping[str, Any], args: argparse.Namespace, run_defining_flags: Iterable[str], path: str | Path
) -> None:
    """Refuse, in one line naming every differing flag, to resume a checkpoint whose run-defining flags (those that
    change the model, the data it sees or the optimizer) differ from this run's: it would not continue that run."""
    differing = []
    for flag in run_defining_flags:
        saved, asked = _flag_text(saved_args.get(flag)), _flag_text(getattr(args, flag))
        if saved != asked:
            differing.append(f"--{flag.replace('_', '-')} {saved}, this run has {asked}")
    if differing:
        raise UserError(f"cannot resume from {path}: it was trained with " + "; ".join(differing))


######################################################################################################################
# Learning-rate schedule


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, floor: float = 0.0, start_factor: float = 0.01
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from `start_factor` of the full rate at step 0 to the full rate at warmup_steps, then cosine
    decay to `floor` (a share of the full rate) at total_steps, flat after it (a longer --max-steps on resume)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return start_factor + (1 - start_factor) * step / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
