import pytest

from utils.cli import ArgumentParser, number


@pytest.mark.parametrize(
    "kind, low, high, text, expected",
    [(int, 1, None, "1", 1), (float, 0, 1, "0.25", 0.25), (float, 0, 1, "1", 1.0), (int, None, 10, "-3", -3)],
)
def test_number_accepts_values_in_range(kind, low, high, text, expected):
    value = number(kind, low, high)(text)
    assert value == expected and type(value) is kind


def parser() -> ArgumentParser:
    built = ArgumentParser(prog="tool")
    built.add_argument("--min-score", type=number(float, 0, 1), default=0.5, help="score floor")
    built.add_argument("--steps", type=number(int, 1), default=3)
    return built


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--min-score", "1.5"], "error: argument --min-score: must be from 0 to 1, got 1.5"),
        (["--steps", "0"], "error: argument --steps: must be at least 1, got 0"),
    ],
)
def test_out_of_range_is_one_line_and_exit_1(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(argv)
    assert exit_info.value.code == 1 and capsys.readouterr().err.strip().splitlines() == [message]


@pytest.mark.parametrize("argv", [["--steps", "2.5"], ["--min-score", "x"], ["--unknown"]])
def test_malformed_values_and_unknown_flags_stay_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(argv)
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("usage: tool")


def test_help_states_defaults():
    assert "(default: 0.5)" in parser().format_help()
