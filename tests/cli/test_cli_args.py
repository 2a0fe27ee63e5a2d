"""The argparse types and limits every command shares (lstmcore._argtypes): their bounds and
their one message form, ``expected <what>, got '<text>'``, and the one thread limit that the
core, LSTMCORE_NUM_THREADS and every ``--threads`` flag enforce."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

import lstmcore
from lstmcore import _argtypes
from lstmcore._argtypes import MAX_THREADS, choices_metavar, duration, integer, threads
from lstmcore.bench import cli as bench_cli
from lstmcore.cli import evaluate, serve, train
from lstmcore.mnist.run import Setting


def refusal(parse: object, text: str) -> str:
    assert callable(parse)
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        parse(text)
    return str(refused.value)


@pytest.mark.parametrize(("low", "high"), [(0, 4), (1, 65535), (-3, -1), (7, 7)])
def test_a_bounded_integer_takes_its_bounds_and_nothing_beyond(low: int, high: int) -> None:
    parse = integer(low, high)
    assert parse(str(low)) == low and parse(str(high)) == high
    assert parse(f" {high} ") == high  # int()'s own tolerance of surrounding blanks
    for text in (str(low - 1), str(high + 1), "x", "1.5", "", "1e3", str(2**70)):
        assert refusal(parse, text) == f"expected an integer in [{low}, {high}], got {text!r}"


def test_an_integer_without_a_maximum_has_none() -> None:
    parse = integer(1)
    assert parse(str(2**70)) == 2**70
    for text in ("0", "-1", "two"):
        assert refusal(parse, text) == f"expected an integer >= 1, got {text!r}"


def test_the_thread_type_is_the_cores_limit() -> None:
    assert MAX_THREADS >= 1024 and MAX_THREADS >= (os.cpu_count() or 1)
    parse = threads()
    assert parse("1") == 1 and parse(str(MAX_THREADS)) == MAX_THREADS
    for text in ("0", str(MAX_THREADS + 1), "two", "-1"):
        assert refusal(parse, text) == f"expected an integer in [1, {MAX_THREADS}], got {text!r}"


def test_a_duration_is_positive_finite_and_bounded() -> None:
    parse = duration("minutes")
    assert parse("1e-9") == 1e-9 and parse("1e6") == 1e6 and parse("2.5") == 2.5
    for text in ("0", "-1", "nan", "inf", "-inf", "1000001", "soon", ""):
        assert refusal(parse, text) == f"expected minutes in (0, 1e6], got {text!r}"
    assert refusal(duration("seconds", 60.0), "61") == "expected seconds in (0, 60], got '61'"


def test_the_integer_wording_is_the_run_settings_wording() -> None:
    """config.json's checks (lstmcore.mnist.run.Setting) and the flags say bounds alike."""
    assert Setting.integer(0, 4).expected == _argtypes.expected_integer(0, 4)
    assert Setting.integer(1).expected == _argtypes.expected_integer(1) == "an integer >= 1"


def test_the_choices_metavar_is_argparses_own_form() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=("a", "bc"))
    assert "{a,bc}" in parser.format_usage()
    assert choices_metavar(("a", "bc")) == "{a,bc}"


def test_usable_cores_is_at_least_one_and_at_most_the_machines() -> None:
    assert 1 <= _argtypes.usable_cores() <= (os.cpu_count() or 1)


def parse_error(parse: object, argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The error lines argparse printed for ``argv`` (it exits with status 2)."""
    assert callable(parse)
    with pytest.raises(SystemExit) as stopped:
        parse(argv)
    assert stopped.value.code == 2
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


@pytest.mark.parametrize("command", ["train", "bench"])
@pytest.mark.parametrize("value", ["0", str(MAX_THREADS + 1), "two"])
def test_every_threads_flag_has_the_one_limit_and_message(
    command: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = train.build_parser() if command == "train" else bench_cli.make_parser()
    lines = parse_error(parser.parse_args, ["--threads", value], capsys)
    want = f"argument --threads: expected an integer in [1, {MAX_THREADS}], got {value!r}"
    assert len(lines) == 1 and lines[0].endswith(want), lines


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["--port", "70000"], "argument --port: expected an integer in [0, 65535], got '70000'"),
        (["--port", "-1"], "argument --port: expected an integer in [0, 65535], got '-1'"),
        (["--max-bytes", "0"], "argument --max-bytes: expected an integer >= 1, got '0'"),
        (
            ["--max-connections", "0"],
            "argument --max-connections: expected an integer >= 1, got '0'",
        ),
        (["--timeout", "0"], "argument --timeout: expected seconds in (0, 1e6], got '0'"),
        (["--timeout", "nan"], "argument --timeout: expected seconds in (0, 1e6], got 'nan'"),
    ],
)
def test_the_servers_flags_use_the_shared_types(
    argv: list[str], want: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused while parsing, before the checkpoint is read (it does not exist here)."""
    lines = parse_error(serve.main, ["missing.npz", *argv], capsys)
    assert len(lines) == 1 and lines[0].endswith(want), lines


def test_train_keeps_its_messages(capsys: pytest.CaptureFixture[str]) -> None:
    lines = parse_error(train.build_parser().parse_args, ["--checkpoint-minutes", "0"], capsys)
    assert lines[0].endswith("argument --checkpoint-minutes: expected minutes in (0, 1e6], got '0'")
    lines = parse_error(train.build_parser().parse_args, ["--shift", "5"], capsys)
    assert lines[0].endswith("argument --shift: expected an integer in [0, 4], got '5'")


@pytest.mark.parametrize("bad", [0, -3, MAX_THREADS + 1])
def test_the_library_refuses_thread_counts_outside_the_limit(bad: int) -> None:
    before = lstmcore.get_num_threads()
    with pytest.raises(ValueError, match=rf"n must be >= 1 and <= {MAX_THREADS}, got {bad}$"):
        lstmcore.set_num_threads(bad)
    assert lstmcore.get_num_threads() == before


@pytest.mark.subprocess
@pytest.mark.parametrize("value", [str(MAX_THREADS + 1), "0", "two"])
def test_the_environment_variable_has_the_same_limit(value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import lstmcore"],
        capture_output=True,
        text=True,
        env={**os.environ, "LSTMCORE_NUM_THREADS": value},
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    want = (
        f"ValueError: LSTMCORE_NUM_THREADS must be a positive integer, at most {MAX_THREADS}, "
        f"got {value!r}"
    )
    assert done.stderr.strip().splitlines()[-1] == want


def test_the_command_lines_offer_the_librarys_precisions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lstmcore import _precision, ops
    from lstmcore.mnist import run

    assert run.PRECISIONS == _precision.NAMES == ("fp32", "bf16")
    assert ops.PRECISIONS == _precision.ACCEPTED == (None, *_precision.NAMES)
    assert set(bench_cli.PRECISIONS) == {*_precision.NAMES, "both"}
    lines = parse_error(evaluate.main, ["missing.npz", "--precision", "fp16"], capsys)
    assert len(lines) == 1 and all(repr(name) in lines[0] for name in _precision.NAMES), lines
