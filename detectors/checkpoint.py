"""A trained model on disk: a directory holding `weights.pt` (a plain tensor state_dict) and
`model.json` (everything else: channels, scaler, window, kind, hyperparameters, threshold,
score parts (latent mean/precision, part scales), alarm rule, training-data summary,
versions). Fields added later (`score_parts`, `alarm`) are optional: a checkpoint written
before them loads and scores as it did (reconstruction error; its threshold as the instant limit,
no EWMA). The `persistence` rule (k of n) of checkpoints written before the alarm rule is ignored.

Loading never unpickles arbitrary objects (`torch.load(..., weights_only=True)`), so a checkpoint
from an untrusted place cannot run code. Every way a checkpoint can be unusable raises one
`CheckpointError` that names the path and says what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from latentwatch.detectors import __version__, versions
from latentwatch.detectors.baselines import Baselines, BaselineError
from latentwatch.detectors.health import HealthRule
from latentwatch.detectors.latent import ScoreParts
from latentwatch.detectors.networks import MODELS, TorchDetector, make_detector
from latentwatch.detectors.alarms import AlarmRule
from latentwatch.detectors.scaler import Standardiser
from latentwatch.detectors.thresholds import Threshold, threshold_from_dict

FORMAT = "latentwatch-detector"
FORMAT_VERSION = 1
WEIGHTS, METADATA = "weights.pt", "model.json"


class CheckpointError(ValueError):
    """A model directory that cannot be used; the message names the path and the fix."""


@dataclass
class LoadedModel:
    detector: TorchDetector
    threshold: Threshold
    metadata: dict
    name: str  # metadata "name", else the directory name
    version: str  # metadata "version" (default at save: the training time, e.g. 20260321T101500Z)
    alarm: AlarmRule | None = None  # None only before load fills it: then the threshold alone
    baselines: Baselines | None = None  # per-sensor baselines and own models (None: one pooled normal)
    own_alarm: AlarmRule | None = None  # the alarm rule of readings scored by their sensor's own model
    health: HealthRule | None = None  # sensor health rules (issue 30; None: a model from before them)

    def __post_init__(self):
        if self.alarm is None:
            self.alarm = AlarmRule.instant_only(self.threshold.value)


def summarise_training_data(X: np.ndarray, channels: list[str], files: list[str] | None = None) -> dict:
    """Rows, files and per-channel mean/std/min/max: what a later reader needs to judge drift."""
    X = np.asarray(X, dtype=np.float64)
    return {"rows": int(len(X)), "files": [str(f) for f in (files or [])],
            "channels": {c: {"mean": float(X[:, i].mean()), "std": float(X[:, i].std()),
                             "min": float(X[:, i].min()), "max": float(X[:, i].max())}
                         for i, c in enumerate(channels)}}


def save(path: str | Path, detector: TorchDetector, threshold: Threshold, training_summary: dict, *,
         name: str | None = None, version: str | None = None, alarm: AlarmRule | None = None,
         baselines: Baselines | None = None, own_alarm: AlarmRule | None = None,
         health: HealthRule | None = None) -> Path:
    """Write `detector` + `threshold` to the directory `path` (created; files replaced atomically);
    with `baselines`, also `baselines.npz` (its sha256 in model.json, checked at load)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name or path.name,
        "version": version or now.strftime("%Y%m%dT%H%M%SZ"),
        "latentwatch_version": __version__,
        "kind": detector.kind,
        "channels": list(detector.channels),
        "window": detector.window,
        "latent_dim": detector.latent_dim,
        "hyperparameters": detector.config(),
        "scaler": detector.scaler.to_dict(),
        "threshold": threshold.to_dict(),
        "alarm": (alarm or AlarmRule.instant_only(threshold.value)).to_dict(),
        "training": {**training_summary, "trained_at": now.isoformat(timespec="seconds")},
    }
    if detector.parts is not None:
        meta["score_parts"] = detector.parts.to_dict()
    if detector.training_report is not None:
        r = detector.training_report
        meta["training"]["fit"] = {"epochs_run": r.epochs_run, "best_epoch": r.best_epoch,
                                   "best_val_loss": r.best_val_loss, "pca_val_loss": r.pca_val_loss,
                                   "validation_windows": r.validation_rows, "calibration": r.calibration,
                                   "seconds": round(r.seconds, 3)}
    if baselines is not None:
        meta["baselines"] = {"file": "baselines.npz", "sha256": baselines.save(path), "sensors": baselines.sensors,
                             "own_models": baselines.owned, "cold_start": baselines.cold_start,
                             "bytes_per_sensor": baselines.bytes_per_sensor(),
                             "own_alarm": own_alarm.to_dict() if own_alarm is not None else None}
    if health is not None:
        meta["health"] = health.to_dict()
    tmp_w, tmp_m = path / (WEIGHTS + ".tmp"), path / (METADATA + ".tmp")
    torch.save(detector.state_dict(), tmp_w)
    meta["weights_sha256"] = _sha256(tmp_w)  # load refuses a weights file from another save
    tmp_m.write_text(json.dumps(meta, indent=2, allow_nan=True) + "\n")
    os.replace(tmp_w, path / WEIGHTS)
    os.replace(tmp_m, path / METADATA)
    return path


