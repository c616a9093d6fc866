"""Errors that mean "the user asked for something we cannot do".

The CLI prints these as one line and exits with ``EXIT_USER_ERROR``; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (config, paths, data). The message names the bad value."""


class ConfigError(UserError):
    """A configuration value that is invalid or inconsistent."""


class DataNotFoundError(UserError):
    """A dataset is not where the config says; the message says where we looked, how to fetch."""


class CheckpointError(UserError):
    """A checkpoint or run directory that cannot be read."""
