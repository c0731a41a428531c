"""What `latentwatch train` and `latentwatch score` do, as two functions, so the CLI and the
defaults benchmark (`evaluate skab --select defaults`) run the same code.

    options = Recipe()                                  # train's defaults; Recipe(model="vae", ...) etc.
    trained = train(X, channels, options)               # .detector .threshold .rule .held
    out = flag_series(trained.detector, trained.threshold, trained.rule, values)   # per row of `values`

`flag_series` scores every row of a file (rows before the first full window have no score and are
never anomalous) and applies the alarm rule (`alarms.AlarmRule`) to the scored readings, as the
stream does, episodes included.
"""

from __future__ import annotations

import copy

import logging
from dataclasses import dataclass, field

import numpy as np

from latentwatch.detectors import alarms, baselines as bl, health
from latentwatch.detectors.alarms import AlarmRule
from latentwatch.detectors.base import Scores, sliding_windows
from latentwatch.detectors.calibrate import fit_and_calibrate, fit_no_worse_than_pca
from latentwatch.detectors.networks import TorchDetector, make_detector
from latentwatch.detectors.thresholds import AdaptiveThreshold, POTThreshold, QuantileThreshold, Threshold

log = logging.getLogger(__name__)

CHUNK = 256  # readings in a row the shared model's sample takes of a sensor (windows inside; few seams)
AUTO_AE_MIN_ROWS = 5000  # below this, autoencoders ended worse than PCA on held-out data (SKAB, 400 rows)
DEFAULT_WINDOW = {"auto": 8, "pca": 8, "window": 32, "mlp": 1, "vae": 32}
SCORES = {"reconstruction": ("reconstruction",), "both": ("reconstruction", "latent_distance")}


@dataclass
class Recipe:
    """`latentwatch train`'s options (the defaults are train's defaults)."""

    model: str = "auto"  # auto | pca | window | mlp | vae
    window: int | None = None  # None: DEFAULT_WINDOW[model]
    score_last: int | None = None  # None: the window
    variance: float = 0.8  # PCA: share of the variance its components explain
    score: str = "reconstruction"  # a key of SCORES
    latent: int | None = None
    false_alarm_rate: float = alarms.BUDGET  # the budget: fraction of normal readings allowed to alarm
    ewma_lambda: float = alarms.LAMBDA
    threshold: str = "auto"  # the instant limit: auto (POT at its share of the budget) | quantile | pot | adaptive
    quantile: float = 0.99
    margin: float = 1.0
    risk: float | None = None  # POT tail probability; None: the instant limit's share of the budget
    val_fraction: float = 0.2
    calibration: str = "auto"  # blocks | cross | auto (cross for PCA): calibrate.fit_and_calibrate
    epochs: int = 100
    batch_size: int | None = None
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    # per-sensor normal (detectors/baselines.py)
    cold_start: int = bl.COLD_START  # readings a new sensor is judged by the fleet baseline
    own_min: int = bl.OWN_MIN  # training readings before a sensor gets its own model
    own: bool = True  # own models for sensors with own_min readings
    max_train_readings: int = 20_000  # the shared model's sample (baselines and own models use every reading)
    # sensor health (detectors/health.py; kept in model.json, the model group's limits)
    stuck_n: int = health.STUCK_N
    flatline_n: int = health.FLATLINE_N
    silent_s: float = health.SILENT_S

    def kind(self, rows: int) -> str:
        if self.model != "auto":
            return self.model
        return "window" if rows >= AUTO_AE_MIN_ROWS else "pca"

    def make_threshold(self) -> Threshold:
        q = lambda: QuantileThreshold(self.quantile, self.margin)  # noqa: E731
        risk = self.risk if self.risk is not None else min(alarms.INSTANT_SHARE * self.false_alarm_rate, 0.5)
        pot = lambda: POTThreshold(risk)  # noqa: E731
        makers = {"auto": pot, "quantile": q, "pot": pot, "adaptive": lambda: AdaptiveThreshold(base=q())}
        if self.threshold not in makers:
            raise ValueError(f"unknown threshold {self.threshold!r}; known: {', '.join(makers)}")
        return makers[self.threshold]()