def _not_a_model_hint(path: Path) -> None:
    """Paths a newcomer gives to --model that are not a model directory, with the fix (the usual
    hint, `train --out PATH`, would make things worse there: a model inside versions/, or a
    directory named like the CSV file)."""
    if path.is_file():
        raise CheckpointError(f"{path} is a file; --model takes the model directory that `train --out` wrote")
    if path.name == versions.VERSIONS and versions.is_versioned(path.parent):
        raise CheckpointError(f"{path} is the versions folder of a model: give the model directory, "
                              f"--model {path.parent} (its current version), or one version, {path}/<version>")


def load(path: str | Path, device: str = "auto") -> LoadedModel:
    """Read a model directory written by `save`, or the current version of a versioned one
    (detectors/versions.py); scoring runs on `device` ("auto"|"cpu"|"cuda")."""
    given = path
    _not_a_model_hint(Path(path))
    try:
        path = versions.resolve(path)
    except versions.VersionError as exc:
        raise CheckpointError(str(exc)) from None
    retrain = f"retrain it with `latentwatch train --out {given}`"
    if not path.is_dir():
        raise CheckpointError(f"{path}: no model directory here; check the path or train one with "
                              f"`latentwatch train --out {path}`")
    for f in (METADATA, WEIGHTS):
        if not (path / f).is_file():
            raise CheckpointError(f"{path}: {f} is missing, so this is not a complete model; {retrain}")
    try:
        meta = json.loads((path / METADATA).read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: {METADATA} is not valid JSON ({exc}); {retrain}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: {METADATA} is not a latentwatch model (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: model format version {meta.get('format_version')!r}, but this latentwatch "
                              f"({__version__}) reads version {FORMAT_VERSION}; use a matching latentwatch or {retrain}")
    kind = meta.get("kind")
    if kind not in MODELS:
        raise CheckpointError(f"{path}: unknown model kind {kind!r} (known: {', '.join(MODELS)}); "
                              "use the latentwatch version that wrote it or retrain")
    try:
        channels = meta["channels"]
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise ValueError("channels must be a list of names")
        scaler = Standardiser.from_dict(meta["scaler"])
        if len(scaler.mean) != len(channels):
            raise ValueError(f"scaler has {len(scaler.mean)} channels, metadata lists {len(channels)}")
        threshold = threshold_from_dict(meta["threshold"])
        detector = make_detector(kind, **meta["hyperparameters"], device="cpu")
        alarm = AlarmRule.from_dict(meta["alarm"]) if meta.get("alarm") is not None else \
            AlarmRule.instant_only(threshold.value)
        parts = (ScoreParts.from_dict(meta["score_parts"], int(meta["latent_dim"]))
                 if meta.get("score_parts") is not None else None)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {METADATA} is incomplete or inconsistent ({exc!r}); {retrain}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols of files it then refuses
            state = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling refusals, truncation, zip errors all mean "corrupt"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: {WEIGHTS} is corrupt or holds more than plain tensors, and was not "
                              f"loaded ({first[:200]}); {retrain}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path}: {WEIGHTS} is not a state_dict of named tensors; {retrain}")
    digest = meta.get("weights_sha256")
    if digest is not None and digest != _sha256(path / WEIGHTS):
        raise CheckpointError(f"{path}: {WEIGHTS} is not the one {METADATA} was saved with (a save to this "
                              f"directory in progress, or a damaged file); load again, or {retrain}")
    try:
        detector.restore(channels, scaler, state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: {WEIGHTS} does not fit the model described in {METADATA} "
                              f"({' '.join(first[:2])[:300]}); {retrain}") from None
    baselines, own_alarm = _load_baselines(path, meta, len(channels), retrain)
    try:
        health = HealthRule.from_dict(meta["health"], channels) if meta.get("health") is not None else None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {METADATA} has an unreadable health section ({exc!r}); {retrain}") from None
    detector.parts = parts
    detector.to(device)
    return LoadedModel(detector, threshold, meta, str(meta.get("name") or path.name), str(meta.get("version", "")),
                       alarm, baselines, own_alarm, health)


def _load_baselines(path: Path, meta: dict, channels: int, retrain: str):
    """The per-sensor baselines a model was saved with (None for a model from before them)."""
    b = meta.get("baselines")
    if b is None:
        return None, None
    f = path / "baselines.npz"
    if not isinstance(b, dict) or not f.is_file():
        raise CheckpointError(f"{path}: baselines.npz is missing, so this is not a complete model; {retrain}")
    if b.get("sha256") != _sha256(f):
        raise CheckpointError(f"{path}: baselines.npz is not the one {METADATA} was saved with; {retrain}")
    try:
        baselines = Baselines.load(f, channels)
        own = AlarmRule.from_dict(b["own_alarm"]) if b.get("own_alarm") is not None else None
    except (BaselineError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}; {retrain}") from None
    return baselines, own


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
