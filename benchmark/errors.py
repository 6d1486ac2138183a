"""User-facing errors: the CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (unknown key, bad value, missing directory...)."""


def user_errors() -> tuple[type[Exception], ...]:
    """The exception types the CLI reports as one line with exit status 2: UserError, the
    datasets' and methods' own configuration errors, and a full disk (not bad input, but
    its message is as complete: the path, the space needed, the fix). Imported on demand,
    so that `--help` does not import torch."""
    from datasets import DatasetError
    from datasets.atomic import DiskFullError
    from methods import MethodConfigError

    return (UserError, DatasetError, MethodConfigError, DiskFullError)