@dataclass
class Trained:
    detector: TorchDetector
    threshold: Threshold  # the instant limit (`rule.instant` is its value)
    rule: AlarmRule
    held: np.ndarray  # the held-out normal scores the threshold and rule were set on
    baselines: bl.Baselines | None = None
    own_rule: AlarmRule | None = None  # the alarm rule of readings scored by their sensor's own model
    sample_rows: int = 0  # readings the shared model was trained on


def train(X: np.ndarray, channels: list[str] | None, options: Recipe | None = None,
          sensor_ids=None) -> Trained:
    """Each sensor's baseline (and own model) from all of `X` [n, channels] (`sensor_ids` [n]:
    whose reading each row is, each sensor's rows in time order; None: one sensor, id ""), then
    the shared model (`train_shared`) on a bounded sample of the readings standardised by their
    sensor's baseline (`Recipe.max_train_readings`: an equal share per sensor in contiguous
    chunks spread over its history, baselines.sample_for_fleet)."""
    o = options or Recipe()
    X = np.asarray(X, np.float32)
    if sensor_ids is None:
        sensor_ids = np.full(len(X), "", dtype="U1")
    sensor_ids = np.asarray(sensor_ids).astype(str)
    if len(sensor_ids) != len(X):
        raise ValueError(f"{len(sensor_ids)} sensor ids for {len(X)} readings")
    b, own_held, own_segs = bl.fit(X, sensor_ids, cold_start=o.cold_start,
                                   own_min=o.own_min if o.own else len(X) + 1)
    _, groups = bl.group_rows(sensor_ids)
    rows = bl.sample_for_fleet(groups, o.max_train_readings, chunk=max(CHUNK, 32 * (o.window or DEFAULT_WINDOW[o.model])))
    Z = bl.standardise(X[rows], b.center[b.rows(sensor_ids[rows])], b.scale[b.rows(sensor_ids[rows])])
    log.info("baselines of %d sensors (%d with an own model); shared model on %d of %d readings", b.sensors,
             b.owned, len(Z), len(X))
    t = train_shared(Z, channels, o)
    own_rule = None
    if len(own_held) >= 10:
        own_rule = alarms.calibrate(own_held, o.false_alarm_rate, lam=o.ewma_lambda, segments=own_segs)
    return Trained(t.detector, t.threshold, t.rule, t.held, b, own_rule, len(Z))


def train_shared(X: np.ndarray, channels: list[str] | None, options: Recipe | None = None) -> Trained:
    """Fit the detector `options` describe on `X` [n, channels] (time order), with its score
    parts, instant limit and alarm rule (all from held-out normal data, no labels). An explicit
    model kind is kept (a warning when PCA did better on held-out data); `auto` keeps the guard
    that replaces a worse autoencoder by PCA."""
    o = options or Recipe()
    if not 0 < o.false_alarm_rate < 1:
        raise ValueError(f"the false-alarm rate must be a fraction in (0, 1), e.g. 0.01; got {o.false_alarm_rate}")
    if not 0 < o.ewma_lambda <= 1:
        raise ValueError(f"the EWMA weight must be in (0, 1], e.g. 0.1; got {o.ewma_lambda}")
    if o.score not in SCORES:
        raise ValueError(f"unknown score {o.score!r}; known: {', '.join(SCORES)}")
    kind = o.kind(len(X))
    window = o.window or DEFAULT_WINDOW[o.model]
    config: dict = {"device": o.device, "window": window, "score_last": o.score_last or window}
    if kind == "pca":
        config["variance"] = o.variance
    if o.latent is not None:
        config["latent_dim"] = o.latent
    detector = make_detector(kind, **config)
    fit = dict(channels=channels, val_fraction=o.val_fraction, use=SCORES[o.score], calibration=o.calibration,
               epochs=o.epochs, batch_size=o.batch_size, lr=o.lr, seed=o.seed)
    if o.model == "auto":
        detector, threshold, held = fit_no_worse_than_pca(detector, X, o.make_threshold, **fit)
    else:
        threshold = o.make_threshold()
        held = fit_and_calibrate(detector, X, threshold, **fit)
        r = detector.training_report
        if detector.kind != "pca" and r is not None and r.pca_val_loss < r.best_val_loss:
            log.warning("the %s autoencoder ended worse than PCA on held-out data (loss %.4g vs %.4g); kept as "
                        "asked (--model auto would use PCA)", detector.kind, r.best_val_loss, r.pca_val_loss)
    segments = detector.training_report.validation_index if detector.training_report is not None else None
    if segments is not None and len(segments) != len(held):
        segments = None
    rule = alarms.calibrate(held, o.false_alarm_rate, lam=o.ewma_lambda, segments=segments, instant=threshold.value)
    return Trained(detector, threshold, rule, held)


