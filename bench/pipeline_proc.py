"""The real pipeline (`latentwatch run`) in its own process: throughput from the group's
committed offsets, peak RSS from /proc/<pid>/status (VmHWM) read just before it is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.kafka import clients


class PipelineProcess:
    """`python -m latentwatch.pipeline.cli run ...` with its log in `log_path`."""

    def __init__(self, cluster: Settings, model_dir: str, input_topic: str, alerts_topic: str, dlq_topic: str,
                 group: str, log_path: Path, batch_size: int = 4096, max_wait_ms: float | None = None,
                 env: dict | None = None, profile_out: Path | None = None):
        self.topic, self.group = input_topic, group
        # The connection: --bootstrap here; TLS/SASL from the environment or $LATENTWATCH_CONFIG,
        # which the child inherits (bench --config sets it).
        cmd = [sys.executable, "-m", "latentwatch.pipeline.cli", "run", "--model", model_dir,
               "--bootstrap", cluster.kafka.bootstrap_servers,
               "--input-topic", input_topic, "--alerts-topic", alerts_topic, "--dead-letter-topic", dlq_topic,
               "--group-id", group, "--metrics-port", "0", "--batch-size", str(batch_size), "--device", "cpu"]
        if max_wait_ms is not None:
            cmd += ["--max-wait-ms", str(max_wait_ms)]
        if profile_out is not None:  # py-spy must be installed in the environment; --idle: waits show too
            cmd = [str(Path(sys.executable).with_name("py-spy")), "record", "-o", str(profile_out), "-f", "speedscope",
                   "-r", "200", "--idle", "--", *cmd]
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - the child writes to it until stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.pid = self.proc.pid
        self._profiled = profile_out is not None

    def wait_assigned(self, timeout: float = 60) -> None:
        """Until the pipeline logs its partition assignment."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pipeline exited ({self.proc.returncode}): {self.tail()}")
            if "assigned " + self.topic in self.log_path.read_text():
                return
            time.sleep(0.05)
        raise RuntimeError(f"pipeline got no partitions within {timeout:.0f} s: {self.tail()}")

    def peak_rss_bytes(self) -> dict:
        pid = self.python_pid()
        out = {}
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[key] = int(rest.split()[0]) * 1024
        except OSError:
            pass
        return out

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds of the pipeline's Python process so far (its threads included)."""
        try:
            stat = Path(f"/proc/{self.python_pid()}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")

    def python_pid(self) -> int:
        if not self._profiled:
            return self.pid
        try:  # py-spy's child
            kids = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
            return int(kids[0]) if kids else self.pid
        except OSError:
            return self.pid

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            os.kill(self.python_pid(), signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._log.close()
        return rc

    def scrape(self) -> dict:
        """A few of the pipeline's own metrics (its /metrics address is in its log)."""
        import re
        import urllib.request

        m = re.search(r"metrics: (http://\S+)", self.log_path.read_text())
        if not m:
            return {}
        try:
            text = urllib.request.urlopen(m.group(1), timeout=5).read().decode()
        except OSError:
            return {}
        values: dict = {}
        for line in text.splitlines():
            if line.startswith("latentwatch_") and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        get = values.get
        batches = get("latentwatch_batches_total") or 0
        out = {"batches": batches,
               "mean_readings_per_batch": round(get("latentwatch_batch_size_readings_sum", 0) / batches, 1) if batches else None,
               "mean_batch_seconds": round(get("latentwatch_batch_duration_seconds_sum", 0) / batches, 5) if batches else None,
               "mean_inference_seconds": round(get("latentwatch_inference_duration_seconds_sum", 0) / batches, 5)
               if batches else None,
               "alerts": sum(v for k, v in values.items() if k.startswith("latentwatch_alerts_total")),
               "dead_letters": sum(v for k, v in values.items() if k.startswith("latentwatch_dead_letters_total")),
               "readings_scored": get("latentwatch_readings_scored_total"),
               # sensor health (issue 30): {rule/event: n}; none at all when the rules are off
               "health_episode_events": {k.split('rule="')[1].split('"')[0] + "/" + k.split('event="')[1].split('"')[0]: v
                                         for k, v in values.items()
                                         if k.startswith("latentwatch_health_episode_events_total{") and v}}
        buckets = sorted((float(k.split('le="')[1].split('"')[0]), v) for k, v in values.items()
                         if k.startswith("latentwatch_end_to_end_latency_seconds_bucket") and "+Inf" not in k)
        total = get("latentwatch_end_to_end_latency_seconds_count") or 0
        if total:  # upper bounds of the buckets holding the quantiles (the histogram's resolution)
            for q in (0.5, 0.99, 0.999):
                out[f"e2e_histogram_p{str(q * 100).rstrip('0').rstrip('.').replace('.', '')}_le_s"] = next(
                    (le for le, v in buckets if v >= q * total), None)
        return out

    def tail(self, n: int = 2000) -> str:
        return self.log_path.read_text()[-n:]


class CommitWatcher:
    """Reads the group's committed offsets (a consumer that never joins the group)."""

    def __init__(self, cluster: Settings, group: str, topic: str, partitions: int):
        self.c = Consumer(clients.client_config(cluster) | {"group.id": group, "enable.auto.commit": False})
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]

    def committed(self) -> dict[int, int]:
        return {tp.partition: max(tp.offset, 0) for tp in self.c.committed(self.tps, timeout=10)}

    def close(self) -> None:
        self.c.close()


