"""CLI conventions shared by every command: help, docs, exit codes, log formats."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from coldrec import io
from coldrec.cli import app

ROOT = Path(__file__).resolve().parent.parent


def _command_paths():
    """Every leaf command as its argv prefix, e.g. ['synth'] or ['datasets', 'movielens']."""
    import typer.main

    group = typer.main.get_command(app)
    paths = []
    for name, command in group.commands.items():
        sub = getattr(command, "commands", None)
        if sub:
            paths.extend([name, child] for child in sub)
        else:
            paths.append([name])
    return paths


def test_there_are_commands():
    assert ["synth"] in _command_paths()


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p))
def test_every_command_has_help_example_and_docs(path, run_cli):
    code, out, _ = run_cli(*path, "--help")
    assert code == 0
    assert "Example: coldrec " in out, f"`coldrec {' '.join(path)} --help` shows no example"
    import typer.main

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    assert command.help and command.help.strip().splitlines()[0].endswith("."), "one-line docstring"
    docs = (ROOT / "docs" / "cli.md").read_text()
    assert re.search(rf"^## coldrec {' '.join(path)}\b", docs, re.M) or re.search(
        rf"^### coldrec {' '.join(path)}\b", docs, re.M
    ), f"docs/cli.md has no section for `coldrec {' '.join(path)}`"


def test_docs_have_no_leftover_markers():
    text = (ROOT / "docs" / "cli.md").read_text()
    documented = set(re.findall(r"^#{2,3} coldrec (\w+)", text, re.M))
    commands = {path[0] for path in _command_paths()}
    for marker in re.findall(r"<!-- @section:(\w+) -->", text):
        assert marker not in commands, f"docs/cli.md still has the placeholder for `{marker}`"
    assert commands <= documented


def test_version(run_cli):
    from coldrec import __version__

    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"coldrec {__version__}"


def test_unknown_option_is_usage_error(run_cli):
    code, _, err = run_cli("synth", "--out", "x", "--bogus")
    assert code == 2
    assert "No such option" in err


def test_bad_input_is_one_line_exit_2(run_cli, tmp_path):
    code, out, err = run_cli("synth", "--out", tmp_path / "o", "--users", "0")
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--users must be positive" in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_unexpected_error_is_exit_1_without_traceback(run_cli, tmp_path, monkeypatch):
    import coldrec.synth

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(coldrec.synth, "run_synth", explode)
    code, _, err = run_cli("synth", "--out", tmp_path / "o")
    assert code == 1
    assert "unexpected RuntimeError: boom" in err and "Traceback" not in err
    code, _, err = run_cli("--debug", "synth", "--out", tmp_path / "o")
    assert code == 1 and "Traceback" in err


def test_locked_output_exits_75(run_cli, tmp_path):
    out = tmp_path / "o"
    with io.output_lock(out, "a cron run"):
        code, _, err = run_cli("synth", "--out", out, "--users", "50", "--items", "20", "--days", "2")
    assert code == 75
    assert "locked by pid" in err and "a cron run" in err
    assert not out.exists()


def test_json_log_format_is_one_object_per_line(run_cli, tmp_path):
    code, out, err = run_cli(
        "--log-format", "json", "synth", "--out", tmp_path / "o",
        "--users", "50", "--items", "20", "--days", "2", "--exposures-per-day", "100",
    )
    assert code == 0 and out == ""
    records = [json.loads(line) for line in err.strip().splitlines()]
    summary = [r for r in records if r.get("event") == "synth"]
    assert len(summary) == 1
    assert summary[0]["exposures"] > 0 and summary[0]["level"] == "info"


def test_json_errors_are_json_too(run_cli, tmp_path):
    code, _, err = run_cli("--log-format", "json", "synth", "--out", tmp_path / "o", "--days", "0")
    assert code == 2
    record = json.loads(err.strip())
    assert record["level"] == "error" and "--days must be positive" in record["message"]


def test_quiet_silences_the_summary(run_cli, tmp_path):
    code, _, err = run_cli(
        "--quiet", "synth", "--out", tmp_path / "o", "--users", "50", "--items", "20", "--days", "2",
        "--exposures-per-day", "100",
    )
    assert code == 0 and err == ""


def test_python_dash_m_works():
    result = subprocess.run(
        [sys.executable, "-m", "coldrec", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stdout.startswith("coldrec ")


def test_every_stage_flag_defaults_to_its_option_in_coldrec_options():
    """One source of truth: `coldrec <stage> --flag`'s default is coldrec.options' (which the
    pipeline's [stage] tables and the library defaults read too)."""
    import dataclasses
    from enum import Enum

    import typer.main

    from coldrec.cli import app
    from coldrec.options import EmbedOptions, IndexOptions, PrepareOptions, RecallOptions, StatsOptions

    commands = typer.main.get_command(app).commands
    checked = 0
    for stage, options in (("prepare", PrepareOptions), ("stats", StatsOptions), ("embed", EmbedOptions), ("index", IndexOptions), ("recall", RecallOptions)):
        defaults = {param.name: param.default for param in commands[stage].params}
        for option in dataclasses.fields(options):
            if option.name in defaults:
                value = defaults[option.name]
                assert (value.value if isinstance(value, Enum) else value) == option.default, (stage, option.name)
                checked += 1
    assert checked >= 18


def test_shell_completion_is_on():
    env = {**os.environ, "_COLDREC_COMPLETE": "complete_bash", "COMP_WORDS": "coldrec insp", "COMP_CWORD": "1"}
    done = subprocess.run([sys.executable, "-m", "coldrec"], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["inspect"], done.stderr
