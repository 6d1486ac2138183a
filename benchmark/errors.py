"""User-facing errors: the CLI prints them as one line and exits with status 2."""

from __future__ import annotations

from datasets import DatasetError
from datasets.atomic import DiskFullError
from methods import MethodConfigError


class UserError(Exception):
    """Bad input from the user (unknown key, bad value, missing directory...)."""


# A full disk is not bad input, but its message is as complete (the path, the space
# needed, the fix), so it ends the same way: one line, exit status 2.
USER_ERRORS = (UserError, DatasetError, MethodConfigError, DiskFullError)
