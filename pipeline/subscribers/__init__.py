"""Services that subscribe to the alerts topic: `alerts tail` and the Alertmanager bridge."""
