"""A time budget for a batch: `batch.max_latency_ms` sizes batches by the model's measured cost.

`batch.max_readings` caps a batch by readings alone, and what a reading costs depends on the
model: ~0.5 us for the point-wise MLP, ~7-10 us for the window autoencoder (W=8, one thread, 2
cores; bench/results). A backlog batch of 32,768 windowed readings then takes a quarter to a
half second of scoring, and every reading behind it waits that long: the p99 at half load.
With a budget, the next batch holds at most `max_latency_ms / cost per reading` readings (never
fewer than `MIN_READINGS`, never more than `max_readings`), the cost per reading being a moving
average of the scorer's own time per reading (decode, windows, model, records) over recent
batches. The budget bounds that scoring time; the produce and commit round trip of a batch
(a few ms, not per reading) comes on top. Smaller batches cost throughput where the per-batch
round trip is not small beside them: see the figures in README.md, Performance.
"""

from __future__ import annotations

MIN_READINGS = 256  # below this a batch's fixed costs (produce, commit) dominate whatever it saves
ALPHA = 0.3  # weight of the newest batch in the cost estimate
MIN_SAMPLE = 64  # batches of fewer readings are not timed: their cost is mostly fixed overhead


class BatchBudget:
    """`limit()`: readings the next batch may hold; `observe(readings, seconds)` after scoring."""

    def __init__(self, max_latency_ms: float | None, max_readings: int):
        self.max_readings = max_readings
        self.budget_s = None if max_latency_ms is None else max_latency_ms / 1000
        self.cost_s: float | None = None  # seconds per reading, moving average

    @classmethod
    def for_settings(cls, batch) -> "BatchBudget":
        return cls(getattr(batch, "max_latency_ms", None), batch.max_readings)

    def limit(self) -> int:
        if self.budget_s is None:
            return self.max_readings
        if self.cost_s is None:  # nothing measured yet: the first batch is a small one
            return min(self.max_readings, 4 * MIN_READINGS)
        return max(min(MIN_READINGS, self.max_readings), min(self.max_readings, round(self.budget_s / self.cost_s)))

    def observe(self, readings: int, seconds: float) -> None:
        if self.budget_s is None or readings < MIN_SAMPLE or seconds <= 0:
            return
        cost = seconds / readings
        self.cost_s = cost if self.cost_s is None else (1 - ALPHA) * self.cost_s + ALPHA * cost



class BatchSizing:
    """How big the next batch is: the one place that decides (the run loop asks, the source
    gathers, the scorer cuts at the limit and hands back the rest).

    1. `limit()`: readings the next batch may hold, the least of `batch.max_readings`, the
       output budget's cap for the model loaded (budget.readings_cap: a batch's records fit
       `batch.max_output_bytes`) and the time budget (`batch.max_latency_ms`, BatchBudget);
    2. `messages(limit)`: how many messages to gather for it, from the readings a message
       carried on average so far (a message may hold many);
    3. `observe(n_messages, n_readings, seconds)` after scoring: both estimates learn;
    4. `for_model(cap)`: a new model brings its own output-budget cap.
    """

    def __init__(self, batch, output_cap: int):
        self.time = BatchBudget.for_settings(batch)
        self.output_cap = output_cap
        self.readings_per_message = 1.0  # moving average over the batches decoded so far

    def for_model(self, output_cap: int) -> None:
        self.output_cap = output_cap

    def limit(self) -> int:
        return min(self.output_cap, self.time.limit())

    def messages(self, limit: int) -> int:
        return max(1, int(limit / max(self.readings_per_message, 1.0)))

    def observe(self, n_messages: int, n_readings: int, seconds: float) -> None:
        self.time.observe(n_readings, seconds)
        if n_messages:
            self.readings_per_message = 0.8 * self.readings_per_message + 0.2 * (n_readings / n_messages)
