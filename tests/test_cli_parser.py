"""The command line's arguments: every command parses, and a mistake is one line with exit code 2."""

import pytest

from ffnbench.bench.cli_parser import build_parser


def test_every_command_parses_its_arguments():
    parser = build_parser("ffnbench")
    run = parser.parse_args(["run", "--preset", "quick", "--out", "runs/x"])
    assert (run.command, run.preset, run.out) == ("run", "quick", "runs/x")
    decide = parser.parse_args(["decide", "a", "b", "--budget", "kld_mean<=1e-3"])
    assert decide.run_dirs == ["a", "b"] and decide.budget == "kld_mean<=1e-3"
    export = parser.parse_args(["export", "--design", "B", "--out", "x", "--no-bias"])
    assert export.bias is False and export.d_model is None  # FFNConfig's own defaults apply


def test_a_mistake_is_one_line_and_exit_code_2(capsys):
    with pytest.raises(SystemExit) as stopped:
        build_parser("ffnbench").parse_args(["export", "--out", "x"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--design" in err and "see `ffnbench export --help`" in err
