"""Scale-out: the same topic through N pipeline processes in one consumer group.

All N start together; the rate is taken from the moment the last of them has its partitions
(the group's first rebalances are start-up, not throughput) to the last commit, from the
group's committed offsets, as for one process (pipeline_proc.py)."""

from __future__ import annotations

import time
from pathlib import Path

from latentwatch.bench.pipeline_proc import CommitWatcher, PipelineProcess


def run_group(bootstrap: str, model_dir: str, topic: str, ends: dict[int, int], readings_per_message: int,
              work: Path, batch_size: int, processes: int, env: dict | None = None,
              max_wait_ms: float | None = None, timeout: float = 1200) -> dict:
    from latentwatch.bench.workload import make_topics, unique

    alerts, dlq, group = unique("alerts"), unique("dlq"), unique("group")
    make_topics(bootstrap, {alerts: (1, {}), dlq: (1, {})})
    procs = [PipelineProcess(bootstrap, model_dir, topic, alerts, dlq, group, work / f"{group}-{i}.log",
                             batch_size=batch_size, max_wait_ms=max_wait_ms, env=env)
             for i in range(processes)]
    watcher = CommitWatcher(bootstrap, group, topic, len(ends))
    total = sum(ends.values())
    try:
        for p in procs:
            p.wait_assigned(timeout=120)
        t0 = time.perf_counter()
        done0 = sum(min(c, ends[p]) for p, c in watcher.committed().items())
        deadline = time.monotonic() + timeout
        while True:
            for p in procs:
                if p.proc.poll() is not None:
                    raise RuntimeError(f"pipeline exited ({p.proc.returncode}): {p.tail()}")
            committed = watcher.committed()
            done = sum(min(committed[p], ends[p]) for p in ends)
            now = time.perf_counter()
            if done >= total:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the group committed {done} of {total} offsets within {timeout:.0f} s")
            time.sleep(0.05)
        per_process = [p.scrape() for p in procs]
    finally:
        watcher.close()
        codes = [p.stop() for p in procs]
    span = now - t0
    measured = (done - done0) * readings_per_message
    return {"processes": processes, "readings": total * readings_per_message,
            "readings_measured": measured, "seconds": round(span, 3),
            "readings_per_s": round(measured / span, 1) if span > 0 and measured > 0 else None,
            "batches_per_process": [m.get("batches") for m in per_process], "exit_codes": codes, "group": group}
