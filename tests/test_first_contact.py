"""What a new user meets first: the version, the help of every command."""

from __future__ import annotations

import lbtkit

from helpers import assert_user_error


def test_version_flag_prints_the_package_version(cli):
    result = cli("--version", check=0)
    assert result.stdout.strip() == f"lbtkit {lbtkit.__version__}"


def test_threads_flag_is_validated(cli, tmp_path):
    assert_user_error(cli("run", "--preset", "smoke", "--threads", "0",
                          "--output", tmp_path / "r"), "threads")


def test_run_help_shows_defaults_and_whole_flag_names_at_80_columns(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    text = cli("run", "--help", check=0).stdout
    assert "--max-per-device-batch <int>" in text
    assert "[default: 128]" in text  # --batch-size
    assert "[default: --no-download]" in text
    assert max(map(len, text.splitlines())) <= 80


def test_help_text_is_not_eaten_as_markup(cli):
    assert "[sweep] table" in cli("sweep", "plan", "--help", check=0).stdout


def test_sweep_plan_refuses_the_single_batch_size_flag(cli, tmp_path):
    result = cli("sweep", "plan", "--preset", "smoke", "--batch-size", "16",
                 "--output", tmp_path / "s")
    assert result.returncode == 2 and "--batch-sizes" in result.stderr
    assert not (tmp_path / "s").exists()


def test_an_evaluation_batch_is_eval_batch_size_in_every_command(cli):
    for command in (["sharpness"], ["interpolate"], ["landscape"]):
        text = cli(*command, "--help", check=0).stdout
        assert "--eval-batch-size" in text, command
    assert "--batch-size" not in cli("sharpness", "--help", check=0).stdout


def _commands(group, path=()):
    """(path, click command) for every visible command of the app, subcommands included."""
    for name, command in group.commands.items():
        if command.hidden:
            continue
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_every_command_has_a_purpose_and_an_example():
    import typer.main

    from lbtkit.cli import app

    commands = list(_commands(typer.main.get_command(app)))
    assert len(commands) >= 20
    for path, command in commands:
        text = command.help or ""
        purpose = text.strip().splitlines()[0] if text.strip() else ""
        assert len(purpose) > 10, path
        example = text.split("Example:", 1)[-1] if "Example:" in text else ""
        assert f"lbtkit {' '.join(path)}" in example, (path, text)
        # Example blocks are printed as written (not wrapped): they must fit 80 columns.
        assert all(len(line.strip()) <= 74 for line in example.splitlines()), (path, example)
