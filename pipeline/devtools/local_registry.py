"""A real Schema Registry on 127.0.0.1: Apicurio Registry's ready-to-run distribution from Maven
Central, run as a plain JVM process like the Kafka broker (devtools/local_kafka.py).

- fetched once into the cache (`~/.cache/latentwatch/apicurio-<version>/`) with Maven: the
  `copy` goal of maven-dependency-plugin 2.8 (3.x refuses the artifact: its parent POM is not
  served), unpacked with `tar` (the plugin's `unpack` truncates long file names);
- bound to 127.0.0.1 only, on a free port unless one is given;
- global compatibility BACKWARD, as Confluent's registry (Apicurio's own default is NONE);
- storage in an H2 *file* under the state folder, so a stop and a start on the same folder keep
  the schemas and their ids (the outage tests stop it and bring it back);
- `stop()` at the end: SIGTERM, SIGKILL after a timeout.

Clients use `RegistryInfo.url` (the Confluent-compatible API, `/apis/ccompat/v7`).
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from latentwatch.pipeline.devtools.local_kafka import (
    _alive,
    cache_root,
    free_port,
    port_in_use,
    terminate_group,
)
from latentwatch.pipeline.errors import UserError

APICURIO_VERSION = "3.0.9"  # the one release with a ready-to-run distribution that runs on JDK 17
# Small-machine flags (2 shared cores): starts in 7-9 s, ~250 MB resident.
JVM_OPTS = ["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"]
CCOMPAT = "/apis/ccompat/v7"


def default_state_dir() -> Path:
    return cache_root() / "registry"


def ensure_registry(version: str = APICURIO_VERSION) -> Path:
    """The runner jar of Apicurio Registry `version`, downloading and unpacking it on first use."""
    home = cache_root() / f"apicurio-{version}"
    jar = home / "app" / f"apicurio-registry-app-{version}-runner.jar"
    done = home / ".complete"
    if done.exists() and jar.exists():
        return jar
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:  # test workers at once: one downloads
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists() and jar.exists():
            return jar
        _download(home, version)
        done.write_text(version)
    return jar


def _download(home: Path, version: str) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise UserError("Maven ('mvn') is not installed and Apicurio Registry is not cached yet: "
                        "install Maven (apt-get install maven) and run again")
    dl = home / "download"
    shutil.rmtree(dl, ignore_errors=True)
    log = home / "mvn.log"
    with open(log, "w") as out:
        rc = subprocess.call(
            [mvn, "-B", "-q", "org.apache.maven.plugins:maven-dependency-plugin:2.8:copy",
             f"-Dartifact=io.apicurio:apicurio-registry-app:{version}:tar.gz:all", f"-DoutputDirectory={dl}"],
            stdout=out, stderr=subprocess.STDOUT, cwd=home)
    archives = list(dl.glob("*.tar.gz"))
    if rc != 0 or not archives:
        raise UserError(f"could not download Apicurio Registry {version} from Maven Central (details in {log}): "
                        "check the network or proxy settings for Maven, then run again")
    tmp = home / "app.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if subprocess.call(["tar", "xzf", str(archives[0]), "-C", str(tmp)]) != 0:
        raise UserError(f"could not unpack {archives[0]}: delete {home} and run again")
    shutil.rmtree(home / "app", ignore_errors=True)
    tmp.rename(home / "app")
    shutil.rmtree(dl, ignore_errors=True)


@dataclass
class RegistryInfo:
    pid: int
    port: int
    url: str  # the Confluent-compatible API: what SchemaRegistryClient and the pipeline are given
    state_dir: str
    version: str


class LocalRegistry:
    """One Apicurio Registry process bound to one state folder (its H2 database, log, pid file)."""

    def __init__(self, state_dir: Path | str | None = None, port: int | None = None,
                 version: str = APICURIO_VERSION, compatibility: str = "BACKWARD"):
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.port = port
        self.version = version
        self.compatibility = compatibility
        self._proc: subprocess.Popen | None = None

    @property
    def info_file(self) -> Path:
        return self.state_dir / "registry.json"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "registry.log"

    def status(self) -> RegistryInfo | None:
        try:
            info = RegistryInfo(**json.loads(self.info_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if not _alive(info.pid):
            self.info_file.unlink(missing_ok=True)
            return None
        return info

    def start(self, timeout: float = 90.0) -> RegistryInfo:
        """Start (or find running) and wait until the compatibility API answers. A restart on the
        same state folder keeps the port of the last run, so clients find it again."""
        running = self.status()
        if running is not None:
            return running
        java = shutil.which("java")
        if java is None:
            raise UserError("Java is not installed: install JDK 17 (apt-get install openjdk-17-jdk-headless)")
        jar = ensure_registry(self.version)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        port = self.port or free_port()
        if port_in_use(port):
            raise UserError(f"port {port} on 127.0.0.1 is in use: choose another, or stop whatever listens there")
        self.port = port
        db = self.state_dir / "db" / "registry"
        out = open(self.log_file, "ab")
        self._proc = subprocess.Popen(
            [java, *JVM_OPTS, "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={port}",
             # 3.3.x opens a management port on 0.0.0.0:9000 unless told: keep it on loopback too
             "-Dquarkus.management.host=127.0.0.1", "-Dquarkus.management.enabled=false",
             f"-Dapicurio.rules.global.compatibility={self.compatibility}",
             f"-Dapicurio.datasource.url=jdbc:h2:file:{db}", "-jar", str(jar)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=self.state_dir)
        out.close()
        info = RegistryInfo(self._proc.pid, port, f"http://127.0.0.1:{port}{CCOMPAT}", str(self.state_dir),
                            self.version)
        self.info_file.write_text(json.dumps(asdict(info)))
        try:
            self._wait_ready(info, timeout)
        except BaseException:
            self.stop()
            raise
        return info

    def _wait_ready(self, info: RegistryInfo, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._running(info.pid):
                raise UserError(f"the schema registry exited during start-up: see {self.log_file}")
            try:
                with urllib.request.urlopen(info.url + "/subjects", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise UserError(f"the schema registry did not answer within {timeout:.0f} s: see {self.log_file}")

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM, SIGKILL after `timeout`. Returns whether one was running."""
        info = self.status()
        pid = info.pid if info else (self._proc.pid if self._proc and self._proc.poll() is None else None)
        if pid is None:
            return False
        terminate_group(pid, self._running, timeout)
        self.info_file.unlink(missing_ok=True)
        return True

    def _running(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        return _alive(pid)


def main(argv: list[str] | None = None) -> int:
    """`python -m latentwatch.pipeline.devtools.local_registry fetch|start|stop|status` (CI fetches
    it before the tests; `start` runs one on the default state folder and prints its URL)."""
    args = sys.argv[1:] if argv is None else argv
    cmd = args[0] if args else "status"
    try:
        if cmd == "fetch":
            print(ensure_registry())
        elif cmd == "start":
            print(LocalRegistry().start().url)
        elif cmd == "stop":
            print("stopped" if LocalRegistry().stop() else "not running")
        elif cmd == "status":
            info = LocalRegistry().status()
            print(info.url if info else "not running")
        else:
            print(f"unknown command {cmd!r}: fetch, start, stop or status", file=sys.stderr)
            return 2
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
