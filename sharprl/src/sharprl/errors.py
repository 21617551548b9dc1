"""The one exception type sharprl raises for problems a user can fix."""

from __future__ import annotations


class SharprlError(Exception):
    """Bad input or state (unknown env, missing checkpoint, ...): the CLI prints it as one line, exit 2."""
