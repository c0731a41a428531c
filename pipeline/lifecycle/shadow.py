"""Shadow scoring: a candidate model scores every committed batch beside the loaded one, so an
operator can compare the two before `latentwatch models promote`.

    shadow = Shadow(candidate, metrics, settings)     # run --shadow DIR (cli/run.py)
    ...
    shadow.observe(batch)    # after the batch committed (Lifecycle.committed), never before
    shadow.forget({0, 3})    # partitions revoked, lost or rewound (Rebalance)

The candidate has its own `Scorer` and its own per-sensor `StateStore` (windows, per-sensor
thresholds, persistence bits); it never reads or writes the loaded model's state. Its state is
in memory only and not in the changelog: it starts empty at start-up, and is dropped for
partitions that move or are rewound, so the candidate warms up again there (its first
`window - 1` readings per sensor are not compared). It produces nothing: no alerts, no latent
records, no dead letters, no changelog.

Readings are paired by their source (partition, offset, index): a reading scored by both counts
in `latentwatch_shadow_readings_total{agreement}` by whether each model would alert on it (the
alert decision, after the persistence rule): `both`, `current_only`, `candidate_only`,
`neither`. A reading scored by one of them only (the candidate's warm-up, another window,
channels one model lacks) counts in `latentwatch_shadow_unpaired_readings_total`.
`latentwatch_shadow_score_correlation` is the Spearman rank correlation of the two models'
scores over the last `CORRELATION_WINDOW` paired readings (computed on scrape; NaN with fewer
than `MIN_PAIRS`). A failure of the candidate on a batch never reaches the pipeline: it is
logged once and counted in `latentwatch_shadow_failures_total`. Counts are per process and
no metric has a per-sensor label.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from latentwatch.pipeline.scorer import Scorer
from latentwatch.pipeline.state import StateStore

log = logging.getLogger("latentwatch.shadow")

AGREEMENTS = ("both", "current_only", "candidate_only", "neither")
CORRELATION_WINDOW = 10_000  # paired readings the score correlation is computed over
MIN_PAIRS = 100
_REF = np.dtype([("partition", "<i8"), ("offset", "<i8"), ("index", "<i8")])


class Shadow:
    def __init__(self, model, metrics, settings, *, window: int = CORRELATION_WINDOW):
        s = settings
        self.model, self.metrics = model, metrics
        self.scorer = Scorer(model, max_message_bytes=s.batch.max_message_bytes, max_future_s=s.batch.max_future_s,
                             late_policy=s.late_policy, critical_ratio=s.alerts.critical_ratio, latent_topic=False,
                             changelog=False, refs=True)
        self.state = StateStore(s.state.max_sensors, s.state.idle_ttl_s)
        self._scores = np.zeros((window, 2), np.float64)  # ring of (current, candidate) scores
        self._filled = self._next = 0
        self._lock = threading.Lock()  # the ring is read on scrape, from the metrics thread
        self._failed = False
        metrics.shadow_loaded(model, self.correlation)

    def observe(self, batch) -> None:
        """A committed batch of the loaded model (scored with `refs`): score the same messages
        with the candidate and count how the two agree. Never raises."""
        try:
            candidate = self.scorer.score(batch.messages, self.state, now=batch.now)
            self.state.apply(candidate.updates)
            self._compare(batch, candidate)
        except Exception as exc:  # noqa: BLE001 - the candidate must never break the pipeline
            self.metrics.shadow_failures.inc()
            if not self._failed:
                self._failed = True
                log.error("shadow model %s version %s failed on a batch and is skipped for it (logged once; "
                          "counted in latentwatch_shadow_failures_total): %r", self.model.name, self.model.version,
                          exc)

    def forget(self, partitions: set[int]) -> None:
        self.state.drop_partitions(partitions)

    def _compare(self, current, candidate) -> None:
        a, b = _refs(current), _refs(candidate)
        _, ia, ib = np.intersect1d(a, b, assume_unique=True, return_indices=True)
        fa, fb = _flags(current)[ia], _flags(candidate)[ib]
        counts = {"both": int(np.count_nonzero(fa & fb)), "current_only": int(np.count_nonzero(fa & ~fb)),
                  "candidate_only": int(np.count_nonzero(~fa & fb)), "neither": int(np.count_nonzero(~fa & ~fb))}
        m = self.metrics
        for agreement, n in counts.items():
            if n:
                m.shadow_readings.labels(agreement=agreement).inc(n)
        unpaired = len(a) + len(b) - 2 * len(ia)
        if unpaired:
            m.shadow_unpaired.inc(unpaired)
        self._keep(current.scores[ia], candidate.scores[ib])

    def _keep(self, sa: np.ndarray, sb: np.ndarray) -> None:
        size = len(self._scores)
        pairs = np.stack([sa, sb], 1)[-size:]
        with self._lock:
            idx = (self._next + np.arange(len(pairs))) % size
            self._scores[idx] = pairs
            self._next = (self._next + len(pairs)) % size
            self._filled = min(size, self._filled + len(pairs))

    def correlation(self) -> float:
        """Spearman rank correlation of the kept pairs (NaN with too few, or a constant score)."""
        with self._lock:
            pairs = self._scores[:self._filled].copy()
        if len(pairs) < MIN_PAIRS:
            return float("nan")
        return spearman(pairs[:, 0], pairs[:, 1])


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's coefficient defines them."""
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], len(v)]
    ranks = np.empty(len(v), np.float64)
    ranks[order] = np.repeat((starts + ends - 1) / 2.0, ends - starts)
    return ranks


def _flags(batch) -> np.ndarray:
    return batch.flagged if batch.flagged is not None else np.zeros(0, bool)


def _refs(batch) -> np.ndarray:
    refs = batch.refs if batch.refs is not None else np.empty((0, 3), np.int64)
    return np.ascontiguousarray(refs, dtype=np.int64).view(_REF).ravel()
