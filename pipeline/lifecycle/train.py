"""A new version of a versioned model directory, without the command line: what `latentwatch
train` runs once cli/detect.py has read its flags and data, and what `demo --scenario drift`
(devtools/drift_demo.py) runs in-process; `promote` is what `latentwatch models promote` runs.

    new = train_version(X, channels, Recipe(...), "models/pump", parts=csv_files)  # or stream=StreamTraining
    print(new.describe("2 file(s)"))
    promote(Path("models/pump"), new.version)

Errors come as `UserError` (one line), as the CLI prints them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentwatch.pipeline.errors import UserError


@dataclass
class NewVersion:
    detector: object
    threshold: object
    rule: object  # detectors.alarms.AlarmRule
    version: str
    out: str
    promoted: bool
    rows: int
    channels: list[str]
    seconds: float
    parts: list  # the CSV files (detectors.csvdata.CSVData) it was trained on; empty from a topic
    baselines: object = None  # detectors.baselines.Baselines
    sample_rows: int = 0  # readings the shared model was trained on

    def describe(self, origin: str) -> str:
        """The line `train` prints."""
        detector, threshold, rule = self.detector, self.threshold, self.rule
        out = f"{self.out} as version {self.version}" + ("" if self.promoted else " (not current)")
        r = detector.training_report
        epochs = f", {r.epochs_run} epochs (best {r.best_epoch})" if r and r.epochs_run else ""
        return (f"trained {detector.kind} model on {self.rows} rows x {len(self.channels)} channels from {origin} "
                f"in {self.seconds:.1f}s{epochs}; instant limit {threshold.kind} = {threshold.value:.5g}; "
                f"{rule.describe()}{_per_day(rule, self.parts)}{self._per_sensor()}; saved to {out}")

    def _per_sensor(self) -> str:
        b = self.baselines
        if b is None:
            return ""
        return (f"; per-sensor baselines of {b.sensors:,} sensor(s), {b.owned:,} with an own model, the shared model "
                f"on {self.sample_rows:,} of {self.rows:,} readings; a new sensor is judged by the fleet baseline for "
                f"its first {b.cold_start} readings")

    def note(self) -> str | None:
        """What `train` adds when the held-out data cannot verify the false-alarm budget."""
        rule = self.rule
        if rule.budget * rule.held_out < 10:
            return (f"note: {rule.held_out} held-out readings cannot verify a false-alarm rate of {rule.budget:.3%} "
                    f"(below ~10/{rule.held_out} = {10 / max(rule.held_out, 1):.2%}); give more normal data to check it")
        return None


def train_version(X: np.ndarray, channels: list[str], options, out: str, *, parts=(), stream=None,
                  name: str | None = None, promote: bool = True, sensor_ids=None) -> NewVersion:
    """Train with `options` (detectors.recipe.Recipe) on `X` [n, channels] and publish the model
    as a new version of `out` (current unless `promote` is false). `parts`: the CSV files `X`
    came from; `stream`: lifecycle.retrain.StreamTraining when it came from a topic (its likely
    false alerts go back into the threshold's data, and the alarm rule is calibrated again)."""
    from latentwatch.detectors import recipe
    from latentwatch.detectors.checkpoint import save, summarise_training_data
    from latentwatch.detectors.versions import VersionError, publish
    from latentwatch.pipeline.lifecycle.drift import reference_for

    parts = list(parts)
    if stream is not None and sensor_ids is None:
        sensor_ids = stream.sensor_ids
    started = time.perf_counter()
    try:
        trained = recipe.train(X, channels, options, sensor_ids=sensor_ids)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    detector, threshold, held, rule = trained.detector, trained.threshold, trained.held, trained.rule
    seconds = time.perf_counter() - started
    summary = summarise_training_data(X, channels, [p.path for p in parts])
    if stream is not None:
        summary["source"] = stream.finish(detector, threshold, held, trained.baselines)
        from latentwatch.detectors import alarms  # the instant limit moved: the EWMA limit fills the rest again

        segments = getattr(detector.training_report, "validation_index", None)
        rule = alarms.calibrate(held, rule.budget, lam=rule.lam, instant=threshold.value,
                                segments=segments if segments is not None and len(segments) == len(held) else None)
    b = trained.baselines
    if b is not None:  # the shared model sees readings standardised by their sensor's baseline
        ids = np.asarray(sensor_ids if sensor_ids is not None else np.full(len(X), "", dtype="U1")).astype(str)
        from latentwatch.detectors.baselines import group_rows, sample_for_fleet

        pick = np.sort(sample_for_fleet(group_rows(ids)[1], 200_000, 256))  # contiguous chunks: real windows
        r = b.rows(ids[pick])
        Xd = ((np.asarray(X, np.float32)[pick] - b.center[r]) / b.scale[r]).astype(np.float32)
    else:
        Xd = X
    summary["drift_reference"] = reference_for(detector, Xd, held, threshold.value)
    from latentwatch.detectors.health import HealthRule  # sensor health: each channel's normal steps (issue 30)

    o = options or recipe.Recipe()
    health = HealthRule.fit(X, channels, sensor_ids, stuck_n=o.stuck_n, flatline_n=o.flatline_n, silent_s=o.silent_s)
    name = name or Path(out).resolve().name
    try:
        version = publish(out, lambda d, v: save(d, detector, threshold, summary, name=name, version=v,
                                                 alarm=rule, baselines=trained.baselines,
                                                 own_alarm=trained.own_rule, health=health),
                          make_current=promote)
    except VersionError as exc:
        raise UserError(str(exc)) from None
    return NewVersion(detector, threshold, rule, version, out, promote, len(X), channels, seconds, parts,
                      trained.baselines, trained.sample_rows)


def promote(root: Path, version: str):
    """Make `version` of the versioned directory `root` current, once it loads; the new pointer."""
    from latentwatch.detectors import versions
    from latentwatch.detectors.checkpoint import CheckpointError, load

    if version not in versions.list_versions(root):
        raise UserError(f"{root}: no version {version!r}; see `latentwatch models list {root}`")
    try:
        load(root / versions.VERSIONS / version, device="cpu")
    except CheckpointError as exc:
        raise UserError(f"not promoted: {exc}") from None
    try:
        return versions.set_current(root, version, reason="promote")
    except versions.VersionError as exc:
        raise UserError(str(exc)) from None


def _per_day(rule, parts) -> str:
    """The budget as false alarms per sensor per day, at the training data's sampling interval."""
    import datetime as dt

    for part in parts[:1]:
        stamps = part.timestamps
        if stamps is None or len(stamps) < 3:
            return ""
        try:
            t = np.array([dt.datetime.fromisoformat(str(v)).timestamp() for v in stamps[:1000]])
        except ValueError:
            try:
                t = np.asarray(stamps[:1000], dtype=np.float64)
            except ValueError:
                return ""
        step = float(np.median(np.diff(t)))
        if step > 0:
            return (f" (sampling every {step:.3g} s: about {rule.budget * 86400 / step:.3g} falsely alarmed readings "
                    "per sensor per day)")
    return ""
