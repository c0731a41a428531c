"""latentwatch benchmarks (`python -m latentwatch.bench` or `latentwatch bench`).

On a real Kafka broker (a temporary local one unless `--bootstrap` is given) one run
pre-produces each workload and measures: the consume and consume+decode ceilings, the
pipeline end to end in its own process (throughput, peak RSS), a naive one-message-at-a-time
baseline, latency at a fixed offered rate, and the model stage alone against batch size.
Results go to `bench/results/latest.json` and `latest.md`. Benchmarks are not tests: nothing
here asserts a number.
"""
