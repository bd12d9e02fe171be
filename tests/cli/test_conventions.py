"""One command-line convention for every command (vhdfs.cli.conventions): the global options
before or after the command name, --progress, and errors under --json. The commands are read
from the parser, so a new command is covered without touching this file."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.vhdimages import make_child, make_dynamic
from vhdfs import progress as progress_module
from vhdfs.cli import build_parser
from vhdfs.progress import Progress, duration

PARSER = build_parser()
COMMANDS = sorted(next(action for action in PARSER._actions
                       if isinstance(action, argparse._SubParsersAction)).choices)


def command_parser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def minimal_arguments(name: str) -> list[str]:
    """What `name` needs to parse: a word per required positional, required options with
    their first choice."""
    words: list[str] = []
    for action in command_parser(name)._actions:
        if not action.option_strings and action.nargs not in ("?", "*"):
            words.append("X")
        elif action.option_strings and action.required:
            words += [action.option_strings[0], action.choices[0] if action.choices else "X"]
    return words


def test_the_commands_are_read_from_the_parser():
    assert {"convert", "commit", "info", "get", "ls", "mount", "upload"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("spelling", [["-q", "-U", "--json", "--progress", "json"],
                                      ["--quiet", "--force-share", "--json", "--progress=json"]])
def test_every_command_takes_the_global_options_after_its_name(name, spelling):
    args = PARSER.parse_args([name, *minimal_arguments(name), *spelling])
    assert args.command == name
    assert (args.quiet, args.force_share, args.json, args.progress) == (True, True, True, "json")


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_takes_the_global_options_before_its_name(name):
    before = PARSER.parse_args(["-q", "-U", "--json", "--progress", "none", name,
                                *minimal_arguments(name)])
    assert (before.quiet, before.force_share, before.json, before.progress) == (
        True, True, True, "none")
    # Not repeated after the name: what came before stays (the command's parser leaves it).
    plain = PARSER.parse_args([name, *minimal_arguments(name)])
    assert (plain.quiet, plain.force_share, plain.json, plain.progress) == (
        False, False, False, None)
    override = PARSER.parse_args(["--progress", "none", name, *minimal_arguments(name),
                                  "--progress", "lines"])
    assert override.progress == "lines"


def test_only_the_named_command_is_imported_even_after_a_valued_option():
    from vhdfs.cli.conventions import command_name

    assert command_name(["--progress", "json", "-q", "convert", "a", "b"]) == "convert"
    assert command_name(["--progress=json", "info", "x"]) == "info"
    parser = build_parser(["--progress", "json", "info", "x"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == ["info"]


# ---------------------------------------------------------------- -q and progress, as run
@pytest.fixture
def chain(tmp_path: Path) -> Path:
    """base.vhd (4 MiB, data in two blocks) <- child.vhd (data at 1 KiB): child.vhd."""
    make_dynamic(tmp_path / "base.vhd")
    return make_child(tmp_path / "child.vhd", tmp_path / "base.vhd")


def test_quiet_after_the_command_name_silences_convert(vhdfs, chain, tmp_path):
    loud = vhdfs("convert", chain, tmp_path / "loud.raw", "--to", "raw")
    assert loud.code == 0 and f"convert {tmp_path / 'loud.raw'}: 100%" in loud.err
    quiet = vhdfs("convert", chain, tmp_path / "quiet.raw", "--to", "raw", "-q")
    assert quiet.code == 0, quiet.err
    assert quiet.err == "" and quiet.out.startswith("wrote ")


def test_commit_q_as_the_maintenance_guide_shows_it(vhdfs, chain):
    done = vhdfs("commit", chain, "-q")
    assert done.code == 0, done.err
    assert done.err == ""  # no progress, and no warning about other children
    assert done.out.startswith("committed ")


def progress_lines(err: str) -> list[dict]:
    lines = [json.loads(line) for line in err.splitlines()]
    assert lines, "no progress line"
    percents = [line["percent"] for line in lines]
    assert percents == sorted(percents) and percents[-1] == 100
    assert lines[-1]["done"] == lines[-1]["total"]
    assert set(lines[-1]) == {"progress", "done", "total", "percent", "elapsed", "rate", "eta"}
    return lines


@pytest.mark.parametrize("where", ["before", "after"])
def test_progress_json_lines_end_at_100_and_stdout_keeps_the_one_result(vhdfs, chain, tmp_path,
                                                                         where):
    out = tmp_path / "flat.vhd"
    words = ["convert", chain, out, "--to", "fixed"]
    argv = (["--progress", "json", "--json", *words] if where == "before"
            else [*words, "--json", "--progress", "json"])
    done = vhdfs(*argv)
    assert done.code == 0, done.err
    lines = progress_lines(done.err)  # every line on stderr is a JSON progress line
    assert lines[-1]["progress"] == f"convert {out}" and lines[-1]["total"] == 4 << 20
    assert done.json()["output"] == str(out)  # stdout: exactly one JSON object


def test_progress_json_of_commit_even_with_quiet(vhdfs, chain):
    done = vhdfs("commit", chain, "-q", "--progress", "json")
    assert done.code == 0, done.err
    lines = progress_lines(done.err)  # -q drops the warning, not the asked-for progress
    assert lines[-1]["progress"] == "commit child.vhd"
    assert lines[-1]["total"] == 1536  # the child's one run of data


def test_progress_none_and_the_mode_does_not_outlive_the_command(vhdfs, chain, tmp_path):
    done = vhdfs("--progress", "none", "convert", chain, tmp_path / "x.raw", "--to", "raw")
    assert done.code == 0 and done.err == ""
    assert Progress("library use", 10, stream=io.StringIO()).mode == "lines"


# ---------------------------------------------------------------- errors under --json
def error_object(run) -> dict:
    lines = run.err_lines()
    assert len(lines) == 1 and ": error: " in lines[0], run.err
    error = run.json()["error"]
    assert set(error) == {"message", "exit_code", "type"}
    assert error["exit_code"] == run.code and lines[0].endswith(error["message"])
    return error


def test_errors_under_json_are_one_line_on_stderr_and_an_error_object(vhdfs, tmp_path):
    missing = vhdfs("info", tmp_path / "missing.vhd", "--json")
    assert missing.code == 5
    assert error_object(missing)["type"] == "ImageIOError"
    plain = vhdfs("info", tmp_path / "missing.vhd")
    assert plain.code == 5 and plain.out == "" and plain.err == missing.err


def test_usage_errors_under_json_too(vhdfs, tmp_path):
    done = vhdfs("convert", tmp_path / "a.vhd", tmp_path / "b.raw", "--to", "raw", "--json",
                 "--bogus")
    assert done.code == 2
    assert "unrecognized arguments: --bogus" in error_object(done)["message"]
    bad_value = vhdfs("--json", "convert", "a", "b", "--to", "nowhere")
    assert bad_value.code == 2 and error_object(bad_value)["type"] == "UsageError"
    assert bad_value.err.startswith("vhdfs convert: error: argument --to: invalid choice")


def test_check_answers_with_its_report_where_fsck_gives_a_code(vhdfs, chain, tmp_path):
    missing = vhdfs("check", tmp_path / "missing.vhd", "--json")
    assert missing.code == 8  # fsck's "could not check": a report, not an error
    assert missing.json()["status"] == "unchecked" and "error" not in missing.json()
    holder = subprocess.Popen(  # another process writes it: --repair is refused
        [sys.executable, "-c", "import sys, time; from vhdfs.sources.local import LocalFile; "
         "held = LocalFile(sys.argv[1], writable=True); print('held', flush=True); "
         "time.sleep(60)", str(chain)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        busy = vhdfs("check", chain, "--repair", "--json")
    finally:
        holder.kill()
        holder.wait()
    assert busy.code == 9  # in use, not checked: a report as well
    assert busy.json()["status"] == "in-use" and "error" not in busy.json()


def test_cat_refuses_json_in_one_line(vhdfs, tmp_path):
    done = vhdfs("cat", tmp_path / "any.vhd", "/x", "--json")
    assert done.code == 2
    assert "for its metadata use vhdfs ls --json" in error_object(done)["message"]


# ---------------------------------------------------------------- the progress helper
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    return clock


def test_the_bar_shows_an_eta_while_running(clock):
    stream = Terminal()
    bar = Progress("convert out.raw", 1000 << 20, stream=stream)
    assert bar.mode == "bar"
    clock.now += 10
    bar.update(250 << 20)  # 25 MiB/s: 30 s left
    assert "25.0% 250 MiB 25 MiB/s, ETA 30s" in stream.getvalue()
    clock.now += 30
    bar.update(1000 << 20)
    bar.finish()
    last = stream.getvalue().rsplit("\r", 1)[-1]
    assert "100.0%" in last and "ETA" not in last and last.endswith("\n")


def test_lines_show_rate_and_eta(clock):
    stream = io.StringIO()
    lines = Progress("upload disk", 400 << 20, stream=stream)
    clock.now += 2
    lines.update(100 << 20)
    lines.finish()
    assert stream.getvalue().splitlines() == [
        "upload disk: 25% (100 MiB of 400 MiB; 50 MiB/s, ETA 6s)",
        "upload disk: 100% (400 MiB of 400 MiB; 200 MiB/s)"]


def test_json_lines_at_most_five_a_second_and_the_last_at_100(clock):
    stream = io.StringIO()
    progress_module.configure("json")
    try:
        job = Progress("convert x", 100, stream=stream, quiet=True)  # configured beats quiet
    finally:
        progress_module.configure(None)
    for done in range(1, 101):
        clock.now += 0.01  # a percent every 10 ms
        job.update(done)
    job.finish()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["percent"] for line in lines] == [1, 21, 41, 61, 81, 100]
    assert lines[1] == {"progress": "convert x", "done": 21, "total": 100, "percent": 21,
                        "elapsed": 0.21, "rate": 100, "eta": 0.8}
    assert lines[-1]["eta"] == 0.0


def test_a_job_with_nothing_to_do_reports_zero_of_zero(clock):
    stream = io.StringIO()
    progress_module.configure("json")
    try:
        job = Progress("commit empty", 0, stream=stream)
    finally:
        progress_module.configure(None)
    job.finish()
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert (line["done"], line["total"], line["percent"]) == (0, 0, 100)


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (59.6, "1m00s"), (125, "2m05s"),
                                               (3725, "1h02m")])
def test_durations(seconds, text):
    assert duration(seconds) == text
