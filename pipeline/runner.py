"""The run loop: source -> scorer -> sink -> committer, with failures handled in one place.

Per micro-batch:
1. the source hands over messages (rebalances run inside it and call the hooks below);
2. the scorer turns them into a frozen `ScoredBatch` (dead letters, alerts, latent and state
   records, new per-sensor state), touching nothing;
3. the committer begins, the sink produces the batch's outputs, the committer makes outputs and
   offsets durable together (at-least-once: acknowledged, then committed; exactly-once: one
   transaction);
4. only then does the batch's new state take effect and are its metrics counted.
A `BatchFailed` anywhere in 3 rewinds to the committed offsets and the batch is redone, with a
new producer first when it broke. `Fatal` ends the run with 1, `TopicsGone` with 2, `Stopping`
(the shutdown budget spent waiting on Kafka) with 0, leaving the batch in hand uncommitted.

The parts are given what they need, not the pipeline: one stop budget (stop.py) where they
wait on Kafka, one events fan-out (events.py: metrics, health, lifecycle) for what happened,
one `Committer` (committer.py), and batch sizes from one place (pacing.BatchSizing).

Every model keeps per-sensor state (windows, per-sensor thresholds, the alarm rule's EWMA and
open episodes), so every run writes a state changelog: a restart neither re-opens nor loses an
episode (state.py).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import time

import numpy as np
import torch

from latentwatch.pipeline import avro_out, budget, control, records
from latentwatch.pipeline.committer import AtLeastOnce, Committer, ExactlyOnce, in_thread
from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.control import Commands, ControlReader
from latentwatch.pipeline.decode import RegistryUnavailable
from latentwatch.pipeline.errors import BatchFailed, Fatal, ProducerBroken, Stopping, UserError
from latentwatch.pipeline.events import Committed, Fanout
from latentwatch.pipeline.groups import GroupSet
from latentwatch.pipeline.health import Health
from latentwatch.pipeline.kafka import changelog, clients
from latentwatch.pipeline.kafka.monitor import KafkaMonitor, TopicsGone
from latentwatch.pipeline.kafka.registry import schema_input
from latentwatch.pipeline.kafka.txn_id import TransactionalId
from latentwatch.pipeline.lifecycle import Lifecycle
from latentwatch.pipeline.metrics import PipelineMetrics
from latentwatch.pipeline.pacing import BatchSizing
from latentwatch.pipeline.rebalance import Rebalance
from latentwatch.pipeline.scorer import Scorer
from latentwatch.pipeline.sink import Sink
from latentwatch.pipeline.source import Source
from latentwatch.pipeline.state import Key, StateStore
from latentwatch.pipeline.stop import StopBudget
from latentwatch.pipeline.times import iso

log = logging.getLogger("latentwatch.run")


class Pipeline:
    """One pipeline process: `run()` until `stop()` (or a signal handled by the caller)."""

    def __init__(self, settings: Settings, model, metrics: PipelineMetrics | None = None, shadow=None,
                 groups: list | None = None):
        s = self.settings = settings
        self.metrics = m = metrics or PipelineMetrics()
        self._refs = shadow is not None  # the shadow model (lifecycle/shadow.py) pairs readings by their source
        self.health = Health(s.health.stall_after_s)  # /healthz and /readyz beside /metrics
        self.state = StateStore(s.state.max_sensors, s.state.idle_ttl_s)
        self.state.max_future_s = s.batch.max_future_s  # a restored last event time past it is dropped
        self.state_topic = None
        self.stop_budget = StopBudget(s.shutdown_timeout_s)
        why = self._state_fits(model)
        if why is not None:
            raise UserError(f"model {model.name} version {model.version} cannot run: {why}")
        self.sizing = BatchSizing(s.batch, s.batch.max_readings)
        self.schemas = schema_input(s)  # schema'd input (Avro, JSON Schema): one lookup, cached per schema id
        self._registry_wait = None  # seconds until the next retry while the registry is unreachable
        self._set_model(model)
        # Hot swaps (a new version behind the model directory's `current`, or SIGHUP), drift, shadow.
        # A version whose state cannot be produced is refused by the watcher (outcome incompatible).
        # Model groups (groups.py): sensors routed to several models, each with its own lifecycle;
        # `groups`: (GroupSettings, LoadedModel, shadow LoadedModel | None) of each, the fallback last.
        if s.groups and not groups:
            raise UserError("groups are configured but their models were not given (cli/run.py, load_groups)")
        self.groups = GroupSet(self, groups) if groups else None
        self.lifecycle = self.groups.lifecycle if self.groups else \
            Lifecycle.for_settings(model, m, s, shadow, fits=self._state_fits)
        self.events = Fanout(m, self.health, self.lifecycle)
        self.monitor = KafkaMonitor(s, m.kafka_error)
        self.source = Source(s, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost,
                             on_error=self.monitor.on_error, on_stats=m.on_stats, on_wait=self.health.beat,
                             on_commit=self._on_commit)
        self.rebalance = Rebalance(store=self.state, settings=s, committed_of=self.source.committed,
                                   stop=self.stop_budget, events=self.events, on_wait=self.health.beat,
                                   on_evicted=self.evicted_on_load)
        self.sink: Sink | None = None
        self.committer: Committer | None = None
        self._tombstones: list[Key] = []
        self._closes: list[tuple[bytes, bytes]] = []  # close records of evicted open episodes, until produced
        # operator commands (pipeline/control.py): every member follows the whole control topic
        self.commands = Commands(s.state.max_sensors)
        self.control: ControlReader | None = None
        self._control_dead: list = []  # malformed commands, dead-lettered by the owner of input partition 0
        self.metrics_server = None
        self.unclean_exit = False  # a Kafka client did not close in time: the caller should os._exit

    # -- lifecycle -----------------------------------------------------------------------------
    def stop(self) -> None:
        self.health.stopping()  # runs in the signal handler: Health's lock is reentrant
        self.stop_budget.stop()

    @property
    def stopping(self) -> bool:
        return self.stop_budget.stopping

    # -- the source's rebalance and commit callbacks (inside consume()) --------------------------
    def _assigned(self, partitions) -> None:
        self.rebalance.assigned(partitions)

    def _revoked(self, partitions) -> None:
        self.rebalance.revoked(partitions)

    def _lost(self, partitions) -> None:
        self.rebalance.lost(partitions)

    def _on_commit(self, err, partitions) -> None:
        self.committer.on_commit(err, partitions)

    def start(self) -> None:
        """Check the cluster, open the clients, subscribe, serve metrics."""
        s, m = self.settings, self.metrics
        metadata = clients.check_cluster(s)
        self._input_partitions = len(metadata.topics[s.topics.input].partitions)
        self.state_topic = changelog.ensure(s, self._input_partitions)
        self.control = ControlReader(s, control.ensure(s), self.commands, on_command=m.control_command)
        self._control_dead += self.control.catch_up(s.startup_timeout_s)
        txn = TransactionalId(s.group_id, s.instance_id) if s.delivery == "exactly-once" else None
        self._txn = txn  # holds the id's lock for the process's life
        avro = avro_out.for_settings(s, lambda: self.stopping)  # alerts.format avro: schemas registered now
        self.sink = Sink(s, on_error=lambda err: self.monitor.on_error(err, from_producer=True),
                         stop=self.stop_budget, transactional_id=txn.value if txn else None,
                         on_wait=self.health.beat, avro=avro)
        parts = (self.source, self.sink, self.events.on_offsets_committed)
        # With a state changelog an at-least-once commit may not travel past the next batch (state.py).
        self.committer = (ExactlyOnce(*parts, s.shutdown_timeout_s, self.stop_budget, s.startup_timeout_s) if txn
                          else AtLeastOnce(*parts, self.stop_budget, travel_ok=self.state_topic is None,
                                           timeout_s=s.shutdown_timeout_s))
        self.committer.start(self.sink.producer)
        self.rebalance.attach(self.committer, self.state_topic)
        self.source.open()
        # The model's first call sets up its kernels (5.6 ms here, 0.1 ms for the next ones).
        self.detector.score(np.zeros((2, self.detector.window, len(self.detector.channels)), dtype=np.float32))
        self.health.model_loaded(self.model.name)
        if s.metrics.port is not None:
            self.metrics_server, _ = m.serve(s.metrics.port, s.metrics.host, health=self.health)
            log.info("metrics on http://%s:%d/metrics", s.metrics.host, self.metrics_server.server_port)
        log.info("consuming %s as group %s (%s, model %s on %s)", s.topics.input, s.group_id, s.delivery,
                 self.model.name, self.detector.device)
        # torch, numpy and the clients leave ~200k long-lived objects, and a full collection walks
        # them all (~70 ms on 2 cores): a pause every few seconds under load, straight into the
        # latency tail. Frozen, they are skipped; the collector still sees what the loop makes.
        gc.collect()
        gc.freeze()

    def run(self) -> int:
        """The loop. Returns 0 after a clean stop, 1 after a fatal Kafka error, 2 after an error
        the user must fix (a topic deleted while running)."""
        if self.source.consumer is None:
            self.start()
        threads = torch.get_num_threads()
        if str(self.detector.device) == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # One intra-op thread: a batch is one small model call, and extra torch threads spin
            # against librdkafka's threads and the broker for the same cores (on 2 shared cores:
            # 1.8x the end-to-end throughput; see bench/). OMP_NUM_THREADS overrides.
            torch.set_num_threads(1)
        rc = 0
        try:
            while not self.stopping:
                self.health.beat()
                new_model = self.lifecycle.between_batches()
                if new_model is not None:
                    self._swap(new_model)
                if self.control is not None:
                    self._control_dead += self.control.poll()
                limit = self.sizing.limit()
                messages = self.monitor.on_messages(self.source.next_batch(self.sizing.messages(limit), self.stop_budget))
                self.monitor.check(self.source.consumer)
                if self.rebalance.incomplete:  # stopped during a restore: the next owner scores them
                    break
                if messages:
                    self.process(messages, limit)
                else:
                    self.sink.producer.poll(0)
        except Fatal as exc:
            log.error("stopped on a fatal Kafka error: %s", exc)
            rc = 1
        except TopicsGone as exc:
            log.error("%s", exc)
            rc = 2
        except changelog.ChangelogShort:  # logged where found (rebalance.py), /readyz says so
            rc = 2
        except Stopping as exc:
            log.warning("%s: the batch in hand is not committed (its partitions' next owner redoes it)", exc)
        finally:
            torch.set_num_threads(threads)
            self.close()
        return rc

    def process(self, messages: list, limit: int | None = None) -> None:
        """One micro-batch, from messages to committed (or rewound); at most `limit` readings
        (default: what `sizing` allows now), the rest handed back to the source."""
        started = time.monotonic()
        try:
            batch = self.scorer.score(messages, self.state, max_readings=self.sizing.limit() if limit is None else limit,
                                      controls=self.commands)
        except RegistryUnavailable as exc:  # transient: nothing decided, nothing committed; redo after a pause
            self._registry_down(messages, str(exc))
            return
        if self._registry_wait is not None:
            self._registry_back()
        self.sizing.observe(len(batch.messages) - len(batch.dead), batch.n_readings, time.monotonic() - started)
        self.source.put_back(batch.rest)
        tombstones = self._tombstones
        batch = self._with_eviction_closes(batch)
        try:
            self.committer.begin()
            self.sink.produce_batch(batch, self.state_topic, tombstones)
            control_dead = self._produce_control_dead(batch)
            self.committer.commit(batch.next_offsets())
        except BatchFailed as exc:
            self._recover(exc)
            return
        evicted = self.state.apply(batch.updates)
        self._closes = []
        if control_dead:
            self._control_dead = self._control_dead[control_dead:]
            self.metrics.dead_letters.labels(reason="control_invalid").inc(control_dead)
        self._tombstones = [k for keys in evicted.values() for k in keys] if self.state_topic else []
        # metrics, then the lifecycle (drift, shadow): after the batch's own timings are taken
        self.events.on_batch_committed(Committed(batch, started, evicted, len(self.state), self.sink.truncated,
                                                 self.state.baseline_counts(), self.state.muted_count()))

    def _produce_control_dead(self, batch) -> int:
        """Malformed control records go to the dead-letter topic with this batch (acknowledged
        before its commit) from the member that owns input partition 0 (one member, not all who
        read them); how many were produced."""
        if not self._control_dead or not any(p == 0 for _t, p in batch.next_offsets()):
            return 0
        for msg, reason, detail in self._control_dead:
            self.sink._dead_letter(msg, reason, detail)
        return len(self._control_dead)

    def _registry_down(self, messages: list, why: str) -> None:
        """The schema registry cannot be reached: the batch goes back to the source whole (no dead
        letter, no commit), and the loop waits 0.5 s, doubling up to schema_registry.backoff_max_s,
        beating the health probe (an outage is not a stall) before it tries again."""
        first = self._registry_wait is None
        wait = 0.5 if first else min(self._registry_wait * 2, self.settings.schema_registry.backoff_max_s)
        self._registry_wait = wait
        self.metrics.registry_up.set(0)
        self.metrics.registry_failures.inc()
        self.health.registry(False, why)
        if first:
            log.warning("%s: holding %d messages, retrying (nothing is dead-lettered or committed meanwhile)",
                        why, len(messages))
        self.source.put_back(messages)
        # The partitions paused and the consumer polled meanwhile: an outage longer than
        # max.poll.interval.ms would otherwise cost the group membership (and a rebalance).
        self.source.pause_all()
        deadline = time.monotonic() + wait
        while not self.stopping and time.monotonic() < deadline:
            self.health.beat()
            self.source.idle(min(0.1, max(0.0, deadline - time.monotonic())))

    def _registry_back(self) -> None:
        self._registry_wait = None
        self.source.resume_all()
        self.metrics.registry_up.set(1)
        self.health.registry(True, "")
        log.info("the schema registry answers again: scoring resumed")

    def _with_eviction_closes(self, batch):
        """Sensors evicted with an episode open get their close with this batch (in its transaction
        under exactly-once, beside their tombstones): kept until a batch carrying them commits."""
        evicted = self.state.take_evicted_open()
        if evicted and self.groups is not None:
            found = self.groups.evicted_close_records(evicted, detected_at=iso(time.time()))
        elif evicted:
            found = records.evicted_close_records(
                evicted, topic=self.settings.topics.input, model_name=self.model.name,
                model_version=str(self.model.version), critical_ratio=self.settings.alerts.critical_ratio,
                detected_at=iso(time.time()))
        if evicted:
            self._closes += [(r["sensor_id"].encode(), records.encode(r)) for r in found]
            log.info("%d sensors evicted with an episode open: closing them (reason evicted)", len(found))
        if not self._closes:
            return batch
        return dataclasses.replace(batch, alerts=self._closes + batch.alerts,
                                   episodes=["close"] * len(self._closes) + batch.episodes)

    def evicted_on_load(self, evicted: dict) -> None:
        """Entries a restore evicted over the bound: deleted from the changelog with the next batch."""
        if self.state_topic:
            self._tombstones += [k for keys in evicted.values() for k in keys]

    def _set_model(self, model) -> None:
        s = self.settings
        self.model, self.detector = model, model.detector
        self.state.expect(self.detector.window, len(self.detector.channels))  # restored state is checked
        # Bounded output (pipeline/budget.py): the reading cap lowered so a batch's records fit
        # batch.max_output_bytes; a message holding more readings than that is a dead letter.
        self.scorer, per_reading = self._new_scorer(model)
        self.sizing.for_model(budget.readings_cap(s.batch.max_readings, s.batch.max_output_bytes, per_reading))

    def _configure(self, model) -> None:
        """This process's settings applied to a model it is about to score with (the default group's,
        a model group's, a shadow): `sensors` (health rules) and `baseline.adapt_after`."""
        s = self.settings
        health = getattr(model, "health", None)
        if health is not None and not s.sensors.enabled:
            model.health = None  # sensors.enabled: false (no health rules, episodes or state)
        elif health is not None and any(v is not None for v in s.sensors.overrides().values()):  # this group's limits
            from latentwatch.detectors.health import HealthRule

            model.health = HealthRule.from_dict(health.to_dict(), list(model.detector.channels),
                                                **s.sensors.overrides())
        adapt = s.baseline.adapt_after
        if adapt is not None and getattr(model, "baselines", None) is None:
            log.warning("baseline.adapt_after is ignored for model %s: it has no per-sensor baselines to learn "
                        "again (train it with a sensor_id column or the current train)", model.name)
            adapt = None
        for rule in (model.alarm, getattr(model, "own_alarm", None)):  # baseline.adapt_after (issue 30)
            if rule is not None:
                rule.adapt_after = adapt

    def _new_scorer(self, model, refs: bool | None = None) -> tuple[Scorer, int]:
        """A scorer of `model` as this process runs it, and the most bytes of records one reading makes."""
        s = self.settings
        self._configure(model)
        per_reading = budget.per_reading_bytes(model, s.topics, bool(s.topics.latent))
        scorer = Scorer(model, max_message_bytes=s.batch.max_message_bytes, max_future_s=s.batch.max_future_s,
                        late_policy=s.late_policy, critical_ratio=s.alerts.critical_ratio,
                        latent_topic=bool(s.topics.latent), changelog=True, refs=self._refs if refs is None else refs,
                        max_message_readings=s.batch.max_output_bytes // per_reading,
                        per_reading=s.alerts.per_reading, schemas=self.schemas)
        return scorer, per_reading

    def _state_fits(self, model) -> str | None:
        """Why `model`'s per-sensor state records could not be produced (None: they can)."""
        d = model.detector
        limit = int(clients.producer_config(self.settings).get("message.max.bytes", 1_000_000))
        cold = getattr(model, "baselines", None) is not None
        health = getattr(model, "health", None) is not None
        return budget.changelog_fits(d.window, len(d.channels), limit, cold) if d.window > 1 or cold or health \
            else None

    def _swap(self, model) -> None:
        """Between batches: every later reading is scored by `model`. Per-sensor state is kept
        when window and channels match, cut or grown (warming up the difference) otherwise. A model
        whose state record cannot fit never gets here: the watcher refused it (`_state_fits`)."""
        old = self.model
        self._set_model(model)
        if (model.detector.window, list(model.detector.channels)) != (old.detector.window, list(old.detector.channels)) \
                or type(model.threshold) is not type(old.threshold):
            self.state.for_model(model.detector.window, len(model.detector.channels))
        self.health.model_loaded(model.name)
        log.info("model %s version %s swapped in (was %s)", model.name, model.version, old.version)

    def _recover(self, exc: BatchFailed) -> None:
        """Undo what is not durable and go back to the committed offsets."""
        if not isinstance(exc, ProducerBroken):
            # First, even when the run ends here (a deleted topic): an open transaction holds its
            # offsets pending, and the group's committed offsets are unreadable until it times out.
            self.committer.abort()
        self.monitor.check(self.source.consumer, after_failure=True)  # a deleted topic: TopicsGone
        log.warning("batch not committed, rewinding to the committed offsets: %s", exc)
        self.monitor.after_failure()
        self.metrics.batch_rewinds.inc()
        if isinstance(exc, ProducerBroken):
            self.sink.broken(str(exc))
        if self.sink.fatal is not None:
            self.sink.replace(self.committer.init_producer)
        self.sink.reset()
        if not self.stopping:
            sought = self.source.rewind(self.stop_budget)
            # the state as of the offsets gone back to, not as of a second read of them
            self.rebalance.reload(self.source.consumer.assignment(), sought)

    def close(self) -> None:
        """Finish within what is left of the stop budget; a client that will not close in time is
        left behind (`unclean_exit`) rather than holding the process past it."""
        budget = self.settings.shutdown_timeout_s
        if self.stop_budget.deadline is not None:
            budget = max(0.5, self.stop_budget.left(budget))

        def finish():
            if self.sink is not None:
                self.sink.close(budget)
            if self.source.consumer is None:
                return
            try:
                if self.committer is not None:
                    self.committer.settle()
            except (BatchFailed, Fatal, Stopping) as exc:  # the next owner redoes the last batch
                log.warning("last commit not confirmed at exit: %s", exc)
            finally:  # never leave a consumer to the interpreter's exit: its destructor blocks on Kafka
                self.source.close()

        try:
            failed = in_thread(finish, budget + 2, StopBudget.never())
            if failed is not None:
                log.warning("closing the Kafka clients failed: %s", failed)
        except TimeoutError:
            log.warning("Kafka clients did not close within the shutdown timeout: exiting without them")
            self.unclean_exit = True
        self.lifecycle.close()
        if self.control is not None:
            self.control.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server = None
