"""What every script shares at its edges: one-line errors, device choice, seeding, thread count."""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np
import torch


class UserError(Exception):
    """An expected failure (bad input, no weights offline...): printed as one line, exit code 1."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when it has none), cut at `limit` characters: what a
    one-line UserError quotes of a library's multi-line error."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends '(default: X)' to every flag's help unless the help already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        return help_text if "default:" in help_text else super()._get_help_string(action)


class OutOfRange(argparse.ArgumentTypeError):
    """A flag's value parsed but lies outside its range: bad input (exit 1, one line), not a usage error (exit 2)."""


def number(kind: type = int, low: float | None = None, high: float | None = None) -> Callable[[str], Any]:
    """An argparse `type` that parses int/float and checks low <= value <= high: `type=number(int, 1)`.

    With utils.cli.ArgumentParser, a value out of range ends the run before any work with one line and exit code 1;
    text that is no number at all stays a usage error (argparse's usage line, exit 2).
    """

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n' if kind is int else ''} {kind.__name__}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = (
                f"from {low} to {high}"
                if low is not None and high is not None
                else f"at least {low}"
                if low is not None
                else f"at most {high}"
            )
            raise OutOfRange(f"must be {bounds}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


class ArgumentParser(argparse.ArgumentParser):
    """argparse with HelpFormatter by default, and out-of-range numbers (see number()) as one line + exit code 1."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        if isinstance(sys.exc_info()[1].__context__ if sys.exc_info()[1] else None, OutOfRange):
            print(f"error: {message}", file=sys.stderr)
            sys.exit(1)
        super().error(message)


def run_cli(main: Callable[[Any], Any], args: Any) -> None:
    """Run a script's main(args); a UserError becomes one line on stderr and exit code 1, no traceback."""
    try:
        main(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a UserError, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def set_threads(threads: int | None) -> int:
    """Fix the intra-op thread count (timings are only comparable at a fixed count); returns it."""
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
