"""User-facing errors: the CLI prints them as one line and exits with status 2."""

from __future__ import annotations

from datasets import DatasetError
from methods import MethodConfigError


class UserError(Exception):
    """Bad input from the user (unknown key, bad value, missing directory...)."""


USER_ERRORS = (UserError, DatasetError, MethodConfigError)
