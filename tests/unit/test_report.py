"""The report: pure helpers, the PNGs and HTML from synthetic scores, and the CLI on a real
(tiny, PCA) checkpoint scored on a labelled simulator file."""

from __future__ import annotations

import base64
import csv
import re
import struct
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from latentwatch.pipeline.devtools.html_report import ReportData, pca2, render, segments, top_alerts, write_report


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _synthetic(n: int = 600, channels: int = 5, times: bool = True) -> ReportData:
    rng = np.random.default_rng(0)
    labels = np.zeros(n, bool)
    labels[200:230] = labels[450] = True
    err = rng.gamma(2.0, 0.05, size=(n, channels))
    err[labels, 2] += 3.0
    latent = rng.normal(size=(n, 4)) * [3, 1, 0.2, 0.1]
    latent[labels] += 6
    score = err.mean(axis=1)
    return ReportData(latent, err, score, np.full(n, 0.3), [f"ch{i}" for i in range(channels)],
                      1.7e9 + np.arange(n) if times else None, labels)


def test_pca_segments_and_top_alerts_are_right():
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(500, 3)) * [5.0, 1.0, 0.01]
    proj, share = pca2(Z)
    assert proj.shape == (500, 2) and share > 0.99
    assert abs(np.corrcoef(proj[:, 0], Z[:, 0])[0, 1]) > 0.99
    assert pca2(Z[:, :1])[0].shape == (500, 2)
    assert segments(np.array([0, 1, 1, 0, 1], bool)) == [(1, 3), (4, 5)]
    d = _synthetic()
    picks = top_alerts(d, 4)
    assert d.flagged[picks].all() and d.score[picks[0]] == d.score[d.flagged].max()
    assert np.min(np.abs(np.diff(np.sort(picks)))) >= 600 // 16 or len(picks) < 4


@pytest.mark.parametrize("times", [True, False])
def test_render_and_write_produce_real_pngs_embedded_in_the_html(tmp_path, times):
    from matplotlib.image import imread

    pngs = render(_synthetic(times=times), top=4)
    assert set(pngs) == {"latent", "score", "channels"}
    for name, data in pngs.items():
        w, h = _png_size(data)
        assert w > 500 and h > 300 and len(data) > 20_000, (name, w, h, len(data))
    paths = write_report(pngs, tmp_path / "out" / "r.html", facts={"flagged": "31"})
    html_path, *pngs_written = paths
    assert [p.name for p in pngs_written] == ["r-latent.png", "r-score.png", "r-channels.png"]
    img = imread(pngs_written[1])  # decodes the whole file, not just its header
    assert img.ndim == 3 and img.shape[0] > 300 and img[..., :3].std() > 0.05
    text = html_path.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert [base64.b64decode(e) for e in embedded] == [p.read_bytes() for p in pngs_written]
    assert "<th>flagged</th><td>31</td>" in text


def test_missing_matplotlib_is_one_user_error(monkeypatch, tmp_path, capsys):
    from latentwatch.pipeline.cli.main import main

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now raises ImportError
    rc = main(["report", "--model", str(tmp_path), "--data", "x.csv", "--out", str(tmp_path / "r.html")])
    assert rc == 2
    assert "pip install 'latentwatch[report]'" in capsys.readouterr().err


def test_cli_report_on_a_saved_model_and_labelled_file(tmp_path, capsys):
    from latentwatch.detectors import PCADetector, QuantileThreshold, sliding_windows
    from latentwatch.detectors.checkpoint import save, summarise_training_data
    from latentwatch.pipeline.cli.main import main
    from latentwatch.pipeline.devtools.simulate import SensorSimulator, iso_ts

    sim = SensorSimulator(2, 4, seed=4, anomaly_rate=0.05)
    X = sim.normal_training_data(3000)
    det = PCADetector(latent_dim=2).fit(X[:2000], channels=sim.channel_names)
    thr = QuantileThreshold(0.99).fit(det.score(sliding_windows(X[2000:], 1)).score)
    from latentwatch.detectors.alarms import calibrate

    held = det.score(sliding_windows(X[2000:], 1)).score
    rule = calibrate(held, 0.01, instant=thr.value)  # an EWMA limit too: score flags more than the instant limit
    save(tmp_path / "model", det, thr, summarise_training_data(X, sim.channel_names), alarm=rule)
    values, kinds = sim.next_readings(800)
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(["datetime", *reversed(sim.channel_names), "anomaly"])  # model order is restored
        for i in range(800):
            w.writerow([iso_ts(1.7e9 + i), *values[0, i, ::-1].round(4), int(kinds[0, i] != "normal")])
    out = tmp_path / "rep.html"
    (tmp_path / "png").mkdir()  # --png's folder must exist, as --out's: none is made silently (issue 29)
    assert main(["report", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "d.csv"),
                 "--out", str(out), "--png", str(tmp_path / "png" / "p")]) == 0
    assert capsys.readouterr().out.split() == [str(out)] + [str(tmp_path / "png" / f"p-{n}.png")
                                                         for n in ("latent", "score", "channels")]
    text = out.read_text()
    assert text.count("data:image/png;base64,") == 3 and "precision / recall" in text
    prec, recall = map(float, re.search(r"precision / recall[^<]*</th><td>([\d.]+) / ([\d.]+)", text).groups())
    assert recall > 0.3 and prec > 0.3  # channels matched by name, not position: alarms are the anomalies
    # the report counts what `score` counts (the alarm rule: instant or EWMA), not the instant limit alone
    flagged = int(re.search(r"flagged \(instant or EWMA rule, as score counts\)</th><td>(\d+) ", text).group(1))
    assert main(["score", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "d.csv"),
                 "--out", str(tmp_path / "s.csv")]) == 0
    with open(tmp_path / "s.csv") as fh:
        anomalous = sum(row["anomaly"] in ("1", "True", "true") for row in csv.DictReader(fh))
    assert flagged == anomalous > 0 and f"{anomalous} anomalous" in capsys.readouterr().out
    assert main(["report", "--model", str(tmp_path / "nope"), "--data", str(tmp_path / "d.csv"),
                 "--out", str(out)]) == 2
