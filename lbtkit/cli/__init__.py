"""The ``lbtkit`` command line (Typer): parse, validate, call library functions; no logic."""

from lbtkit.cli.common import app, configure_logging, main

# Importing a command module registers its commands on ``app``, and ``lbtkit --help`` lists
# them in registration order: this order, not an alphabetical one.
from lbtkit.cli import train, sweep, jobs, analysis, studies, environment  # noqa: F401  # isort: skip

__all__ = ["app", "configure_logging", "main"]
