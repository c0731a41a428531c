"""What happens to a running pipeline, told to whoever wants to know (after Faust's sensors).

The run loop and its rebalance hooks announce each event once, to one `Fanout`; the metrics,
the health endpoints and the model lifecycle (drift, shadow) are its listeners. A listener
overrides the methods it cares about; the rest do nothing. Listeners are called in the order
they were added, on the loop's thread (rebalance events inside `consume()`), and must not block.

Events:
- `on_assigned(partitions)`: partitions are ours, their state restored;
- `on_revoked(partitions)`: partitions are gone (revoked or lost), their state dropped;
- `on_reloaded(partitions)`: their state was dropped and restored again after a rewind;
- `on_restored(loaded, seconds)`: a changelog restore finished (`state.Loaded`, its duration);
- `on_offsets_committed()`: the broker confirmed an offset commit (or a transaction);
- `on_batch_committed(done)`: a batch's outputs and offsets are durable (`Committed`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Committed:
    """One committed batch, as the listeners see it."""

    batch: object  # scorer.ScoredBatch
    started: float  # time.monotonic() when the batch was handed to the scorer
    evicted: dict  # reason -> keys evicted from the state store when its updates took effect
    sensors: int  # sensors in the state store after it
    truncated: int  # dead letters produced truncated since start (the sink's running count)
    baselines: dict | None = None  # sensors in the state store by baseline state (StateStore.baseline_counts)
    muted: int | None = None  # sensors muted now (StateStore.muted_count)


class Listener:
    def on_assigned(self, partitions) -> None:
        pass

    def on_revoked(self, partitions) -> None:
        pass

    def on_reloaded(self, partitions) -> None:
        pass

    def on_restored(self, loaded, seconds: float) -> None:
        pass

    def on_offsets_committed(self) -> None:
        pass

    def on_changelog_short(self, topic: str, missing: list[int]) -> None:
        """Assigned input partitions without a changelog partition: the run is about to end."""

    def on_batch_committed(self, done: Committed) -> None:
        pass


class Fanout(Listener):
    """Every event to every listener, in order."""

    def __init__(self, *listeners: Listener):
        self.listeners = list(listeners)

    def add(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def on_assigned(self, partitions) -> None:
        for x in self.listeners:
            x.on_assigned(partitions)

    def on_revoked(self, partitions) -> None:
        for x in self.listeners:
            x.on_revoked(partitions)

    def on_reloaded(self, partitions) -> None:
        for x in self.listeners:
            x.on_reloaded(partitions)

    def on_restored(self, loaded, seconds: float) -> None:
        for x in self.listeners:
            x.on_restored(loaded, seconds)

    def on_offsets_committed(self) -> None:
        for x in self.listeners:
            x.on_offsets_committed()

    def on_changelog_short(self, topic: str, missing: list[int]) -> None:
        for x in self.listeners:
            x.on_changelog_short(topic, missing)

    def on_batch_committed(self, done: Committed) -> None:
        for x in self.listeners:
            x.on_batch_committed(done)
