"""The README's commands run as written: every `lbtkit ...` line of its code blocks parses with
the real CLI (command names, flag names, value types), and every `lbtkit run` line resolves
its config with --dry-run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from lbtkit.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
# Synopsis lines name placeholders, not values: `lbtkit report SWEEP_DIR`, `[--hessian]`.
PLACEHOLDER = re.compile(r"(^|\s)([A-Z][A-Z0-9_]+|\.\.\.|\[.*\]|\S*\|\S*)(\s|$)")
# `lbtkit run` lines that need something the README's reader makes first (their own module,
# their config file, their image folder): parsed, but not dry-run here.
NEEDS_USER_FILES = ("my_models:", "c1.toml", "imagefolder:/data/pets")
STARTS_LBTKIT = re.compile(r"\s*([A-Z_]+=\S*\s+)*(\.venv/bin/)?lbtkit\s")


def readme_commands() -> list[str]:
    """The `lbtkit ...` commands of the README's indented code blocks, continuation lines
    joined, environment assignments and the venv path dropped, `&&` chains split."""
    lines = README.read_text().splitlines()
    joined: list[str] = []
    for line in lines:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        elif line.startswith("    "):
            joined.append(line.strip())
    commands = []
    for line in joined:
        for part in line.split("&&"):
            if not STARTS_LBTKIT.match(part):
                continue
            words = shlex.split(part, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]
            if words and words[0] in ("lbtkit", ".venv/bin/lbtkit"):
                command = shlex.join(["lbtkit", *words[1:]])
                if not PLACEHOLDER.search(command):
                    commands.append(command)
    return commands


COMMANDS = readme_commands()


def test_the_readme_has_commands_to_check():
    assert len(COMMANDS) >= 25
    assert any(c.startswith("lbtkit sweep submit") for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command):
    args = shlex.split(command)[1:]
    group = typer.main.get_command(app)
    context = group.make_context("lbtkit", list(args))
    while hasattr(group, "resolve_command"):
        # A group keeps the subcommand's words where its own invoke would find them.
        words = [*getattr(context, "_protected_args", []), *context.args]
        name, group, rest = group.resolve_command(context, words)
        context = group.make_context(name, rest, parent=context)


RUNS = [c for c in COMMANDS if c.startswith("lbtkit run ")
        and not any(needle in c for needle in NEEDS_USER_FILES)]


@pytest.mark.parametrize("command", RUNS)
def test_readme_run_command_resolves_its_config(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = shlex.split(command)[1:]
    if "--dry-run" not in args:
        args.append("--dry-run")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (command, result.output)
    assert '"lr"' in result.output
