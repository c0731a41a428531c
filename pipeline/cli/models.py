"""`latentwatch models list|show|promote|rollback DIR`: manage a versioned model directory
(detectors/versions.py); `models groups --config FILE`: the model groups of a configuration. `promote` and `rollback` only move the `current` pointer; a running
`latentwatch run --model DIR` notices the change and swaps the model in between batches."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from latentwatch.pipeline.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("models", help="list, show, promote or roll back versions of a model directory")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = msub.add_parser("list", help="the versions, oldest first; * marks the current one")
    ls.add_argument("dir", metavar="MODEL_DIR")
    ls.set_defaults(func=_list)
    show = msub.add_parser("show", help="the pointer and the metadata of the current (or a given) version")
    show.add_argument("dir", metavar="MODEL_DIR")
    show.add_argument("version", nargs="?", default=None)
    show.add_argument("--json", action="store_true", help="the whole model.json")
    show.set_defaults(func=_show)
    pr = msub.add_parser("promote", help="make VERSION current (it must load)")
    pr.add_argument("dir", metavar="MODEL_DIR")
    pr.add_argument("version")
    pr.set_defaults(func=_promote)
    rb = msub.add_parser("rollback", help="make the version that was current before this one current again")
    rb.add_argument("dir", metavar="MODEL_DIR")
    rb.set_defaults(func=_rollback)
    gr = msub.add_parser("groups", help="the model groups of a pipeline configuration: rule, directory and "
                                        "current version of each, in routing order (docs/groups.md)")
    gr.add_argument("--config", default=None, metavar="FILE", help="pipeline config file (default: "
                    "$LATENTWATCH_CONFIG); the environment applies as for `run`")
    gr.set_defaults(func=_groups)


def _versioned(root: str) -> Path:
    from latentwatch.detectors import versions

    path = Path(root)
    if versions.is_plain(path):
        raise UserError(f"{root} is a single-version model directory (older layout); the next "
                        f"`latentwatch train --out {root}` turns it into a versioned one")
    if not versions.is_versioned(path):
        raise UserError(f"{root}: not a versioned model directory (no 'current' pointer); "
                        f"create one with `latentwatch train --out {root}`")
    return path


def _metadata(directory: Path) -> dict:
    try:
        data = json.loads((directory / "model.json").read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _pointer(root: Path):
    from latentwatch.detectors import versions

    try:
        return versions.read_pointer(root)
    except versions.VersionError as exc:
        raise UserError(str(exc)) from None


def _list(args) -> int:
    from latentwatch.detectors.versions import VERSIONS, list_versions

    root = _versioned(args.dir)
    current = _pointer(root).version
    rows = [("", "VERSION", "KIND", "WINDOW", "CHANNELS", "THRESHOLD", "TRAINED ROWS", "TRAINED AT")]
    for v in list_versions(root):
        meta = _metadata(root / VERSIONS / v)
        thr = meta.get("threshold", {}).get("value")
        training = meta.get("training", {})
        rows.append(("*" if v == current else "", v, str(meta.get("kind", "?")), str(meta.get("window", "?")),
                     str(len(meta.get("channels", []))), f"{thr:.5g}" if isinstance(thr, (int, float)) else "?",
                     str(training.get("rows", "?")), str(training.get("trained_at", "?"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _show(args) -> int:
    from latentwatch.detectors.versions import VERSIONS, list_versions

    root = _versioned(args.dir)
    pointer = _pointer(root)
    version = args.version or pointer.version
    if version not in list_versions(root):
        raise UserError(f"{root}: no version {version!r}; see `latentwatch models list {root}`")
    meta = _metadata(root / VERSIONS / version)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    training = meta.get("training", {})
    lines = [
        ("directory", str(root / VERSIONS / version)),
        ("current", f"{pointer.version} (since {pointer.updated_at}, {pointer.reason})"),
        ("earlier", ", ".join(pointer.previous[:5]) or "none"),
        ("name", str(meta.get("name", "?"))),
        ("version", version),
        ("kind", f"{meta.get('kind')} window={meta.get('window')} latent={meta.get('latent_dim')}"),
        ("channels", ", ".join(meta.get("channels", []))),
        ("threshold", json.dumps(meta.get("threshold", {}))),
        ("trained", f"{training.get('trained_at', '?')} on {training.get('rows', '?')} rows"),
        ("source", json.dumps(training.get("source") or training.get("files") or [])),
    ]
    for key, value in lines:
        print(f"{key + ':':<11}{value}")
    return 0


def _promote(args) -> int:
    from latentwatch.pipeline.lifecycle.train import promote

    root = _versioned(args.dir)
    pointer = promote(root, args.version)
    print(f"{root}: current is now {pointer.version}" + (f" (was {pointer.previous[0]})" if pointer.previous else ""))
    return 0


def _rollback(args) -> int:
    from latentwatch.detectors import versions

    root = _versioned(args.dir)
    was = _pointer(root).version
    try:
        pointer = versions.rollback(root)
    except versions.VersionError as exc:
        raise UserError(str(exc)) from None
    print(f"{root}: current is now {pointer.version} (rolled back from {was})")
    return 0


def _current_version(path: str) -> str:
    """The version `run` would load from `path` (a versioned directory's `current`, a plain one's
    model.json), or why none."""
    from latentwatch.detectors import versions

    root = Path(path)
    if versions.is_versioned(root):
        try:
            return versions.read_pointer(root).version
        except versions.VersionError as exc:
            return f"? ({exc})"
    if versions.is_plain(root):
        return str(_metadata(root).get("version", "?")) + " (plain directory)"
    return "? (no model here)"


def _groups(args) -> int:
    from latentwatch.pipeline.config import load_settings
    from latentwatch.pipeline.groups import group_specs

    settings = load_settings(args.config)
    if not settings.groups:
        print(f"no model groups configured: every sensor is scored by model.path ({settings.model.path or 'unset'})")
        return 0
    rows = [("GROUP", "MATCH", "MODEL DIR", "VERSION")]
    for spec in group_specs(settings):
        rows.append((spec.name, spec.match or "(fallback: the rest)", spec.model, _current_version(spec.model)))
    if settings.fallback_group is None:
        rows.append(("-", "(the rest)", "-", "dead letters, reason no_group"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0
