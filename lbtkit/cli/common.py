"""The Typer ``app`` and what its commands share: error exits, parsers, checks, logging."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

from lbtkit.errors import EXIT_ENVIRONMENT, EXIT_USER_ERROR, EnvironmentFault, UserError

# Typer >= 0.26 vendors Click and exports only BadParameter: its base is Click's UsageError.
_UsageError = typer.BadParameter.__mro__[1]


@contextlib.contextmanager
def _usage_errors_in_one_line(words: list[str]) -> Iterator[None]:
    """A Click usage error (a value a flag cannot take, a missing option, an unknown command)
    as one line naming it, exit 2, like every other user mistake: Click's own is its usage
    block, a hint and the message (3 lines or more). ``words``: the command line below this
    group, to name a value Typer's message leaves out ("Input should be a valid integer")."""
    try:
        yield
    except _UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # no arguments at all: the help
            raise
        message = exc.format_message().rstrip(".")
        if message[:2].istitle():  # "Invalid value ..." -> "invalid value ...", like the others
            message = message[0].lower() + message[1:]
        value = _given_value(words, getattr(exc, "param", None))
        if value is not None and repr(value) not in message:
            message += f", got {value!r}"
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        print(f"error: {message}{where}", file=sys.stderr)
        raise typer.Exit(EXIT_USER_ERROR) from None


def _given_value(words: list[str], param) -> str | None:
    """The value typed after option ``param`` (``--flag VALUE`` or ``--flag=VALUE``)."""
    for flag in getattr(param, "opts", None) or []:
        for i, word in enumerate(words):
            if word == flag and i + 1 < len(words):
                return words[i + 1]
            if word.startswith(flag + "="):
                return word[len(flag) + 1:]
    return None


class _OneLineUsageErrors(TyperGroup):
    """The top-level group: parsing (here, and below in the subcommands it invokes) reports a
    usage error as one line."""

    def make_context(self, *args, **kwargs):
        with _usage_errors_in_one_line([]):
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _usage_errors_in_one_line([*getattr(ctx, "_protected_args", []), *ctx.args]):
            return super().invoke(ctx)


app = typer.Typer(
    cls=_OneLineUsageErrors,
    help="lbtkit: the large-batch training kit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain Click help: wraps to any width without cutting option names, and shows help
    # text as written ("[sweep]" is a TOML table, not Rich markup).
    rich_markup_mode=None,
)
# Files and pipes get a wide console: Rich would otherwise fold tables to 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def _print_version(value: bool) -> None:
    if value:
        import lbtkit

        print(f"lbtkit {lbtkit.__version__}")
        raise typer.Exit()


@app.callback()
def _common(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="print the version and exit",
    )] = False,
) -> None:
    """lbtkit: the large-batch training kit."""


def user_errors(fn):
    """Print a user mistake as one line on stderr and exit 2; an environment fault (a full or
    read-only disk, a path the system refuses) as one line and exit 1. No traceback for
    either: anything else is a bug and keeps it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except EnvironmentFault as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(EXIT_ENVIRONMENT) from None
        except OSError as exc:
            if exc.filename is None:
                raise
            print(f"error: {_os_error_line(exc)}", file=sys.stderr)
            raise typer.Exit(EXIT_ENVIRONMENT) from None

    return wrapper


def _os_error_line(exc: OSError) -> str:
    where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    return f"{where}: {exc.strerror or exc}"


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a whole number") from None


def parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number") from None


def check_num_processes(num_processes: int | None) -> None:
    if num_processes is not None and num_processes < 1:
        raise UserError(f"--num-processes must be >= 1, got {num_processes}")


def check_at_least_one(flag: str, value: int | None) -> None:
    """A count flag (``--jobs``, ``--threads``) is unset or >= 1: one line, not Click's usage."""
    if value is not None and value < 1:
        raise UserError(f"{flag} must be >= 1, got {value}")


class _StandardStream(logging.StreamHandler):
    """A handler on whatever ``sys.stdout`` (or ``sys.stderr``) is when a record comes, not
    when it was made: a live progress bar swaps in a proxy that prints above the bar."""

    def __init__(self, name: str) -> None:
        self._stream_name = name
        super().__init__()

    @property
    def stream(self):
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; the lookup wins
        pass


def configure_logging() -> None:
    """Show the library's log records as the CLI's own lines: info on stdout as the bare
    message, warnings and errors on stderr as "warning: message". The library itself only logs
    (``logging.getLogger(__name__)``): as a library it is quiet unless its user configures
    logging."""

    class _LevelPrefix(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            text = super().format(record)
            return text if record.levelno < logging.WARNING else \
                f"{record.levelname.lower()}: {text}"

    out = _StandardStream("stdout")
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err = _StandardStream("stderr")
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(_LevelPrefix("%(message)s"))
    logger = logging.getLogger("lbtkit")
    logger.handlers[:] = [out, err]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main() -> None:
    from lbtkit.cpu import record_user_threads
    from lbtkit.signals import exit_interrupted_during_startup

    exit_interrupted_during_startup()  # the console script's entry; python -m did it already
    # For launched workers, whose launcher sets OMP_NUM_THREADS itself.
    record_user_threads()
    configure_logging()
    app()
