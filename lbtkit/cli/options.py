"""The options several commands share, each declared once: its name, short form, type and
parser here, its help from the command (what N processes split, or what ``--output`` holds,
differs from command to command). Use as an annotation::

    num_processes: num_processes_option("split the grid points over N processes") = None
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lbtkit.cli.common import parse_int

# Optional[X], as everywhere in the CLI: Typer reads these types at run time, and older Typers
# (>= 0.12 is allowed) do not take "X | None" there.
# ruff: noqa: UP045




def num_processes_option(help: str) -> Any:
    """``--num-processes N``: N launched processes (accelerate launch); check the value with
    ``check_num_processes``."""
    return Annotated[Optional[int], typer.Option("--num-processes", help=help, parser=parse_int)]


def output_option(help: str, *, optional: bool = False) -> Any:
    """``--output PATH``: where a command writes (``optional``: it has a default place)."""
    return Annotated[Optional[Path] if optional else Path, typer.Option("--output", help=help)]


def quick_option(help: str) -> Any:
    """``--quick``: the small version of a study, its size in ``help``."""
    return Annotated[bool, typer.Option("--quick", help=help)]


def progress_option(help: str = "show progress") -> Any:
    return Annotated[bool, typer.Option("--progress/--no-progress", help=help)]


def jobs_option(help: str) -> Any:
    """``--jobs/-j N``: how many at once on this machine; check with ``check_at_least_one``."""
    return Annotated[Optional[int], typer.Option("--jobs", "-j", help=help, parser=parse_int)]


def threads_option(help: str) -> Any:
    """``--threads N``: torch threads; check with ``check_at_least_one``."""
    return Annotated[Optional[int], typer.Option("--threads", help=help, parser=parse_int)]


def preset_option(help: str) -> Any:
    return Annotated[Optional[str], typer.Option("--preset", help=help)]


def config_option(help: str) -> Any:
    return Annotated[Optional[Path], typer.Option("--config", help=help)]


def data_dir_option(help: str) -> Any:
    """``--data-dir DIR`` of the studies (a directory name, as RunConfig's ``data_dir``)."""
    return Annotated[str, typer.Option("--data-dir", help=help)]
