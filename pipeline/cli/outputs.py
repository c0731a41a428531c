"""Files a command writes, checked before it does any work: a folder that is not there is one
clear line (a UserError), never a traceback after minutes of scoring, and never made silently
(`report` once made every missing folder, even at the filesystem root: a typo in the path went
unnoticed)."""

from __future__ import annotations

import os
from pathlib import Path

from latentwatch.pipeline.errors import UserError


def writable(path: str | None, what: str) -> str | None:
    """`path` (None, or '-' for stdout, pass as they are) when a file can be written there."""
    if path is None or path == "-":
        return path
    p = Path(path).expanduser()
    folder = p.parent
    if p.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name in it")
    if not folder.is_dir():
        raise UserError(f"{what} {path}: the folder {folder} does not exist; create it first or choose another path")
    if not os.access(folder, os.W_OK):
        raise UserError(f"{what} {path}: the folder {folder} is not writable")
    return path


def open_for_writing(path: str, what: str):
    """The file opened for text writing; an OSError (a disk full, a race with a removed folder)
    as one line."""
    try:
        return open(writable(path, what), "w", newline="")
    except OSError as exc:
        raise UserError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