@dataclass
class Flagged:
    """Per row of a file: score, instant limit, above it, anomaly (the alarm rule), the rule that
    fired, its statistic and limit, the EWMA; `events` the episode events (event, row, episode);
    `scored` holds the detector's output for rows `first`.. (latent vectors, parts)."""

    score: np.ndarray
    threshold: np.ndarray
    above: np.ndarray
    anomaly: np.ndarray
    first: int  # rows before this one have no full window: no score, never anomalous
    scored: Scores
    parts: dict[str, np.ndarray] = field(default_factory=dict)  # per row, NaN before `first`
    rule: np.ndarray | None = None  # int8 per row: index into alarms.RULES, -1 none
    statistic: np.ndarray | None = None
    limit: np.ndarray | None = None
    ewma: np.ndarray | None = None
    events: list = field(default_factory=list)  # (event, row, Episode)
    baseline: np.ndarray | None = None  # per row: own | learned | fleet (which baseline judged it); "" none


def flag_series(detector: TorchDetector, threshold: Threshold, rule: AlarmRule, values: np.ndarray,
                ts: np.ndarray | None = None, *, baselines: bl.Baselines | None = None, sensor_id: str = "",
                own_rule: AlarmRule | None = None, resets: np.ndarray | None = None,
                silent_end: bool = False) -> Flagged:
    """Score every row of `values` [n, channels] (one sensor, time order) and flag it as `score`
    and the stream do. `ts`: the rows' event times (episode updates are rate-limited by them;
    default the row number as seconds). Episodes are named by their first row (`ref` (0, row, 0)).
    With `baselines` (a model trained per sensor), rows are standardised by `sensor_id`'s
    baseline (a sensor the model has not seen: the fleet's for its first `cold_start` readings,
    then its own learned from them) and a sensor with an own model is scored by it and judged by
    `own_rule`; `Flagged.baseline` says which baseline judged each row. Sensor health (issue 30,
    detectors/health.py `judge_marks`): `resets` [n] rows after which the sensor was silent (an open
    episode closes first, event `close:silent`), `silent_end` the sensor is silent at the end (an
    episode still open closes so, at the last row). With `rule.adapt_after` set and `baselines`
    (ignored without: nothing to re-learn), an episode that became the new normal at row r has the
    rows after it re-learnt (judged by the fleet baseline and held back for the model's
    `cold_start` rows, then by the baseline learnt from them unshrunk, the EWMA restarted), as an
    operator's accept in the stream; again at each later adaptation (a loop, spliced once)."""
    if rule.adapt_after is not None and baselines is None:
        rule = copy.copy(rule)
        rule.adapt_after = None
    first = detector.window - 1
    n = len(values)
    out, at = _flag_once(detector, threshold, rule, values, ts, baselines=baselines, sensor_id=sensor_id,
                         own_rule=own_rule, resets=resets, silent_end=silent_end)
    pieces = [(0, out)]
    while at is not None and at + 1 < n:  # the rows after `at` re-learnt, then judged by the shared rule
        r = at + 1
        lo = r - first  # the sub-series starts `first` rows before r: the windows' context
        rest, sub_at = _flag_once(detector, threshold, rule, values[lo:],
                                  ts[lo:] if ts is not None else np.arange(lo, n, dtype=np.float64),
                                  baselines=baselines, relearn=True, silent_end=silent_end,
                                  resets=resets[lo:] if resets is not None else None, row0=lo)
        pieces.append((r, rest))
        at = sub_at + lo if sub_at is not None else None
    return out if len(pieces) == 1 else _splice(pieces, n, first)


