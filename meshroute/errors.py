"""Errors the CLI reports as one line and exit status 1."""

from __future__ import annotations


class UserError(Exception):
    """Something the operator asked for that cannot be done, with the reason."""
