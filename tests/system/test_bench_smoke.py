"""The benchmark's --quick run works end to end and writes sane results (no timed assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.broker


@pytest.mark.timeout(900)  # end to end: its length scales with the CPU it gets (3 test workers on 2 cores)
def test_quick_bench_writes_sane_json(kafka_bootstrap, tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "latentwatch.bench", "--quick", "--bootstrap", kafka_bootstrap,
                           "--out", str(out), "--stem", "smoke"], capture_output=True, text=True, timeout=840,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "smoke.json").read_text())
    assert (out / "smoke.md").read_text().startswith("# latentwatch benchmark")
    for key in ("machine", "model", "model_stage", "workloads", "settings", "targets"):
        assert key in res
    assert res["machine"]["cores"] >= 1 and res["machine"]["torch"]
    assert {r["batch"] for r in res["model_stage"]["cpu"]} >= {1, 64}
    assert all(r["readings_per_s"] > 0 for r in res["model_stage"]["cpu"])
    assert set(res["workloads"]) == {"single", "batch", "frames"}
    assert res["workloads"]["frames"]["workload"]["format"] == "frames"
    # every frame decodes: the ceiling's decoder returned all of the workload's readings
    assert res["workloads"]["frames"]["ceiling_decode"]["decoded_readings"] == res["workloads"]["frames"]["workload"]["readings"]
    for name, w in res["workloads"].items():
        assert w["workload"]["readings"] > 0 and w["workload"]["messages"] > 0
        for stage in ("ceiling_bare", "ceiling_decode", "pipeline", "naive"):
            assert w[stage]["readings_per_s"] > 0, (name, stage, w[stage])
        assert w["pipeline"]["peak_rss_bytes"] > 0
        assert w["pipeline"]["exit_code"] == 0
        lat = w["latency"]
        assert lat["readings"] > 0
        if lat["samples"]:
            assert 0 <= lat["p50_ms"] <= lat["p99_ms"] <= lat["p999_ms"]
        assert set(w["verdict"]["met"]) == {"pipeline_vs_decode_ceiling", "pipeline_vs_naive", "p99_latency_ms",
                                            "peak_rss_bytes"} | ({"readings_per_s"} if name == "frames" else set())
    # issue 23: a row per model plain `train` gives (PCA windows, the window autoencoder) beside the MLP,
    # each with its model stage's roofline and the pipeline against min(consume+decode, model stage)
    assert set(res["models"]) == {"mlp", "pca", "window"}
    assert res["models"]["window"]["model"]["kind"] == "window" and res["models"]["pca"]["model"]["window"] == 8
    for kind, m in res["models"].items():
        roof = m["model_stage"]["roofline"]
        assert roof["flops_per_window"] > 0 and roof["matmul_gflops"] > 0 and roof["fraction_of_roofline"] > 0, kind
        for name, w in m["workloads"].items():
            assert w["verdict"]["pipeline_vs_min_ceiling"] > 0, (kind, name)
    assert res["models"]["window"]["model_stage"]["model"]["dense_form"]
    assert res["models"]["window"]["model_stage"]["dense_vs_network"]["network_best"] > 0
