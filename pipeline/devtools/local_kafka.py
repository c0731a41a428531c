"""A real single-node Apache Kafka broker (KRaft) on 127.0.0.1, assembled from Maven Central.

No Docker: the official `org.apache.kafka:kafka_2.13` artifacts are fetched once with Maven into a
cache folder, then the broker runs as a plain JVM process. One *state folder* holds everything
about one broker: its data dir, logs, config and `broker.json` (pid and address).
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from latentwatch.pipeline.errors import UserError

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"  # the log4j2 version Kafka 4.1 is built with
# The G1 settings of Kafka's own start scripts (KAFKA_JVM_PERFORMANCE_OPTS). Without the 20 ms
# pause target, young collections here paused the broker 17-20 ms every ~4 s under load, straight
# into the pipeline's latency tail; with it, 8-10 ms.
JVM_OPTS = ["-Xms512m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true"]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "latentwatch"


def default_state_dir() -> Path:
    return cache_root() / "broker"


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>latentwatch.local</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
"""


def ensure_kafka_jars(version: str = KAFKA_VERSION) -> Path:
    """Return the folder of broker jars, downloading them with Maven on first use."""
    home = cache_root() / f"kafka-{version}"
    libs = home / "libs"
    done = home / ".complete"
    if done.exists() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:  # several processes at once (test workers): one downloads
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists() and any(libs.glob("kafka_2.13-*.jar")):
            return libs
        return _download_kafka_jars(home, version)


