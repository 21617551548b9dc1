"""The one exception type sharprl raises for problems a user can fix, and how the CLI reports it."""

from __future__ import annotations

import functools


class SharprlError(Exception):
    """Bad input or state (unknown env, missing checkpoint, ...): the CLI prints it as one line, exit 2."""


def user_errors(fn):
    """Wrap a CLI command: a SharprlError becomes one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import typer  # only the CLI needs typer

        try:
            return fn(*args, **kwargs)
        except SharprlError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper
