"""The README's and the documentation pages' commands run as written: every `lbtkit ...` line
of their code blocks parses with the real CLI (command names, flag names, value types), and
every `lbtkit run` line resolves its config with --dry-run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from lbtkit.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The hand-written pages and the committed study reports (docs/hooks is code, not a page).
PAGES = [README, *sorted(p for p in (ROOT / "docs").rglob("*.md")
                         if "hooks" not in p.relative_to(ROOT / "docs").parts)]
# Synopsis lines name placeholders, not values: `lbtkit report SWEEP_DIR`, `[--hessian]`.
PLACEHOLDER = re.compile(r"(^|\s)([A-Z][A-Z0-9_]+|\.\.\.|\[.*\]|\S*\|\S*)(\s|$)")
# `lbtkit run` lines that need something the README's reader makes first (their own module,
# their config file, their image folder): parsed, but not dry-run here.
NEEDS_USER_FILES = ("my_models:", "c1.toml", "imagefolder:/data/pets")
STARTS_LBTKIT = re.compile(r"\s*([A-Z_]+=\S*\s+)*(\.venv/bin/)?lbtkit\s")


def readme_commands(page: Path = README) -> list[str]:
    """The `lbtkit ...` commands of a page's code blocks (indented or fenced), continuation
    lines joined, environment assignments and the venv path dropped, `&&` chains split."""
    lines = page.read_text().splitlines()
    joined: list[str] = []
    fenced = False
    for line in lines:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        elif fenced or line.startswith("    "):
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


COMMANDS = sorted({command for page in PAGES for command in readme_commands(page)})


def test_the_readme_and_the_pages_have_commands_to_check():
    assert len(PAGES) >= 12
    assert len(COMMANDS) >= 30
    assert any(c.startswith("lbtkit sweep submit") for c in readme_commands(README))
    assert len(readme_commands(README)) >= 5
    assert len(README.read_text().splitlines()) <= 250


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
