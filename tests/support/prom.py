"""A real Prometheus server for tests: the Debian `prometheus` binary as a plain process on
127.0.0.1, a generated config that scrapes the given targets every second, its TSDB in a temp
folder, and `query(expr)` over the HTTP API.

    from tests.support.prom import make_prometheus  # noqa: F401  (a pytest fixture)

    def test_x(make_prometheus):
        prom = make_prometheus(["127.0.0.1:9464"])
        prom.wait_for_targets_up()
        assert prom.query("latentwatch_readings_scored_total")
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.processes import stop_process

PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus missing: `make system-deps` (Debian package prometheus)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusError(AssertionError):
    pass


class Prometheus:
    """One Prometheus process. `start()` returns once `/-/ready` answers 200."""

    def __init__(self, workdir: Path, targets: list[str], job: str = "latentwatch",
                 scrape_interval: str = "1s"):
        self.workdir = Path(workdir)
        self.targets = list(targets)
        self.job = job
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "prometheus.log"

    def config_text(self) -> str:
        cfg = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{
                "job_name": self.job,
                "scrape_timeout": self.scrape_interval,
                "static_configs": [{"targets": self.targets}],
            }],
        }
        return json.dumps(cfg, indent=2)  # JSON is YAML

    def start(self, timeout: float = 60.0) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config_text())
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise PrometheusError(f"prometheus not ready after {timeout}s:\n{self.log()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=15)
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ HTTP API
    def api(self, path: str, **params) -> dict | list:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:  # 400/422: bad expression; the body says why
            body = json.load(exc)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant query now: the result list (`[{"metric": {...}, "value": [t, "v"]}, ...]`)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def value(self, expr: str) -> float | None:
        """The single value of `expr` now, or None when it returns no data."""
        res = self.query(expr)
        if not res:
            return None
        assert len(res) == 1, f"{expr} returned {len(res)} series"
        return float(res[0]["value"][1])

    def series(self, match: str) -> list[dict]:
        return self.api("series", **{"match[]": match})

    def targets_health(self) -> list[str]:
        return [t["health"] for t in self.api("targets")["activeTargets"]]

    def wait_for(self, check: Callable[[], object], timeout: float = 30.0, what: str = "condition"):
        """Poll `check()` until it returns something truthy; its last value, or fail after timeout."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = check()
            except PrometheusError:
                last = None
            if last:
                return last
            time.sleep(0.5)
        raise PrometheusError(f"timed out after {timeout}s waiting for {what}; last: {last!r}\n{self.log()}")

    def wait_for_targets_up(self, timeout: float = 30.0) -> None:
        self.wait_for(
            lambda: (h := self.targets_health()) and all(x == "up" for x in h),
            timeout, f"targets {self.targets} up",
        )

    def scrape_count(self) -> float:
        return self.value(f'sum(count_over_time(up{{job="{self.job}"}}[1h]))') or 0.0

    def wait_for_scrapes(self, n: int = 1, timeout: float = 30.0) -> None:
        """Return once `n` more scrapes of every target have landed (so what the targets exposed
        before this call is in the TSDB)."""
        want = self.scrape_count() + n * len(self.targets)
        self.wait_for(lambda: self.scrape_count() >= want, timeout, f"{n} more scrapes")


@pytest.fixture
def make_prometheus(tmp_path) -> Iterator[Callable[..., Prometheus]]:
    """`make_prometheus(["127.0.0.1:PORT"], job="latentwatch")` -> a started `Prometheus`."""
    if PROMETHEUS is None:
        pytest.skip("prometheus missing: `make system-deps` (Debian package prometheus)")
    started: list[Prometheus] = []

    def make(targets: list[str], **kw) -> Prometheus:
        prom = Prometheus(tmp_path / f"prometheus-{len(started)}", targets, **kw)
        started.append(prom)
        return prom.start()

    yield make
    for prom in started:
        prom.stop()
