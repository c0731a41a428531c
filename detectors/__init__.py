"""latentwatch detectors: models that learn normal sensor behaviour and score new readings.

    from latentwatch.detectors import WindowAutoencoder, QuantileThreshold, sliding_windows
    model = WindowAutoencoder(window=32).fit(X_normal, channels=names)      # X: [n, channels]
    scores = model.score(sliding_windows(X_new, model.window))            # Scores(latent, channel_error, score)
    threshold = QuantileThreshold(0.99).fit(model.score(sliding_windows(X_held_out, model.window)).score)
    alarms = threshold.flag(scores.score)

No Kafka here: the streaming side (`pipeline/`) builds windows and calls `score`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("latentwatch")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0+src"

from latentwatch.detectors.base import Detector, Scores, sliding_windows  # noqa: E402
from latentwatch.detectors.networks import (  # noqa: E402
    MODELS, MLPAutoencoder, PCADetector, TorchDetector, VariationalAutoencoder, WindowAutoencoder, make_detector,
    resolve_device)
from latentwatch.detectors.thresholds import (  # noqa: E402
    AdaptiveThreshold, POTThreshold, QuantileThreshold, Threshold, threshold_from_dict)

__all__ = [
    "Detector", "Scores", "sliding_windows", "TorchDetector", "MLPAutoencoder", "WindowAutoencoder",
    "VariationalAutoencoder", "PCADetector", "MODELS", "make_detector", "resolve_device", "Threshold", "QuantileThreshold",
    "POTThreshold", "AdaptiveThreshold", "threshold_from_dict", "__version__",
]