def _download_kafka_jars(home: Path, version: str) -> Path:
    libs, done = home / "libs", home / ".complete"
    mvn = shutil.which("mvn")
    if mvn is None:
        raise UserError(
            "Maven ('mvn') is not installed and the Kafka jars are not cached yet: "
            "install Maven (apt-get install maven) and run again"
        )
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION))
    tmp = home / "libs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    log = home / "mvn.log"
    with open(log, "w") as out:
        rc = subprocess.call(
            [mvn, "-B", "-q", "-f", str(home / "pom.xml"), "dependency:copy-dependencies",
             "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    if rc != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
        raise UserError(
            f"could not download Apache Kafka {version} from Maven Central (details in {log}): "
            "check the network or proxy settings for Maven, then run again"
        )
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    done.write_text(version)
    return libs


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _cluster_id() -> str:
    raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return "A" + raw[1:] if raw.startswith("-") else raw


@dataclass
class BrokerInfo:
    pid: int
    port: int
    controller_port: int
    bootstrap: str
    state_dir: str
    kafka_version: str


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child (we started it, nobody reaped it) counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class LocalBroker:
    """One broker process bound to one state folder.

    `extra_listeners` lets tests add TLS/SASL listeners: a dict name -> (protocol, port), their
    settings (keystores, SASL mechanisms) going in `extra_properties`; the PLAINTEXT listener on
    `port` always exists and is what `bootstrap` points at. `format_args` are passed to the
    storage format of a new data dir, e.g. `["--add-scram", "SCRAM-SHA-256=[name=u,password=p]"]`.
    """

    def __init__(self, state_dir: Path | str | None = None, port: int | None = None,
                 version: str = KAFKA_VERSION, extra_properties: dict[str, str] | None = None,
                 extra_listeners: dict[str, tuple[str, int]] | None = None,
                 format_args: list[str] | None = None, node_id: int = 1, controller_port: int | None = None,
                 quorum_voters: str | None = None, cluster_id: str | None = None,
                 jvm_opts: list[str] | None = None):
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.port = port
        # A node of a cluster (devtools/cluster.py) gets its id, fixed controller port, the
        # quorum's voters and the cluster id; a single broker makes its own.
        self.node_id = node_id
        self.controller_port = controller_port
        self.quorum_voters = quorum_voters
        self.cluster_id = cluster_id
        self.jvm_opts = list(jvm_opts or JVM_OPTS)
        self.version = version
        self.extra_properties = dict(extra_properties or {})
        self.extra_listeners = dict(extra_listeners or {})
        self.format_args = list(format_args or [])
        self._proc: subprocess.Popen | None = None

    # -- paths ---------------------------------------------------------------------------------
    @property
    def info_file(self) -> Path:
        return self.state_dir / "broker.json"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / "server.log"

    def status(self) -> BrokerInfo | None:
        """The running broker of this state folder, or None (a stale pid file is removed)."""
        try:
            info = BrokerInfo(**json.loads(self.info_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if not _alive(info.pid):
            self.info_file.unlink(missing_ok=True)
            return None
        return info

    # -- start / stop --------------------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> BrokerInfo:
        running = self.status()
        if running is not None:
            return running
        info = self.launch()
        try:
            self.wait_ready(info, timeout)
        except BaseException:
            self.stop()
            raise
        return info

    def launch(self) -> BrokerInfo:
        """Start the JVM and return at once (a cluster's nodes only get ready together)."""
        running = self.status()
        if running is not None:
            return running
        java = shutil.which("java")
        if java is None:
            raise UserError("Java is not installed: install JDK 17 (apt-get install openjdk-17-jdk-headless)")
        port = self.port or free_port()
        if port_in_use(port):
            raise UserError(f"port {port} on 127.0.0.1 is in use: choose another with --port, "
                            "or stop whatever listens there")
        controller_port = self.controller_port or free_port()
        while controller_port == port:
            controller_port = free_port()
        libs = ensure_kafka_jars(self.version)

        data = self.state_dir / "data"
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        props = self._properties(port, controller_port, data)
        cfg = self.state_dir / "server.properties"
        cfg.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.state_dir / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_file))
        classpath = str(libs / "*")
        base_cmd = [java, *self.jvm_opts, f"-Dlog4j2.configurationFile=file:{self.state_dir / 'log4j2.properties'}",
                    "-cp", classpath]

        if not (data / "meta.properties").exists():
            data.mkdir(parents=True, exist_ok=True)
            fmt = subprocess.run(
                [*base_cmd, "kafka.tools.StorageTool", "format", "-t", self.cluster_id or _cluster_id(), "-c", str(cfg),
                 "--ignore-formatted", *self.format_args], capture_output=True, text=True,
            )
            if fmt.returncode != 0:
                (logs / "format.log").write_text(fmt.stdout + fmt.stderr)
                raise UserError(f"formatting the Kafka data dir {data} failed (see {logs / 'format.log'}): "
                                "delete the state folder or choose another with --state-dir")

        out = open(logs / "server.out", "ab")
        self._proc = subprocess.Popen(
            [*base_cmd, f"-Dkafka.logs.dir={logs}", "kafka.Kafka", str(cfg)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl+C in the terminal goes to us, not straight to the JVM
        )
        out.close()
        info = BrokerInfo(pid=self._proc.pid, port=port, controller_port=controller_port,
                          bootstrap=f"127.0.0.1:{port}", state_dir=str(self.state_dir),
                          kafka_version=self.version)
        self.info_file.write_text(json.dumps(asdict(info)))
        return info

    def _properties(self, port: int, controller_port: int, data: Path) -> dict[str, str]:
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.quorum_voters or f"{self.node_id}@127.0.0.1:{controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.cleaner.dedupe.buffer.size": "2097152",
            "auto.create.topics.enable": "true",
            # Kafka 4.x's group coordinator holds each write for this long to batch it (default
            # 5 ms), so every offset commit took ~7 ms here against ~0.9 ms without: on one
            # local node with a handful of consumers there is nothing to batch.
            "group.coordinator.append.linger.ms": "0",
        }
        for name, (protocol, listener_port) in self.extra_listeners.items():
            props["listeners"] += f",{name}://127.0.0.1:{listener_port}"
            props["advertised.listeners"] += f",{name}://127.0.0.1:{listener_port}"
            props["listener.security.protocol.map"] += f",{name}:{protocol}"
        props.update(self.extra_properties)
        return props

    def wait_ready(self, info: BrokerInfo, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(info.pid):
                raise UserError(f"the Kafka broker exited during start-up: see {self.log_file} "
                                f"and {self.state_dir / 'logs' / 'server.out'}")
            try:
                with socket.create_connection(("127.0.0.1", info.port), timeout=1):
                    pass
            except OSError:
                time.sleep(0.2)
                continue
            if _serves_metadata(info.bootstrap):
                return
            time.sleep(0.2)
        raise UserError(f"the Kafka broker did not become ready within {timeout:.0f} s: see {self.log_file}")

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM (clean shutdown), SIGKILL after `timeout`. Returns whether one was running."""
        info = self.status()
        pid = info.pid if info else (self._proc.pid if self._proc and self._proc.poll() is None else None)
        if pid is None:
            return False
        terminate_group(pid, self._still_running, timeout)
        self.info_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL, no clean shutdown: for fault-injection tests. The data dir is kept."""
        info = self.status()
        if info:
            _signal_group(info.pid, signal.SIGKILL)
            while self._still_running(info.pid):
                time.sleep(0.05)
            self.info_file.unlink(missing_ok=True)

    def _still_running(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        return _alive(pid)


def terminate_group(pid: int, running, timeout: float) -> None:
    """SIGTERM to `pid`'s process group, SIGKILL once `timeout` has passed with `running(pid)`
    still true; returns when it is gone (the local broker and the local schema registry)."""
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running(pid):
        time.sleep(0.1)
    if running(pid):
        _signal_group(pid, signal.SIGKILL)
        while running(pid):
            time.sleep(0.05)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _serves_metadata(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0,
                             "logger": _SILENT_LOGGER})
        md = admin.list_topics(timeout=3)
        return bool(md.brokers)
    except Exception:
        return False


_SILENT_LOGGER = logging.getLogger("latentwatch.broker.probe")
_SILENT_LOGGER.addHandler(logging.NullHandler())
_SILENT_LOGGER.propagate = False