def _flag_once(detector: TorchDetector, threshold: Threshold, rule: AlarmRule, values: np.ndarray,
               ts: np.ndarray | None = None, *, baselines: bl.Baselines | None = None, sensor_id: str = "",
               own_rule: AlarmRule | None = None, resets: np.ndarray | None = None, silent_end: bool = False,
               relearn: bool = False, row0: int = 0) -> tuple[Flagged, int | None]:
    """`flag_series` up to its first adaptation: (the flags, the row it adapted at or None).
    `relearn`: the series follows an adaptation (fleet baseline for N rows, held back, then the
    learnt one); `row0`: the series' first row in the file (episodes are named by file rows)."""
    values = np.asarray(values, np.float32)
    n, first = len(values), detector.window - 1
    state = np.full(n, "", dtype=object)
    own = -1
    if relearn:  # after a re-baselining: fleet for the first N readings (held back), then learned from them
        N = baselines.cold_start if baselines is not None else 0
        hold = np.zeros(n, bool)
        hold[first:first + N] = True
        if baselines is None:
            scored = detector.score(sliding_windows(values, detector.window))
        else:
            Za = bl.standardise(values, baselines.fleet_center, baselines.fleet_scale)
            state[:] = "fleet"
            if n > first + N:
                Zb = bl.standardise(values, *baselines.learn(values[first:first + N:baselines.stride], trust=True))
                state[first + N:] = "learned"
                cut = N
                a = detector.score(sliding_windows(Za[:first + max(N, 1)], detector.window))
                b_ = detector.score(sliding_windows(Zb, detector.window))
                scored = _concat_scores(_slice_scores(a, 0, cut), _slice_scores(b_, cut, len(b_)))
                resets = np.zeros(n, np.int8) if resets is None else np.array(resets, np.int8)
                resets[first + N] = 2  # the EWMA starts again at the first reading judged by the new baseline
            else:
                scored = detector.score(sliding_windows(Za, detector.window))
    elif baselines is None:
        scored = detector.score(sliding_windows(values, detector.window))
    else:
        row = baselines.row(sensor_id)
        if row >= 0:
            Z = bl.standardise(values, baselines.center[row], baselines.scale[row])
            scored = detector.score(sliding_windows(Z, detector.window))
            state[:] = "own"
            own = int(baselines.own_row[row]) if own_rule is not None else -1
            if own >= 0:
                s, err = baselines.own_scores(Z[first:], np.full(max(n - first, 0), own, np.int64))
                scored = Scores(scored.latent, err, s, {k: s for k in scored.parts} or {"reconstruction": s})
        else:
            N = baselines.cold_start
            Za = bl.standardise(values, baselines.fleet_center, baselines.fleet_scale)
            state[:] = "fleet"
            if n > N:
                Zb = bl.standardise(values, *baselines.learn(values[:N:baselines.stride]))
                state[N:] = "learned"
                a = detector.score(sliding_windows(Za[:max(N, first + 1)], detector.window))
                cut = max(N - first, 0)  # windows ending before row N
                b_ = detector.score(sliding_windows(Zb, detector.window))
                scored = _concat_scores(_slice_scores(a, 0, cut), _slice_scores(b_, cut, len(b_)))
            else:
                scored = detector.score(sliding_windows(Za, detector.window))
    if own >= 0:
        rule = own_rule
    m = n - first
    if relearn:  # held back while re-learning: the rule sees quiet readings (as a mute's in the stream)
        judged = np.where(hold[first:], 0.0, scored.score)
    else:
        judged = scored.score
    score = np.full(n, np.nan)
    score[first:] = scored.score
    thr = np.full(n, rule.instant if own >= 0 else threshold.value)
    thr[first:] = rule.instant if own >= 0 else threshold.thresholds(scored.score)
    above = np.nan_to_num(score, nan=-np.inf) > thr
    rows = np.arange(first, n)
    times = (np.asarray(ts, np.float64) if ts is not None else np.arange(n, dtype=np.float64))[first:]
    refs = np.stack([np.zeros(m, np.int64), rows + row0, np.zeros(m, np.int64)], axis=1)
    d, post = rule.step(np.zeros(m, np.int64), judged, times, refs, {}, instant=thr[first:],
                        resets=np.asarray(resets, np.int8)[first:] if resets is not None else None)
    if relearn:
        d.statistic[hold[first:]] = score[first:][hold[first:]]
    if silent_end and m and post.get(0) is not None and post[0].episode is not None:
        d.events.append(("close:silent", m - 1, 0, post[0].episode))
    anomaly = np.zeros(n, dtype=bool)  # the rule sees scored readings only, as in the stream
    anomaly[first:] = d.alarm
    pad = lambda v, fill: np.concatenate([np.full(first, fill, dtype=v.dtype), v])  # noqa: E731
    parts = {p: np.concatenate([np.full(first, np.nan), v]) for p, v in scored.parts.items()}
    events = [(e, int(pos) + first, ep) for e, pos, _, ep in d.events]
    out = Flagged(score, thr, above, anomaly, first, scored, parts, pad(d.rule, -1), pad(d.statistic, np.nan),
                  pad(d.limit, np.nan), pad(d.ewma, np.nan), events, state)
    return out, (int(d.adapted[0][1]) + first if d.adapted else None)


