"""User-facing errors: one sentence that names the problem and the fix."""

from __future__ import annotations


class MedrobustError(Exception):
    """An error caused by the user's input (config, data, checkpoint), not by a bug.

    The message is one sentence that names the bad value and says how to fix it. The CLI
    prints it without a traceback and exits with status 2.
    """


class ConfigError(MedrobustError):
    """A config file or override is malformed or holds an invalid value."""


class DataError(MedrobustError):
    """A data file is missing, unreadable or inconsistent (shape, spacing, labels)."""


class CheckpointError(MedrobustError):
    """A checkpoint is missing, unreadable, or does not belong to the requested model."""
