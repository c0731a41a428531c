"""Model groups: one process, several models, sensors routed to them by the user's rules
(`groups` in the config; routing.py, docs/groups.md).

Each group has its own model, `Scorer` (its channels, window, thresholds, budget), and
`Lifecycle` (its directory watched for new versions: hot swap, drift, shadow). They share the
process's consumer, producer, committer and `StateStore` (keyed by (partition, sensor); a sensor
belongs to one group, so its entry is always its group's model's shape: restored entries are
checked against their own group's model, `StateStore.fit_of`, and a swap re-fits only the
swapped group's entries, `StateStore.for_model(only=...)`).

`GroupedScorer.score` keeps the scorer's contract (pure, a frozen batch out, a prefix of the
messages taken, the rest handed back): the batch is split by group (the messages of each in
their original order), each group's scorer scores its part, and the parts are merged into one
`GroupedBatch` (dead letters by original position, offsets of the prefix taken, records and
state updates of every part) that keeps each part (`parts`) for its group's lifecycle. The
reading cap is the batch's: each group is scored with all of it; when one hands messages back,
the batch is cut at the earliest of them, and when the groups together took more than the cap
(rare: the source gathers about the cap's worth), at the longest prefix within it; the parts
holding messages past the cut are scored again without them (scoring is pure, so this is exact). Messages routed nowhere are dead letters, reason `no_group`.

Without `groups` none of this is built: the run loop is what it was.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np
from latentwatch.pipeline import budget, records, state
from latentwatch.pipeline.errors import UserError
from latentwatch.pipeline.events import Committed, Listener
from latentwatch.pipeline.lifecycle import Lifecycle
from latentwatch.pipeline.lifecycle.shadow import Shadow
from latentwatch.pipeline.routing import MALFORMED, NO_GROUP, Router
from latentwatch.pipeline.scorer import ScoredBatch
from prometheus_client import Counter, Gauge

log = logging.getLogger("latentwatch.groups")

__all__ = ["Group", "GroupSet", "GroupSpec", "GroupedBatch", "GroupedScorer", "group_specs"]


@dataclass(frozen=True)
class GroupedBatch(ScoredBatch):
    """A merged batch; `parts`: (group index, that group's ScoredBatch) of each group scored."""

    parts: tuple = ()


@dataclass(frozen=True)
class GroupSpec:
    """One group as configured: `match` None for the fallback group (the top-level model.path)."""

    name: str
    match: str | None
    model: str
    shadow: str | None = None


def group_specs(settings) -> list[GroupSpec]:
    """The configured groups in order, then the fallback group (when there is one)."""
    out = [GroupSpec(g.name, g.match, g.model, g.shadow) for g in settings.groups]
    if settings.fallback_group is not None:
        if not settings.model.path:
            raise UserError(f"groups_fallback is {settings.fallback_group!r} but model.path is not set: set "
                            "model.path (--model) to the fallback group's model, or groups_fallback: none")
        out.append(GroupSpec(settings.fallback_group, None, settings.model.path, settings.model.shadow))
    return out


@dataclass
class Group:
    index: int
    spec: GroupSpec
    model: object  # LoadedModel
    scorer: object = None  # Scorer
    lifecycle: Lifecycle | None = None
    refs: bool = False  # its scorer says which reading each score is of (a shadow compares them)
    per_reading: int = 0  # the most bytes of records one of its readings makes (budget.py)
    fit: state.Fit | None = None

    @property
    def name(self) -> str:
        return self.spec.name


class _View:
    """The store as one group's scorer reads it: an entry of a sensor routed to another group
    (a key naming one sensor and a body another) is shown only if it fits this group's model,
    so another model's tail never reaches this one."""

    __slots__ = ("fit", "index", "route", "store")

    def __init__(self, store, route, index: int, fit: state.Fit):
        self.store, self.route, self.index, self.fit = store, route, index, fit

    def get(self, key):
        e = self.store.get(key)
        if e is None or self.route(key[1]) == self.index:
            return e
        return e if state.check(e, self.fit) is None else None


class GroupedScorer:
    """`score` like `Scorer.score`, over the groups' scorers (see the module docstring)."""

    def __init__(self, groups: list[Group], router: Router):
        self.groups, self.router = groups, router

    def score(self, messages: list, store, now: float | None = None,
              max_readings: int | None = None, controls=None) -> GroupedBatch:
        now = time.time() if now is None else now
        members: dict[int, list[int]] = {}
        no_group: list[int] = []
        malformed_to = self.router.fallback if self.router.fallback is not None else 0
        for i, m in enumerate(messages):
            g = self.router.route_message(m.value(), m.key())
            if g == NO_GROUP:
                no_group.append(i)
                continue
            members.setdefault(malformed_to if g == MALFORMED else g, []).append(i)
        parts: dict[int, ScoredBatch] = {}
        cut = len(messages)
        for g, idx in members.items():
            sub = self._score(g, [messages[i] for i in idx], store, now, max_readings, controls)
            parts[g] = sub
            if sub.rest:  # cut at the earliest message handed back by any group
                cut = min(cut, idx[len(sub.messages)])
        if max_readings is not None and sum(sub.n_readings for sub in parts.values()) > max_readings:
            cut = min(cut, self._prefix_within(messages, members, parts, now, max_readings))
        if cut < len(messages):  # parts holding messages past the cut: scored again without them
            for g in list(parts):
                taken = members[g][:len(parts[g].messages)]
                if taken[-1] >= cut:
                    keep = [i for i in taken if i < cut]
                    if keep:
                        parts[g] = self._score(g, [messages[i] for i in keep], store, now, None, controls)
                    else:
                        del parts[g]
        return self._merge(messages, cut, members, parts, [i for i in no_group if i < cut], now)

    def _prefix_within(self, messages, members, parts, now: float, max_readings: int) -> int:
        """The groups together took more than the cap (each may take all of it): the longest
        prefix of the batch within it (at least one message), from each message's readings as
        its group's decoder counts them. Rare: the source gathers about the cap's worth."""
        counts = np.zeros(len(messages), np.int64)
        for g, sub in parts.items():
            d = self.groups[g].scorer.decoder.decode_many([(m.value(), m.key()) for m in sub.messages], now)
            counts[np.asarray(members[g], np.int64)[np.asarray(d.index, np.int64)]] = d.counts
        return max(1, int(np.searchsorted(np.cumsum(counts), max_readings, side="right")))

    def _score(self, g: int, sub: list, store, now: float, max_readings: int | None, controls=None) -> ScoredBatch:
        group = self.groups[g]
        return group.scorer.score(sub, _View(store, self.router.route, g, group.fit), now=now,
                                  max_readings=max_readings, controls=controls)

    def _merge(self, messages, cut, members, parts, no_group, now) -> GroupedBatch:
        kept = messages[:cut]
        dead = [(i, "no_group", self._no_group_detail(messages[i])) for i in no_group]
        items = [(g, parts[g]) for g in sorted(parts, key=lambda g: members[g][0])]
        alerts, severities, latents, episodes, changelog, scores, health = [], [], [], [], [], [], []
        updates: dict = {}
        for g, sub in items:
            idx = members[g]
            dead += [(idx[j], reason, detail) for j, reason, detail in sub.dead]
            alerts += sub.alerts
            severities += sub.severities
            latents += sub.latents
            episodes += sub.episodes
            health += sub.health
            changelog += sub.changelog
            scores.append(sub.scores)
            updates.update(sub.updates)
        dead.sort(key=lambda e: e[0])
        ts = [sub.max_event_ts for _, sub in items if sub.max_event_ts is not None]
        inference = [sub.inference_s for _, sub in items if sub.inference_s is not None]
        offsets = {(m.topic(), m.partition()): m.offset() + 1 for m in kept}
        return GroupedBatch(kept, dead, alerts, severities, latents,
                            np.concatenate(scores) if scores else np.empty(0),
                            sum(sub.n_readings for _, sub in items), updates, changelog,
                            max(ts) if ts else None, rest=list(messages[cut:]), offsets=offsets,
                            inference_s=sum(inference) if inference else None, now=now, episodes=episodes,
                            health=health, suppressed=sum(sub.suppressed for _, sub in items),
                            adapted=sum(sub.adapted for _, sub in items), parts=tuple(items))

    @staticmethod
    def _no_group_detail(message) -> str:
        key = message.key()
        if key:
            try:
                return (f"sensor id {key.decode('utf-8')!r} (the message key) matches no group's rule "
                        "(groups[].match) and groups_fallback is none")
            except UnicodeDecodeError:
                pass
        return ("a keyless frame or schema'd record goes to the fallback group (its sensor id is inside it), "
                "and groups_fallback is none: send the sensor id as the key")


class GroupMetrics:
    """The `group`-labelled series (one label value per group, never per sensor)."""

    def __init__(self, registry, names: list[str]):
        p, r = "latentwatch_group", registry
        self.messages = Counter(f"{p}_messages_consumed", "Input messages routed to each model group", ["group"], registry=r)
        self.readings_scored = Counter(f"{p}_readings_scored", "Readings scored, by model group", ["group"], registry=r)
        self.alerts = Counter(f"{p}_alerts", "Per-reading anomaly alerts, by model group", ["group"], registry=r)
        self.dead_letters = Counter(f"{p}_dead_letters", "Dead letters of the messages routed to each model group "
                                    "(no_group ones are in latentwatch_dead_letters_total alone)", ["group"], registry=r)
        self.model_info = Gauge(f"{p}_model_info", "The model each group runs (1 per group)", ["group", "name", "version"],
                                registry=r)
        self.threshold = Gauge(f"{p}_threshold", "Each group's model's threshold", ["group"], registry=r)
        self.latent_drift_psi = Gauge(f"{p}_latent_drift_psi", "latentwatch_latent_drift_psi of each group's model",
                                      ["group"], registry=r)
        self.live_exceedance = Gauge(f"{p}_live_exceedance_ratio", "latentwatch_live_exceedance_ratio of each group",
                                     ["group"], registry=r)
        self.reference_exceedance = Gauge(f"{p}_reference_exceedance_ratio", "latentwatch_reference_exceedance_ratio "
                                          "of each group's model", ["group"], registry=r)
        self.drift_window_readings = Gauge(f"{p}_drift_window_readings", "Readings in each group's drift window",
                                           ["group"], registry=r)
        self._info: dict[str, tuple[str, str]] = {}
        for name in names:
            for c in (self.messages, self.readings_scored, self.alerts, self.dead_letters):
                c.labels(group=name)
            for gauge in (self.latent_drift_psi, self.live_exceedance, self.reference_exceedance):
                gauge.labels(group=name).set(float("nan"))

    def set_model(self, group: str, model) -> None:
        old = self._info.get(group)
        if old is not None:
            self.model_info.remove(group, *old)
        self._info[group] = (model.name, str(model.version))
        self.model_info.labels(group=group, name=model.name, version=str(model.version)).set(1)
        self.threshold.labels(group=group).set(float(model.threshold.value))

    def counted(self, group: str, sub: ScoredBatch) -> None:
        self.messages.labels(group=group).inc(len(sub.messages))
        self.readings_scored.labels(group=group).inc(sub.n_scored)
        self.alerts.labels(group=group).inc(len(sub.severities))
        self.dead_letters.labels(group=group).inc(len(sub.dead))


class _Tee:
    """A gauge's `set` to two gauges (the primary group's drift is also the process's)."""

    def __init__(self, *gauges):
        self.gauges = gauges

    def set(self, value) -> None:
        for g in self.gauges:
            g.set(value)


class _GroupLifecycleMetrics:
    """What one group's Lifecycle (watcher, drift, shadow) sees as `metrics`: the model info and
    drift gauges of its group (and the process's own too for the primary group), the rest the
    process's (reload outcomes, shadow counters)."""

    def __init__(self, metrics, gm: GroupMetrics, group: str, primary: bool):
        self._m, self._gm, self._group, self._primary = metrics, gm, group, primary
        for attr in ("latent_drift_psi", "live_exceedance", "reference_exceedance", "drift_window_readings"):
            child = getattr(gm, attr).labels(group=group)
            setattr(self, attr, _Tee(child, getattr(metrics, attr)) if primary else child)

    def set_model(self, model) -> None:
        self._gm.set_model(self._group, model)
        if self._primary:
            self._m.set_model(model)

    def __getattr__(self, name):
        return getattr(self._m, name)


class GroupedLifecycle(Listener):
    """The run loop's lifecycle with groups: each group's, fed its part of each committed batch;
    a new version of a group's model is swapped in here (between batches), never by the run loop."""

    def __init__(self, groupset: GroupSet):
        self.set = groupset

    def _each(self):
        return [g.lifecycle for g in self.set.groups]

    def on_batch_committed(self, done: Committed) -> None:
        for g, sub in getattr(done.batch, "parts", ()):
            group = self.set.groups[g]
            self.set.metrics.counted(group.name, sub)
            group.lifecycle.on_batch_committed(dataclasses.replace(done, batch=sub))

    def on_revoked(self, partitions) -> None:
        for life in self._each():
            life.on_revoked(partitions)

    def on_reloaded(self, partitions) -> None:
        for life in self._each():
            life.on_reloaded(partitions)

    def between_batches(self):
        for group in self.set.groups:
            new = group.lifecycle.between_batches()
            if new is not None:
                self.set.swap(group.index, new)
        # the run loop's own swap is for a process without groups

    def request_check(self) -> None:
        for life in self._each():
            life.request_check()

    def close(self) -> None:
        for life in self._each():
            life.close()


class GroupSet:
    """The groups of one pipeline process (runner.Pipeline builds it when `groups` is configured):
    `loaded` is (GroupSpec, model, shadow model or None) of each, in routing order, the fallback
    group last. Installs the grouped scorer and the per-key state check on the pipeline."""

    def __init__(self, pipeline, loaded: list[tuple[GroupSpec, object, object]]):
        self.pipeline = p = pipeline
        s = p.settings
        self.groups = [Group(i, spec, model, refs=shadow is not None) for i, (spec, model, shadow) in enumerate(loaded)]
        fallback = len(loaded) - 1 if loaded[-1][0].match is None else None
        self.router = Router([g.spec.match for g in self.groups if g.spec.match is not None], fallback)
        self.primary = fallback if fallback is not None else 0  # its model is the process's `model`
        for g in self.groups:
            why = p._state_fits(g.model)
            if why is not None:
                raise UserError(f"group {g.name}: model {g.model.name} version {g.model.version} cannot run: {why}")
            self._set_scorer(g, g.model)
        self._size()
        p.state.fit_of = self._fit_of
        p.scorer = GroupedScorer(self.groups, self.router)
        self.metrics = GroupMetrics(p.metrics.registry, [g.name for g in self.groups])
        for g, (_, model, shadow) in zip(self.groups, loaded):
            gm = _GroupLifecycleMetrics(p.metrics, self.metrics, g.name, g.index == self.primary)
            g.lifecycle = Lifecycle(model, gm, path=g.spec.model, device=s.model.device,
                                    drift_window_s=s.model.drift_window_s, fits=p._state_fits,
                                    shadow=Shadow(shadow, gm, s) if shadow is not None else None)
        self.lifecycle = GroupedLifecycle(self)
        log.info("model groups: %s", ", ".join(
            f"{g.name} ({g.spec.match or 'fallback'} -> {g.model.name} {g.model.version})" for g in self.groups))

    def _set_scorer(self, group: Group, model) -> None:
        group.model = model
        group.scorer, group.per_reading = self.pipeline._new_scorer(model, refs=group.refs)
        group.scorer.group = group.name
        group.fit = state.Fit(model.detector.window, len(model.detector.channels), self.pipeline.state.max_future_s)

    def _size(self) -> None:
        """The reading cap of the batch: the least of the groups' (the largest records per reading)."""
        b = self.pipeline.settings.batch
        self.pipeline.sizing.for_model(min(budget.readings_cap(b.max_readings, b.max_output_bytes, g.per_reading)
                                           for g in self.groups))

    def _fit_of(self, key) -> state.Fit | None:
        g = self.router.route(key[1])
        return self.groups[g].fit if g >= 0 else None

    def swap(self, index: int, model) -> None:
        """Between batches: the group's later readings are scored by `model`; its sensors' state is
        kept, or re-fitted like a swap without groups (Pipeline._swap); other groups' untouched."""
        group = self.groups[index]
        old = group.model
        self._set_scorer(group, model)
        self._size()
        if (model.detector.window, list(model.detector.channels)) != (old.detector.window, list(old.detector.channels)) \
                or type(model.threshold) is not type(old.threshold):
            route = self.router.route
            self.pipeline.state.for_model(model.detector.window, len(model.detector.channels),
                                          only=lambda key: route(key[1]) == index)
        if index == self.primary:
            self.pipeline.model, self.pipeline.detector = model, model.detector
            self.pipeline.health.model_loaded(model.name)
        log.info("group %s: model %s version %s swapped in (was %s)", group.name, model.name, model.version,
                 old.version)

    def evicted_close_records(self, evicted, *, detected_at: str) -> list[dict]:
        """Close records of evicted open episodes, each by its sensor's group's model."""
        s = self.pipeline.settings
        by_group: dict[int, list] = {}
        for key, entry in evicted:
            g = self.router.route(key[1])
            by_group.setdefault(g if g >= 0 else self.primary, []).append((key, entry))
        out = []
        for g, items in by_group.items():
            group = self.groups[g]
            out += records.evicted_close_records(items, topic=s.topics.input, model_name=group.model.name,
                                                 model_version=str(group.model.version),
                                                 critical_ratio=s.alerts.critical_ratio, detected_at=detected_at,
                                                 model_group=group.name)
        return out