def _splice(pieces: list[tuple[int, Flagged]], n: int, first: int) -> Flagged:
    """One Flagged over rows [0, n) from the pieces (start row, flags): piece i gives rows from
    its start to the next piece's; a piece after the first starts `first` rows before its start
    row (the windows' context), so its local row is the file row minus (start - first)."""
    bounds = [r for r, _ in pieces[1:]] + [n]
    cols = ("score", "threshold", "above", "anomaly", "rule", "statistic", "limit", "ewma", "baseline")
    parts_of: dict[str, list] = {}
    out = {c: [] for c in cols}
    scored, events = [], []
    for (r, f), end in zip(pieces, bounds):
        shift = 0 if r == 0 else r - first  # file row = local row + shift
        lo, hi = r - shift, end - shift  # local rows taken
        for c in cols:
            out[c].append(getattr(f, c)[lo:hi])
        for p, v in f.parts.items():
            parts_of.setdefault(p, []).append(v[lo:hi])
        scored.append(_slice_scores(f.scored, max(lo - first, 0), hi - first))
        events += [(e, row + shift, ep) for e, row, ep in f.events if lo <= row < hi]
    merged = scored[0]
    for sc in scored[1:]:
        merged = _concat_scores(merged, sc)
    cat = {c: np.concatenate(v) for c, v in out.items()}
    parts = {p: np.concatenate(v) for p, v in parts_of.items() if len(v) == len(pieces)}
    return Flagged(cat["score"], cat["threshold"], cat["above"], cat["anomaly"], first, merged, parts, cat["rule"],
                   cat["statistic"], cat["limit"], cat["ewma"], events, cat["baseline"])


def _slice_scores(s: Scores, lo: int, hi: int) -> Scores:
    return Scores(s.latent[lo:hi], s.channel_error[lo:hi], s.score[lo:hi], {k: v[lo:hi] for k, v in s.parts.items()})


def _concat_scores(a: Scores, b: Scores) -> Scores:
    return Scores(np.concatenate([a.latent, b.latent]), np.concatenate([a.channel_error, b.channel_error]),
                  np.concatenate([a.score, b.score]), {k: np.concatenate([a.parts[k], b.parts[k]]) for k in a.parts})
