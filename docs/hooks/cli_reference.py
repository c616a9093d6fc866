"""The CLI reference page, generated from lbtkit's Typer app at every `mkdocs build`.

mkdocs loads this file as a hook (mkdocs.yml: ``hooks``); ``on_files`` adds the page
``reference/cli.md``, rendered by ``render()`` from ``typer.main.get_command(lbtkit.cli.app)``:
every command (groups, leaves and the hidden internal ones), its help text, its examples (the
``Example:`` block of its docstring), and every argument and option with its type and default
as ``--help`` shows them. Nothing is copied by hand, so the page cannot drift from the CLI;
tests/test_docs.py checks that it covers the whole tree and that every example parses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

PAGE = "reference/cli.md"
_TRAILER = re.compile(r"\s*\[([^\[\]]*)\]\s*$")  # "  [default: 128]" or "  [required]"
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


@dataclass
class Param:
    names: str  # "--batch-size <int>", "--progress / --no-progress", "SWEEP_DIR"
    kind: str  # "argument" or "option"
    description: str
    default: str | None
    required: bool
    hidden: bool


@dataclass
class Command:
    path: list[str]  # ["lbtkit", "sweep", "plan"]
    summary: str  # the help text before its Example: block
    examples: list[str]
    usage: str
    params: list[Param]
    hidden: bool
    subcommands: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return " ".join(self.path)


def commands() -> list[Command]:
    """Every command of the CLI tree, depth first, the root first."""
    import typer.main

    from lbtkit.cli import app

    root = typer.main.get_command(app)
    found: list[Command] = []
    _walk(root, ["lbtkit"], None, found)
    return found


def _walk(command: Any, path: list[str], parent_ctx: Any, found: list[Command]) -> None:
    ctx = command.context_class(command, info_name=path[-1], parent=parent_ctx)
    summary, examples = _split_help(command.help or "")
    subs = getattr(command, "commands", None) or {}
    found.append(Command(
        path=path, summary=summary, examples=examples, usage=_usage(command, path),
        params=[_param(p, ctx) for p in command.params],
        hidden=bool(getattr(command, "hidden", False)), subcommands=list(subs)))
    for name, sub in subs.items():
        _walk(sub, [*path, name], ctx, found)


def _split_help(text: str) -> tuple[str, list[str]]:
    """(the description, the example command lines) of a docstring-style help text."""
    text = text.replace("\b", "")
    head, _, tail = text.partition("Example:")
    examples = []
    for line in tail.splitlines():
        line = re.sub(r"\s+(#.*|\(.*\))$", "", line.strip())  # "# what make study runs"
        if line:
            examples.append(line)
    summary = "\n".join(line.strip() for line in head.strip().splitlines())
    return summary, examples


def _usage(command: Any, path: list[str]) -> str:
    words = [*path, "[OPTIONS]"] if any(_is_option(p) for p in command.params) else [*path]
    for param in command.params:
        if _is_option(param):
            continue
        name = param.name.upper()
        name = f"{name}..." if param.nargs == -1 else name
        words.append(name if param.required else f"[{name}]")
    if getattr(command, "commands", None):
        words.append("COMMAND")
    return " ".join(words)


def _is_option(param: Any) -> bool:
    return bool(param.opts) and param.opts[0].startswith("-")


def _param(param: Any, ctx: Any) -> Param:
    record = None if getattr(param, "hidden", False) else param.get_help_record(ctx)
    if record is None:  # hidden: no help record, name it as typed
        names = " / ".join([*param.opts, *param.secondary_opts])
        description, trailer = (getattr(param, "help", None) or "(hidden)"), ""
    else:
        names, text = record
        match = _TRAILER.search(text)
        description, trailer = (text[:match.start()], match.group(1)) if match else (text, "")
    default = None
    required = False
    for part in (p.strip() for p in trailer.split(";") if p.strip()):
        if part == "required":
            required = True
        elif part.startswith("default:"):
            default = part[len("default:"):].strip()
    if not _is_option(param):
        names = re.sub(r"^\S+", lambda m: m.group(0).upper(), names)
    return Param(names=names, kind="option" if _is_option(param) else "argument",
                 description=description.strip(), default=default, required=required,
                 hidden=bool(getattr(param, "hidden", False)))


def _md(text: str) -> str:
    """Help text as literal markdown: no emphasis, links, tables or HTML of its own."""
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def _anchor(command: Command) -> str:
    return "-".join(command.path)


def render() -> str:
    """The whole reference page, as markdown."""
    found = commands()
    lines = [
        "# CLI reference",
        "",
        "Generated from lbtkit's Typer app each time the site is built "
        "(`docs/hooks/cli_reference.py`), so it lists exactly what `lbtkit COMMAND --help` "
        "shows: every command, argument and option, with its default. For `run`, `sweep plan` "
        "and `study keskar` the defaults shown are `RunConfig`'s; a preset or a config file "
        "changes them (see [Concepts](../concepts.md#one-config)).",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    for command in found[1:]:
        if not command.subcommands:
            first = command.summary.split("\n\n")[0].replace("\n", " ")
            lines.append(f"| [`{command.name}`](#{_anchor(command)}) | {_md(first)} |")
    for command in found:
        lines += ["", *_section(command)]
    return "\n".join(lines) + "\n"


def _section(command: Command) -> list[str]:
    level = "#" * min(len(command.path) + 1, 4)
    lines = [f'{level} {command.name} {{ #{_anchor(command)} }}', ""]
    if command.hidden:
        lines += ["*Internal: hidden from `--help`; the launcher and job scripts call it.*", ""]
    lines += [_md(command.summary), "", "```text", command.usage, "```", ""]
    if command.subcommands:
        lines.append("Commands: " + ", ".join(
            f"[`{sub}`](#{_anchor(command)}-{sub})" for sub in command.subcommands) + ".")
        lines.append("")
    if command.examples:
        lines += ["Examples:", "", "```bash", *command.examples, "```", ""]
    if command.params:
        lines += ["| argument or option | default | description |", "| --- | --- | --- |"]
        for param in command.params:
            default = "required" if param.required else (
                f"`{param.default}`" if param.default is not None else "")
            hidden = " (hidden)" if param.hidden else ""
            lines.append(f"| `{param.names}`{hidden} | {default} | {_md(param.description)} |")
        lines.append("")
    return lines


def on_files(files: Any, config: Any) -> Any:
    """mkdocs hook: add the generated page to the site."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=render()))
    return files
