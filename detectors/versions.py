"""Versioned model directories: immutable versions under one root and a `current` pointer.

    models/pump/
        current                      {"version": "20261129T101500Z", "previous": [...], ...}
        versions/20261129T101500Z/   weights.pt + model.json (checkpoint.py's format), read-only
        versions/20261128T080000Z/

A version is written into a hidden temporary directory beside the others and appears under its
name by one directory rename, so a reader never sees half a version. The pointer is a small JSON
file written to a temporary file, fsync'd and `os.replace`d over `current`: every reader sees
the old pointer or the new one, never a torn one. A pointer *file* rather than a symlink because
it survives what symlinks do not (copies to object stores, `kubectl cp`, SMB/Azure Files and
some other CSI volumes), names the version relatively (the root can be mounted anywhere), and
can carry the rollback history in the same atomic write. Watchers compare its content, not only
its mtime, which also works on NFS with attribute caching and on ConfigMap mounts.

A plain model directory (weights.pt + model.json at the top, the older layout) still loads:
`resolve` returns it as it is. No torch or Kafka here: this module only moves directories.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

POINTER, VERSIONS = "current", "versions"
WEIGHTS, METADATA = "weights.pt", "model.json"  # checkpoint.py's file names
MAX_HISTORY = 50  # versions `rollback` can walk back through
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class VersionError(ValueError):
    """A versioned model directory that cannot be used as asked; the message says what to do."""


@dataclass(frozen=True)
class Pointer:
    version: str
    previous: tuple[str, ...] = ()
    updated_at: str = ""
    reason: str = ""

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "previous": list(self.previous),
                           "updated_at": self.updated_at, "reason": self.reason}, indent=2) + "\n"


def is_versioned(root: str | Path) -> bool:
    return (Path(root) / POINTER).is_file()


def is_plain(path: str | Path) -> bool:
    """A single-version model directory in checkpoint.py's layout."""
    return (Path(path) / METADATA).is_file() and not is_versioned(path)


def read_pointer(root: str | Path) -> Pointer:
    path = Path(root) / POINTER
    try:
        data = json.loads(path.read_text())
        version = data["version"]
        previous = tuple(str(v) for v in data.get("previous", []))
        if not isinstance(version, str) or not _NAME.match(version):
            raise ValueError(f"bad version name {version!r}")
    except FileNotFoundError:
        raise VersionError(f"{root}: no '{POINTER}' pointer here, so this is not a versioned model directory; "
                           f"train one with `latentwatch train --out {root}`") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise VersionError(f"{path} is not a valid pointer ({exc}); point it at a version with "
                           f"`latentwatch models promote {root} VERSION`") from None
    return Pointer(version, previous, str(data.get("updated_at", "")), str(data.get("reason", "")))


def resolve(path: str | Path) -> Path:
    """The directory to load for `path`: its current version when `path` is a versioned root,
    else `path` itself (a plain model directory, or a version directory named directly)."""
    path = Path(path)
    if not is_versioned(path):
        return path
    version = read_pointer(path).version
    target = path / VERSIONS / version
    if not target.is_dir():
        raise VersionError(f"{path}: '{POINTER}' points at version {version}, which is not under {VERSIONS}/; "
                           f"promote an existing one with `latentwatch models promote {path} VERSION`")
    return target


def list_versions(root: str | Path) -> list[str]:
    """Version names, oldest first (names are UTC times, so they sort in time order)."""
    d = Path(root) / VERSIONS
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def new_version_name(root: str | Path, now: datetime | None = None) -> str:
    base = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    taken = set(list_versions(root))
    name, n = base, 1
    while name in taken:  # two trainings within one second
        n += 1
        name = f"{base}-{n}"
    return name


def publish(root: str | Path, write: Callable[[Path, str], None], *, reason: str = "train",
            make_current: bool = True) -> str:
    """Write a new version with `write(directory, version_name)` and, unless `make_current` is
    false, point `current` at it. Returns the version name. A plain model directory at `root`
    is first adopted as a version of its own (readers keep loading it meanwhile)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise VersionError(f"{root} is a file, not a model directory; choose another --out")
    if is_plain(root):
        adopt(root)
    (root / VERSIONS).mkdir(parents=True, exist_ok=True)
    name = new_version_name(root)
    tmp = root / VERSIONS / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp, name)
        _seal(tmp)
        os.rename(tmp, root / VERSIONS / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root / VERSIONS)
    if make_current:
        set_current(root, name, reason=reason)
    return name


def adopt(root: str | Path) -> str:
    """Turn a plain model directory into a versioned one: its files become a version named by
    their metadata, `current` points at it, then the top-level files go. A reader loading
    `root` meanwhile finds the plain files until the pointer exists, then the version."""
    root = Path(root)
    try:
        meta = json.loads((root / METADATA).read_text())
    except (OSError, ValueError) as exc:
        raise VersionError(f"{root}: cannot read {METADATA} to adopt it as a version ({exc})") from None
    name = str(meta.get("version") or "")
    if not _NAME.match(name) or name in list_versions(root):
        name = new_version_name(root)
    (root / VERSIONS).mkdir(exist_ok=True)
    tmp = root / VERSIONS / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    for f in (WEIGHTS, METADATA):
        if (root / f).is_file():
            shutil.copy2(root / f, tmp / f)
    _seal(tmp)
    os.rename(tmp, root / VERSIONS / name)
    set_current(root, name, reason="adopted")
    for f in (WEIGHTS, METADATA):
        (root / f).unlink(missing_ok=True)
    return name


def set_current(root: str | Path, version: str, *, reason: str) -> Pointer:
    """Point `current` at `version` (which must exist), remembering the one it replaces."""
    root = Path(root)
    if not _NAME.match(version) or not (root / VERSIONS / version).is_dir():
        known = ", ".join(list_versions(root)[-5:]) or "none"
        raise VersionError(f"{root}: no version {version!r} (latest: {known}); see `latentwatch models list {root}`")
    previous: tuple[str, ...] = ()
    if is_versioned(root):
        old = read_pointer(root)
        previous = (old.version, *old.previous) if old.version != version else old.previous
    pointer = Pointer(version, previous[:MAX_HISTORY], _now(), reason)
    _write_pointer(root, pointer)
    return pointer


def rollback(root: str | Path) -> Pointer:
    """Point `current` back at the version it pointed at before (walks back one step a call)."""
    root = Path(root)
    old = read_pointer(root)
    existing = set(list_versions(root))
    for i, version in enumerate(old.previous):
        if version in existing:
            pointer = Pointer(version, old.previous[i + 1:], _now(), f"rollback from {old.version}")
            _write_pointer(root, pointer)
            return pointer
    raise VersionError(f"{root}: no earlier version to roll back to (current is {old.version}); "
                       f"choose one with `latentwatch models promote {root} VERSION`")


def _write_pointer(root: Path, pointer: Pointer) -> None:
    tmp = root / f".{POINTER}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w") as f:
        f.write(pointer.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / POINTER)
    _fsync_dir(root)


def _seal(directory: Path) -> None:
    """fsync the version's files and make them read-only (a version is never edited)."""
    for p in directory.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
            p.chmod(0o444)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
