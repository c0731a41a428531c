"""Development tools: the local broker, the simulator, CSV replay, the demo, the HTML report, ground truth."""
