"""Where shipped data lives: `$MCUSHARD_DATA`, else `../shared/data` beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

from mcushard.errors import McushardError


def data_dir() -> Path:
    env = os.environ.get("MCUSHARD_DATA")
    if env:
        return Path(env)
    # src/mcushard/data.py -> repository root is three levels above the package
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    path = data_dir() / relative
    if not path.is_file():
        raise McushardError(f"{path}: not found (set MCUSHARD_DATA to the folder holding tinyllamas/)")
    return path
