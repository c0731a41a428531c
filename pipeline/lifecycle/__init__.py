"""The model lifecycle: hot swaps (`watch.py`), latent drift (`drift.py`), the shadow model
(`shadow.py`), all driven by the run loop through `Lifecycle` (`core.py`), and retraining from a
time range of the input topic (`retrain.py`, `train --from-topic`)."""

from latentwatch.pipeline.lifecycle.core import Lifecycle

__all__ = ["Lifecycle"]