def wait_for_commits(proc: PipelineProcess, watcher: CommitWatcher, ends: dict[int, int], timeout: float,
                     interval: float = 0.05) -> dict:
    """Poll until every partition's committed offset reaches its end offset.

    Returns the time, total committed offsets and the pipeline's CPU seconds at the first commit
    seen and at the last."""
    total = sum(ends.values())
    first = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"pipeline exited ({proc.proc.returncode}): {proc.tail()}")
        now = time.perf_counter()
        committed = watcher.committed()
        done = sum(min(committed[p], ends[p]) for p in ends)
        if first is None and done > 0:
            first = (now, done, proc.cpu_seconds())
        if all(committed[p] >= ends[p] for p in ends):
            return {"first_t": first[0], "first_offsets": first[1], "last_t": now, "last_offsets": done,
                    "total_offsets": total, "first_cpu_s": first[2], "last_cpu_s": proc.cpu_seconds()}
        time.sleep(interval)
    raise RuntimeError(f"pipeline did not commit {total} offsets within {timeout:.0f} s: {proc.tail()}")


def state_health(cluster: Settings, topic: str, timeout: float = 30) -> dict:
    """What the run's state changelog holds: records, and those whose entry carries sensor health
    state (detectors/health.py `SensorHealth`; issue 30). A check that the health rules really ran:
    with them on, every sensor's entry has it; off (or a tree before them), none."""
    from latentwatch.pipeline import state

    c = Consumer(clients.client_config(cluster) | {"group.id": "bench-state-reader", "enable.auto.commit": False})
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return {"state_topic": topic, "records": None}
        tps = [TopicPartition(topic, p) for p in meta.partitions]
        ends = {tp.partition: c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        c.assign([TopicPartition(topic, p, 0) for p in ends])
        pos = {p: 0 for p in ends}
        n = with_health = open_episodes = unreadable = 0
        deadline = time.monotonic() + timeout
        while any(pos[p] < ends[p] for p in ends) and time.monotonic() < deadline:
            for msg in c.consume(1000, 0.5):
                if msg.error() is not None:
                    continue
                pos[msg.partition()] = msg.offset() + 1
                if msg.value() is None:
                    continue
                n += 1
                try:
                    entry, _ = state.unpack(msg.value())
                except ValueError:
                    unreadable += 1
                    continue
                h = entry.health
                if h is not None:
                    with_health += 1
                    open_episodes += len(h.open_rules)
        return {"state_topic": topic, "records": n, "with_health": with_health,
                "open_health_episodes_in_records": open_episodes, "unreadable": unreadable}
    finally:
        c.close()


def run_pipeline(cluster: Settings, model_dir: str, topic: str, ends: dict[int, int], readings_per_message: int,
                 work: Path, batch_size: int, env: dict | None = None, profile_out: Path | None = None,
                 timeout: float = 1200, max_wait_ms: float | None = None) -> dict:
    """The whole topic through a fresh pipeline process; readings/s between the first and last commit."""
    from latentwatch.bench.workload import make_topics, unique

    alerts, dlq, group = unique("alerts"), unique("dlq"), unique("group")
    make_topics(cluster, {alerts: (1, {}), dlq: (1, {})})
    proc = PipelineProcess(cluster, model_dir, topic, alerts, dlq, group, work / f"{group}.log",
                           batch_size=batch_size, max_wait_ms=max_wait_ms, env=env, profile_out=profile_out)
    watcher = CommitWatcher(cluster, group, topic, len(ends))
    try:
        t_start = time.perf_counter()
        proc.wait_assigned()
        t_assigned = time.perf_counter()
        res = wait_for_commits(proc, watcher, ends, timeout)
        rss = proc.peak_rss_bytes()
        own = proc.scrape()
    finally:
        watcher.close()
        rc = proc.stop()
    health_state = state_health(cluster, f"{group}-state")
    span = res["last_t"] - res["first_t"]
    offsets = res["last_offsets"] - res["first_offsets"]
    method = "first to last commit"
    cpu = (res["last_cpu_s"] - res["first_cpu_s"]) if None not in (res["first_cpu_s"], res["last_cpu_s"]) else None
    if offsets <= 0 or span <= 0:  # everything went in one commit (tiny runs): time from the assignment
        span, offsets, method = res["last_t"] - t_assigned, res["total_offsets"], "assignment to last commit"
    return {"readings": res["total_offsets"] * readings_per_message, "batch_size": batch_size,
            "seconds_first_to_last_commit": round(res["last_t"] - res["first_t"], 3),
            "seconds_assigned_to_last_commit": round(res["last_t"] - t_assigned, 3),
            "seconds_start_to_last_commit": round(res["last_t"] - t_start, 3),
            "readings_per_s": round(offsets * readings_per_message / span, 1), "rate_method": method,
            # the pipeline's own CPU over the same readings (first to last commit): less sensitive to
            # the other work on a shared machine than the wall-clock rate
            "readings_per_cpu_s": round(offsets * readings_per_message / cpu, 1)
            if cpu and method == "first to last commit" else None,
            "peak_rss_bytes": rss.get("VmHWM"), "rss_at_end_bytes": rss.get("VmRSS"), "exit_code": rc,
            "alerts_topic": alerts, "group": group, "env": env or {},
            "pipeline_metrics": own, "state": health_state}
