"""A local Apache Flink cluster for the pipeline's Beam work, fetched, started and stopped by us.

Why: `kubeflow/environments/flink.toml` promises that the Beam-heavy steps run on Flink, and only
a real runner shows what breaks there (pickling, artifact staging, file paths, parallelism, the
job server's version). This module gives one machine the whole path a cluster user has:

  Beam client --gRPC--> Beam Flink job server --REST--> Flink JobManager --> TaskManager (2 slots)
                                                                   |  (EXTERNAL environment)
                                                                   v
                                                      Beam Python worker pool --> SDK harnesses

What it fetches (once, into `~/.cache/ctpipe/flink`, or $CTPIPE_FLINK_CACHE; never into git):
  * Flink's distribution from the PyPI sdists `apache-flink-libraries` (deps/lib: flink-dist, ...)
    and `apache-flink` (deps/bin, deps/conf), used as archives: `pip install apache-flink` would
    pin apache-beam below 2.49, and `pip download` of these sdists fails building their metadata
    (`invalid command 'bdist_wheel'`), so the files come from the index's JSON API (PEP 691),
    checked against the sha256 pinned below.
  * Beam's Flink job server (`FlinkJobServerDriver`) with its dependencies, through Maven.
    The registry here serves neither `beam-runners-flink-1.18-job-server` nor
    `beam-runners-flink-1.18`/`-1.17` for any Beam version, nor `beam-runners-java-job-service`
    2.58/2.59. It serves `beam-runners-flink-1.16:2.59.0` (the runner of our Beam release, for
    Flink 1.16) and `beam-runners-java-job-service:2.57.0`, the newest below it. So the cluster
    is Flink 1.16.3 (Beam 2.59's runner is built against 1.16.0; patch releases keep the REST
    API) and the job-service classes are 2.57.0's; see JOB_SERVER_ARTIFACTS.

What `up` starts, each as its own process group with an exact PID (no daemon scripts): the
JobManager and one TaskManager with two slots (`bin/*.sh start-foreground` exec java), the job
server (java -cp ...), and the worker pool (flink_worker_pool.py, bound to 127.0.0.1). Every
port is bound to 127.0.0.1; the Flink config, logs, PID files, temp and staging folders live in
the state dir, which `down` removes after stopping exactly those PIDs.

Usage:
    from ctpipe.pipeline.run import flink_local
    cluster = flink_local.up(state_dir)            # Ports() defaults, or flink_local.Ports(...)
    ...  beam args: cluster.beam_args() (= kubeflow/environments/flink-local.toml's)
    flink_local.down(state_dir)
`make flink-up` / `make flink-down` run `ctpipe flink up|down` (pipeline/commands/flink.py), which
reads the CTPIPE_FLINK_* variables.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ctpipe.pipeline.errors import CtpipeError

_LOGGER = logging.getLogger(__name__)

FLINK_VERSION = "1.16.3"
# name -> (sdist file, size in bytes, sha256), as PyPI lists them.
FLINK_SDISTS: Dict[str, Tuple[str, int, str]] = {
    "apache-flink-libraries": (
        "apache-flink-libraries-1.16.3.tar.gz", 237055918,
        "d15df4185e9c507836b031879b64e18f68955dd7e90cd7d39b450513ed64ebbe"),
    "apache-flink": (
        "apache-flink-1.16.3.tar.gz", 1204691,
        "46dfc24e8e394efb6ccbe175fcbc300c7070645aaf2c3fb991045d6d67d2d3d2"),
}
BEAM_JAVA_VERSION = "2.59.0"
# groupId:artifactId:version of the job server's roots; Maven resolves the rest (checksums
# strict). The job service is 2.57.0 (the newest the registry serves; see the module
# docstring), declared last so that Maven's first-declaration rule keeps every Beam jar it
# shares with the runner at 2.59.0; its expansion-service dependency is named at 2.59.0 too.
# _fill_job_server checks that no other Beam jar came out below 2.59.0.
JOB_SERVICE_VERSION = "2.57.0"
JOB_SERVER_ARTIFACTS: Tuple[str, ...] = (
    f"org.apache.beam:beam-runners-flink-1.16:{BEAM_JAVA_VERSION}",
    f"org.apache.beam:beam-sdks-java-expansion-service:{BEAM_JAVA_VERSION}",
    f"org.apache.beam:beam-runners-java-job-service:{JOB_SERVICE_VERSION}",
    # A logging binding for the job server's slf4j (else it logs nothing at all).
    "org.slf4j:slf4j-jdk14:1.7.30",
)
JOB_SERVER_MAIN = "org.apache.beam.runners.flink.FlinkJobServerDriver"
MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
DEFAULT_INDEX = "https://pypi.org/simple"
# Flink 1.16 predates its Java 17 support; these are the flags Flink 1.18's default
# flink-conf.yaml (env.java.opts.all) ships for Java 17. The job server needs them too.
JAVA17_OPENS = (
    "--add-exports=java.base/sun.net.util=ALL-UNNAMED "
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED "
    "--add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED "
    "--add-opens=java.base/java.lang=ALL-UNNAMED --add-opens=java.base/java.net=ALL-UNNAMED "
    "--add-opens=java.base/java.io=ALL-UNNAMED --add-opens=java.base/java.nio=ALL-UNNAMED "
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED "
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED "
    "--add-opens=java.base/java.text=ALL-UNNAMED --add-opens=java.base/java.time=ALL-UNNAMED "
    "--add-opens=java.base/java.util=ALL-UNNAMED "
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED "
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED "
    "--add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED")
SLOTS = 2
LOOPBACK = "127.0.0.1"
# Flink ExecutionMode for Beam batch jobs (FlinkPipelineOptions.executionModeForBatch).
BATCH_EXECUTION_MODE = "BATCH_FORCED"
# Start order; down() stops in reverse (clients of Flink first, the JobManager last).
PROCESSES = ("jobmanager", "taskmanager", "jobserver", "workerpool")
CONFIG_FILE = "kubeflow/environments/flink-local.toml"


class FlinkError(CtpipeError):
    """The local Flink cluster could not be fetched, started, reached or stopped (one line;
    exit code: CtpipeError's, ExitCode.INTERNAL)."""


# -- ports ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Ports:
    """Every port the cluster listens on, all on 127.0.0.1. The defaults are Flink's and Beam's
    own (what flink-local.toml names); TaskManager RPC/data and blob ports are ephemeral (0) and
    bound to loopback too."""

    rest: int = 8081
    jobmanager_rpc: int = 6123
    job: int = 8099
    artifact: int = 8098
    expansion: int = 8097
    worker_pool: int = 50000

    ENV = {"rest": "CTPIPE_FLINK_REST_PORT", "jobmanager_rpc": "CTPIPE_FLINK_RPC_PORT",
           "job": "CTPIPE_FLINK_JOB_PORT", "artifact": "CTPIPE_FLINK_ARTIFACT_PORT",
           "expansion": "CTPIPE_FLINK_EXPANSION_PORT",
           "worker_pool": "CTPIPE_FLINK_WORKER_POOL_PORT"}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Ports":
        values = {}
        for name, var in cls.ENV.items():
            if environ.get(var):
                try:
                    values[name] = int(environ[var])
                except ValueError:
                    raise FlinkError(f"{var} must be a port number, got {environ[var]!r}")
        return cls(**values)

    @classmethod
    def free(cls) -> "Ports":
        """Ports nobody listens on right now (tests run beside a cluster on the defaults)."""
        sockets = []
        try:
            for _ in dataclasses.fields(cls):
                sock = socket.socket()
                sock.bind((LOOPBACK, 0))
                sockets.append(sock)
            return cls(*(sock.getsockname()[1] for sock in sockets))
        finally:
            for sock in sockets:
                sock.close()

    def as_dict(self) -> Dict[str, int]:
        return dataclasses.asdict(self)


# -- fetching ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FlinkPaths:
    """What ensure_cached() leaves in the cache: a Flink home and the job server's jars."""

    flink_home: Path
    job_server_lib: Path

    @property
    def job_server_classpath(self) -> str:
        return str(self.job_server_lib / "*")


def default_cache_dir() -> Path:
    return Path(os.environ.get("CTPIPE_FLINK_CACHE")
                or Path.home() / ".cache" / "ctpipe" / "flink")


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(os.environ.get("CTPIPE_FLINK_STATE") or Path(base) / "ctpipe" / "flink")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock: two `make flink-up` or test sessions fill the cache once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _LOGGER.info("waiting for %s (another process holds it)", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sdist_url(name: str, filename: str, sha256: str) -> str:
    """The file's URL from the package index (PEP 691 JSON, else the PEP 503 HTML page)."""
    index = (os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")
    page = f"{index}/{name}/"
    request = urllib.request.Request(page, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            kind = response.headers.get("Content-Type", "")
            body = response.read()
    except OSError as error:
        raise FlinkError(f"cannot read the package index {page}: {error}")
    if "json" in kind:
        for entry in json.loads(body)["files"]:
            if entry["filename"] == filename:
                if entry.get("hashes", {}).get("sha256", sha256) != sha256:
                    raise FlinkError(f"{page} lists {filename} with another sha256 than pinned")
                return urllib.parse.urljoin(page, entry["url"])
    else:
        for href in re.findall(r'href="([^"]+)"', body.decode("utf-8", "replace")):
            if urllib.parse.urlsplit(href).path.endswith("/" + filename):
                return urllib.parse.urljoin(page, href.split("#")[0])
    raise FlinkError(f"{page} does not list {filename}")


def _download(name: str, target: Path) -> Path:
    filename, size, sha256 = FLINK_SDISTS[name]
    path = target / filename
    if path.exists() and path.stat().st_size == size and _sha256(path) == sha256:
        return path
    url = _sdist_url(name, filename, sha256)
    partial = path.with_suffix(".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=120) as response, open(partial, "wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise FlinkError(f"cannot download {filename} from {url}: {error}")
    if partial.stat().st_size != size or digest.hexdigest() != sha256:
        partial.unlink()
        raise FlinkError(f"{filename} from {url} does not match its pinned size/sha256")
    partial.rename(path)
    return path


def _extract(archive: Path, prefixes: Mapping[str, str], dest: Path) -> None:
    """Extract the members under each prefix (e.g. 'deps/lib/') to dest/<folder>."""
    with tarfile.open(archive) as tar:  # one forward pass: seeking back in a .gz re-reads it
        for member in tar:
            relative = member.name.split("/", 1)[-1]
            for prefix, folder in prefixes.items():
                if relative.startswith(prefix) and member.isfile():
                    member.name = f"{folder}/{relative[len(prefix):]}"
                    tar.extract(member, dest, filter="data")


def _manifest(root: Path) -> Dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".manifest.json"}


def _verified(root: Path, expected: Mapping[str, object]) -> bool:
    """True when root was completed earlier from the same pins (`expected`) and every file still
    has its recorded size (a full sha256 pass over ~360 MB on every `up` would cost seconds;
    downloads are checked fully when they arrive)."""
    manifest = root / ".manifest.json"
    if not manifest.exists():
        return False
    recorded = json.loads(manifest.read_text())
    if any(recorded.get(key) != value for key, value in expected.items()):
        return False
    return all((root / name).is_file() and (root / name).stat().st_size == size
               for name, size in recorded["files"].items())


def _seal(root: Path, extra: Mapping[str, object]) -> None:
    (root / ".manifest.json").write_text(json.dumps({**extra, "files": _manifest(root)},
                                                    indent=1))


def _home_pins() -> Dict[str, object]:
    return {"flink": FLINK_VERSION,
            "sdists": {n: {"file": f, "sha256": s} for n, (f, _, s) in FLINK_SDISTS.items()}}


def _job_server_pins() -> Dict[str, object]:
    return {"artifacts": list(JOB_SERVER_ARTIFACTS)}


def _fill_flink_home(cache_dir: Path, home: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix=".flink-home-", dir=cache_dir))
    try:
        downloads = cache_dir / "downloads"
        downloads.mkdir(exist_ok=True)
        libraries = _download("apache-flink-libraries", downloads)
        scripts = _download("apache-flink", downloads)
        staged = work / home.name
        # lib/ (flink-dist and friends) and bin/bash-java-utils.jar (the scripts' memory
        # calculator) come from the libraries sdist; bin/*.sh and conf/ from apache-flink.
        _extract(libraries, {"deps/lib/": "lib", "deps/bin/": "bin"}, staged)
        _extract(scripts, {"deps/bin/": "bin", "deps/conf/": "conf"}, staged)
        (staged / "plugins").mkdir()
        _seal(staged, _home_pins())
        if home.exists():
            shutil.rmtree(home)
        staged.rename(home)
        shutil.rmtree(downloads)  # the home is what we keep (~240 MB less on disk)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _job_server_pom() -> str:
    deps = []
    for coordinate in JOB_SERVER_ARTIFACTS:
        group, artifact, version = coordinate.split(":")
        exclusions = ""
        if artifact.startswith("beam-runners-flink"):
            exclusions = ("<exclusions><exclusion><groupId>org.apache.beam</groupId>"
                          "<artifactId>beam-runners-java-job-service</artifactId></exclusion>"
                          "</exclusions>")
        deps.append(f"<dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
                    f"<version>{version}</version>{exclusions}</dependency>")
    return ("<project xmlns=\"http://maven.apache.org/POM/4.0.0\"><modelVersion>4.0.0"
            "</modelVersion><groupId>ctpipe</groupId><artifactId>flink-job-server</artifactId>"
            "<version>1</version><packaging>pom</packaging><dependencies>"
            + "".join(deps) + "</dependencies></project>\n")


def _fill_job_server(cache_dir: Path, lib: Path) -> None:
    if shutil.which("mvn") is None:
        raise FlinkError("Maven (mvn) is not installed; it fetches Beam's Flink job server")
    work = Path(tempfile.mkdtemp(prefix=".job-server-", dir=cache_dir))
    try:
        (work / "pom.xml").write_text(_job_server_pom())
        staged = work / "lib"
        # A private local repository in the work folder: removed below, so the cache holds one
        # copy of the jars. -C: fail on a checksum mismatch instead of warning.
        command = ["mvn", "-B", "-q", "-C", f"-Dmaven.repo.local={work / 'm2'}",
                   f"{MAVEN_DEPENDENCY_PLUGIN}:copy-dependencies", "-DincludeScope=runtime",
                   f"-DoutputDirectory={staged}"]
        result = subprocess.run(command, cwd=work, capture_output=True, text=True)
        if result.returncode != 0:
            errors = [line for line in result.stdout.splitlines() if "[ERROR]" in line]
            raise FlinkError("Maven could not fetch Beam's Flink job server: "
                             + (errors[0] if errors else result.stdout[-300:]).strip())
        jars = {p.name: _sha256(p) for p in sorted(staged.glob("*.jar"))}
        if not any(name.startswith("beam-runners-flink") for name in jars):
            raise FlinkError("Maven finished without the Beam Flink runner jar")
        stray = [name for name in jars if name.startswith("beam-")
                 and not name.startswith(("beam-vendor-", "beam-runners-java-job-service-"))
                 and not name.endswith(f"-{BEAM_JAVA_VERSION}.jar")]
        if stray:
            raise FlinkError(f"Maven mixed Beam versions into the job server: {stray}")
        _seal(staged, {**_job_server_pins(), "sha256": jars})
        if lib.exists():
            shutil.rmtree(lib)
        lib.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(lib)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_cached(cache_dir: Optional[Path] = None) -> FlinkPaths:
    """Fetch Flink and Beam's job server into cache_dir once; later calls only check sizes.

    Idempotent and safe to run concurrently (an flock in the cache); a half-filled home or jar
    folder never becomes visible (built in a temp folder, renamed into place when complete)."""
    cache_dir = Path(cache_dir or default_cache_dir()).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = FlinkPaths(flink_home=cache_dir / f"flink-{FLINK_VERSION}",
                       job_server_lib=cache_dir / f"beam-flink-job-server-{BEAM_JAVA_VERSION}")
    if (_verified(paths.flink_home, _home_pins())
            and _verified(paths.job_server_lib, _job_server_pins())):
        return paths
    with _locked(cache_dir / ".lock"):
        if not _verified(paths.flink_home, _home_pins()):
            _LOGGER.info("fetching Flink %s into %s", FLINK_VERSION, paths.flink_home)
            _fill_flink_home(cache_dir, paths.flink_home)
        if not _verified(paths.job_server_lib, _job_server_pins()):
            _LOGGER.info("fetching Beam %s's Flink job server into %s", BEAM_JAVA_VERSION,
                         paths.job_server_lib)
            _fill_job_server(cache_dir, paths.job_server_lib)
    return paths


# -- processes -----------------------------------------------------------------------------------
# Popen objects of the processes this interpreter started: down() reaps them, so a test that
# runs up() and down() in one process sees no zombie where it checks for a live PID.
_CHILDREN: Dict[int, subprocess.Popen] = {}


def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat), None when gone or a
    zombie: with the PID it identifies our process even after the PID is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _alive(record: Mapping[str, object]) -> bool:
    pid = int(record["pid"])
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return False
    return _start_time(pid) == record["start"]


def _port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    with socket.socket() as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


def _pid_dir(state_dir: Path) -> Path:
    return state_dir / "pids"


def _records(state_dir: Path) -> Dict[str, Dict[str, object]]:
    records = {}
    for name in PROCESSES:
        path = _pid_dir(state_dir) / f"{name}.pid"
        if path.exists():
            records[name] = json.loads(path.read_text())
    return records


def _flink_conf(ports: Ports, state_dir: Path, shipped: Path) -> str:
    """flink-conf.yaml for this cluster: the shipped one with every address on loopback, our
    ports, two slots, small memory (2 cores here), and every temp folder inside the state dir."""
    tmp = state_dir / "tmp"
    settings = {
        "jobmanager.rpc.address": LOOPBACK, "jobmanager.rpc.port": ports.jobmanager_rpc,
        "jobmanager.bind-host": LOOPBACK,
        "taskmanager.bind-host": LOOPBACK, "taskmanager.host": LOOPBACK,
        "rest.address": LOOPBACK, "rest.bind-address": LOOPBACK, "rest.port": ports.rest,
        "taskmanager.numberOfTaskSlots": SLOTS, "parallelism.default": SLOTS,
        "jobmanager.memory.process.size": "1024m",
        # Task heap: Beam's runner side queues up to 100 data messages per running bundle
        # (BeamFnDataInboundObserver's CancellableQueue(100)) and the Python harness flushes
        # a message at 10 MB (data_plane._DEFAULT_SIZE_FLUSH_THRESHOLD): up to ~1 GB of heap per
        # slot while a harness outruns the stage it feeds. With 3072m (1.1 GB heap for 2
        # slots) CsvExampleGen on a 1000x span (2.4M rows) died in the TaskManager with
        # "OutOfMemoryError: Java heap space" in grpc-default-executor. 7168m, managed 0.3 and
        # 1 GB off-heap leave ~2.7 GB of task heap: 2 slots x 1 GB of queue and the operators.
        "taskmanager.memory.process.size": "7168m",
        # Direct memory: the TaskManager's gRPC (netty) sends the data a stage feeds its
        # harness from direct buffers, capped by MaxDirectMemorySize = framework + task
        # off-heap + network (448m by default here). The 1000x span's WriteSplit stages then
        # failed with "OutOfMemoryError: Direct buffer memory" ("call is closed" in the job).
        "taskmanager.memory.task.off-heap.size": "1024m",
        # The Python harnesses do the user work outside the JVM, but Flink's batch sorter (the
        # GroupByKey of StatisticsGen) sorts in managed memory: at 0.05 (of a 3072m process) a
        # 10x span failed with "Cannot write record to fresh sort buffer. Record too large."
        # 0.3 of this process is ~1.6 GB, more than the 0.4 that fixed it at 3072m.
        "taskmanager.memory.managed.fraction": 0.3,
        # A TFX component is one Flink batch job of many operators: with the default 10% of
        # Flink memory (3481 buffers) CsvExampleGen failed with "Insufficient number of
        # network buffers: required 512, but only 397 available".
        "taskmanager.memory.network.min": "320m", "taskmanager.memory.network.max": "320m",
        # ...and StatisticsGen (114 operators) still failed ("required 512, but only 0
        # available"): every blocking result partition of Flink 1.16's sort shuffle asks for
        # 512 buffers (16 MB) up front. 64 is plenty for our partition sizes.
        "taskmanager.network.sort-shuffle.min-buffers": 64,
        "io.tmp.dirs": str(tmp), "web.tmpdir": str(tmp / "web"),
        "blob.storage.directory": str(tmp / "blob"),
        "env.pid.dir": str(_pid_dir(state_dir) / "flink"),
        "env.java.opts": f"{JAVA17_OPENS} -Djava.io.tmpdir={tmp}",
        # Beam's runner classes from the cluster's own classpath (state/lib, see up()), not
        # from each job's jars: Beam releases a stage's Python harness at once when its
        # operator class comes from a job's class loader (FlinkExecutableStageContextFactory),
        # so every batch stage of a TFX component started a new harness (~5 per component).
        # Parent-first for all classes: the jobs' jars are the same jars, and a pattern for
        # org.apache.beam alone split joda-time across two loaders (ClassCastException).
        "classloader.resolve-order": "parent-first",
    }
    kept = [line for line in shipped.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
            and line.split(":")[0].strip() not in settings]
    return "\n".join(["# Written by ctpipe.pipeline.run.flink_local.up(); removed by down()."]
                     + kept + [f"{key}: {value}" for key, value in settings.items()]) + "\n"


def _spawn(name: str, command: List[str], state_dir: Path, env: Mapping[str, str]) -> None:
    log = open(state_dir / "log" / f"{name}.out", "ab")
    try:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=dict(env), cwd=state_dir,
                                   start_new_session=True)
    finally:
        log.close()
    _CHILDREN[process.pid] = process
    start = None
    for _ in range(50):  # /proc/PID/stat appears with the fork; a few ms at most
        start = _start_time(process.pid)
        if start:
            break
        time.sleep(0.01)
    record = {"pid": process.pid, "start": start, "command": command[:3]}
    (_pid_dir(state_dir) / f"{name}.pid").write_text(json.dumps(record))


def _link_lib(paths: FlinkPaths, lib: Path) -> None:
    """The cluster's lib/: Flink's own jars plus the job server's Beam runtime jars (symlinks),
    less its Flink 1.16.0 client jars (the cluster has flink-dist) and its slf4j binding (Flink
    logs through log4j)."""
    for jar in sorted((paths.flink_home / "lib").glob("*.jar")):
        (lib / jar.name).symlink_to(jar)
    for jar in sorted(paths.job_server_lib.glob("*.jar")):
        if not jar.name.startswith(("flink-", "slf4j-")) and not (lib / jar.name).exists():
            (lib / jar.name).symlink_to(jar)


def _commands(paths: FlinkPaths, ports: Ports, state_dir: Path,
              python: str) -> Dict[str, List[str]]:
    java = shutil.which("java") or "java"
    return {
        # `start-foreground` execs java (flink-console.sh), so the PID is the JVM's.
        "jobmanager": [str(paths.flink_home / "bin" / "jobmanager.sh"), "start-foreground"],
        "taskmanager": [str(paths.flink_home / "bin" / "taskmanager.sh"), "start-foreground"],
        "jobserver": [java, *JAVA17_OPENS.split(), "-Xmx768m",
                      f"-Djava.io.tmpdir={state_dir / 'tmp'}",
                      "-cp", paths.job_server_classpath, JOB_SERVER_MAIN,
                      f"--flink-master={LOOPBACK}:{ports.rest}",
                      f"--flink-conf-dir={state_dir / 'conf'}",
                      f"--job-host={LOOPBACK}", f"--job-port={ports.job}",
                      f"--artifact-port={ports.artifact}",
                      f"--expansion-port={ports.expansion}",
                      f"--artifacts-dir={state_dir / 'artifacts'}"],
        "workerpool": [python, "-m", "ctpipe.pipeline.run.flink_worker_pool",
                       str(ports.worker_pool)],
    }


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A running local cluster: where to reach it and the Beam args that use it."""

    state_dir: Path
    ports: Ports
    started: bool  # False: up() found it running already

    @property
    def web_ui(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.rest}"

    @property
    def job_endpoint(self) -> str:
        return f"localhost:{self.ports.job}"

    def beam_args(self, parallelism: int = SLOTS) -> List[str]:
        return beam_args(self.ports, parallelism)


def beam_args(ports: Ports = Ports(), parallelism: int = SLOTS) -> List[str]:
    """The Beam args that run a pipeline on this cluster (flink-local.toml holds the same)."""
    return ["--runner=PortableRunner",
            f"--job_endpoint=localhost:{ports.job}",
            f"--artifact_endpoint=localhost:{ports.artifact}",
            "--environment_type=EXTERNAL",
            f"--environment_config=localhost:{ports.worker_pool}",
            f"--parallelism={parallelism}",
            # Keep a stage's Python harness for the next stage of the same job instead of
            # starting a new one (TFX's imports) per batch stage; works with the cluster's
            # parent-first Beam classes (_flink_conf). StatisticsGen: 5 harnesses -> 1.
            "--environment_cache_millis=30000",
            # Blocking data exchanges between a batch job's operators instead of Beam's default
            # PIPELINED, which Beam's own option text says to leave "if pipelines get blocked"
            # (FLINK-10672: a pipelined exchange in a DAG whose branches rejoin can wait on
            # itself forever). Seen once in CI: StatisticsGen's job (114 operators, branches
            # that rejoin) never finished. Measured at 10x, alternating: first cycle 85.7/84.3 s
            # PIPELINED, 85.6/82.5 s BATCH_FORCED.
            f"--execution_mode_for_batch={BATCH_EXECUTION_MODE}",
            # Keeps TFX from building an sdist of itself for every component
            # (tfx/utils/dependency_utils.py); EXTERNAL workers never read the image.
            f"--sdk_container_image=apache/beam_python3.11_sdk:{BEAM_JAVA_VERSION}"]


def rest(ports: Ports, path: str, timeout: float = 5.0) -> object:
    """GET a Flink REST resource (e.g. /overview, /jobs/overview) as parsed JSON."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{ports.rest}{path}",
                                timeout=timeout) as response:
        return json.loads(response.read())


def _tail(path: Path, lines: int = 400) -> str:
    """The last error-looking line of a log, else its last line (for one-line errors)."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    for line in reversed(text):
        if re.search(r"ERROR|Exception|Error:", line):
            return line.strip()[:300]
    return text[-1].strip()[:300] if text else ""


def _ready(ports: Ports) -> Dict[str, bool]:
    try:
        overview = rest(ports, "/overview", timeout=2.0)
        flink = overview.get("slots-total", 0) >= SLOTS
    except (OSError, ValueError):
        flink = False
    return {"flink": flink, "jobserver": _port_open(ports.job),
            "workerpool": _port_open(ports.worker_pool)}


def _wait_ready(state_dir: Path, ports: Ports, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        records = _records(state_dir)
        for name, record in records.items():
            if not _alive(record):
                raise FlinkError(f"Flink cluster: {name} exited during start-up; see "
                                 f"{state_dir / 'log'}: {_tail(state_dir / 'log' / f'{name}.out')}")
        ready = _ready(ports)
        if all(ready.values()):
            return
        if time.monotonic() > deadline:
            waiting = ", ".join(name for name, ok in ready.items() if not ok)
            raise FlinkError(f"Flink cluster not ready after {timeout:.0f}s (waiting for "
                             f"{waiting}); logs in {state_dir / 'log'}")
        time.sleep(0.5)


def up(state_dir: Optional[Path] = None, ports: Optional[Ports] = None,
       cache_dir: Optional[Path] = None, timeout: float = 120.0,
       python: Optional[str] = None) -> Cluster:
    """Start the local cluster (JobManager, TaskManager with 2 slots, job server, worker pool)
    and wait until Flink reports its slots and both Beam ports answer.

    Idempotent: when every process recorded in state_dir is alive and answering, it returns
    at once (started=False). A partly dead cluster is stopped first and started afresh.
    `python` runs the worker pool and its harnesses (default: this interpreter, whose bin
    folder goes first on PATH so the pool's `python` is the same one)."""
    state_dir = Path(state_dir or default_state_dir()).expanduser().resolve()
    records = _records(state_dir)
    if records:
        recorded = json.loads((state_dir / "ports.json").read_text()) \
            if (state_dir / "ports.json").exists() else None
        running = Ports(**recorded) if recorded else None
        if (running and len(records) == len(PROCESSES)
                and all(_alive(r) for r in records.values()) and all(_ready(running).values())):
            if ports is not None and ports != running:
                raise FlinkError(f"a Flink cluster already runs from {state_dir} on other "
                                 f"ports ({running}); stop it first (make flink-down)")
            return Cluster(state_dir, running, started=False)
        _LOGGER.warning("Flink cluster in %s is partly down; restarting it", state_dir)
        down(state_dir)
    ports = ports or Ports()
    busy = [f"{name}={port}" for name, port in ports.as_dict().items() if _port_open(port)]
    if busy:
        raise FlinkError(f"cannot start Flink: port(s) in use on {LOOPBACK}: {', '.join(busy)} "
                         "(set CTPIPE_FLINK_*_PORT)")
    paths = ensure_cached(cache_dir)
    python = python or sys.executable
    for folder in ("conf", "lib", "log", "tmp", "artifacts", "pids/flink"):
        (state_dir / folder).mkdir(parents=True, exist_ok=True)
    _link_lib(paths, state_dir / "lib")
    for shipped in (paths.flink_home / "conf").iterdir():
        if shipped.name != "flink-conf.yaml":
            shutil.copy(shipped, state_dir / "conf" / shipped.name)
    (state_dir / "conf" / "flink-conf.yaml").write_text(
        _flink_conf(ports, state_dir, paths.flink_home / "conf" / "flink-conf.yaml"))
    (state_dir / "ports.json").write_text(json.dumps(ports.as_dict()))
    env = dict(os.environ)
    env.update({"FLINK_CONF_DIR": str(state_dir / "conf"), "FLINK_LOG_DIR": str(state_dir / "log"),
                "FLINK_LIB_DIR": str(state_dir / "lib"),
                "FLINK_PID_DIR": str(_pid_dir(state_dir) / "flink"),
                "TMPDIR": str(state_dir / "tmp"),
                # The pool starts harnesses with the first `python` on PATH: ours.
                "PATH": os.pathsep.join([str(Path(python).parent), env.get("PATH", "")])})
    env.pop("FLINK_HOME", None)
    try:
        for name, command in _commands(paths, ports, state_dir, python).items():
            _spawn(name, command, state_dir, env)
        _wait_ready(state_dir, ports, timeout)
    except BaseException:
        down(state_dir, keep_logs=True)
        raise
    return Cluster(state_dir, ports, started=True)


def _signal_group(pid: int, signum: int) -> None:
    """Signal the process group we created for pid (start_new_session: pgid == pid), which
    also reaches the harnesses the worker pool forked; else the process alone."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Only zombies left (our own unreaped children) count as gone.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            fields = text[text.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
    return False


def down(state_dir: Optional[Path] = None, timeout: float = 30.0,
         keep_logs: bool = False) -> List[str]:
    """Stop exactly the processes up() recorded in state_dir (their process groups), check that
    their ports are closed, and remove the state dir (keep_logs: all but log/).

    Returns the names of the processes it stopped. Idempotent: nothing recorded, nothing done."""
    state_dir = Path(state_dir or default_state_dir()).expanduser().resolve()
    records = _records(state_dir)
    ports_file = state_dir / "ports.json"
    ports = Ports(**json.loads(ports_file.read_text())) if ports_file.exists() else None
    stopped = []
    live = {name: r for name, r in records.items() if _alive(r)}
    for name in reversed(PROCESSES):
        if name in live:
            _signal_group(int(live[name]["pid"]), signal.SIGTERM)
            stopped.append(name)
    deadline = time.monotonic() + timeout
    pgids = [int(r["pid"]) for r in records.values()]
    for pid in pgids:
        child = _CHILDREN.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
        while _group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(pid):
            _LOGGER.warning("process group %d ignored SIGTERM for %.0fs; killing it", pid,
                            timeout)
            _signal_group(pid, signal.SIGKILL)
            if child is not None:
                child.wait(timeout=10)
    if ports is not None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            listening = [f"{n}={p}" for n, p in ports.as_dict().items() if _port_open(p)]
            if not listening:
                break
            time.sleep(0.2)
        else:
            raise FlinkError(f"Flink cluster stopped but port(s) still listen: "
                             f"{', '.join(listening)}")
    if state_dir.exists():
        for entry in state_dir.iterdir():
            if keep_logs and entry.name == "log":
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if not keep_logs:
            shutil.rmtree(state_dir, ignore_errors=True)
    return stopped


def status(state_dir: Optional[Path] = None) -> Dict[str, object]:
    """What runs from state_dir: each process alive or not, the ports, and Flink's /overview."""
    state_dir = Path(state_dir or default_state_dir()).expanduser().resolve()
    records = _records(state_dir)
    ports_file = state_dir / "ports.json"
    result: Dict[str, object] = {
        "state_dir": str(state_dir),
        "processes": {n: {"pid": r["pid"], "alive": _alive(r)} for n, r in records.items()}}
    if ports_file.exists():
        ports = Ports(**json.loads(ports_file.read_text()))
        result["ports"] = ports.as_dict()
        with contextlib.suppress(OSError, ValueError):
            result["overview"] = rest(ports, "/overview", timeout=2.0)
    return result


# -- before a run --------------------------------------------------------------------------------
def _arg(beam_args: Sequence[str], name: str) -> Optional[str]:
    for arg in beam_args:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def require_job_server(beam_args: Sequence[str], timeout: float = 3.0) -> None:
    """Fail at once, in one line naming Flink, when the args send Beam to a job server that does
    not answer. Without it Beam's PortableRunner waits --job_server_timeout (60 s) for the
    channel and then fails deep inside the component. No-op for other runners."""
    runner = (_arg(beam_args, "runner") or "").lower()
    endpoint = _arg(beam_args, "job_endpoint")
    if runner not in ("portablerunner", "flinkrunner") or not endpoint or endpoint == "embed":
        return
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host or "localhost", int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise FlinkError(f"Flink: Beam job server at {endpoint} does not answer ({reason}); "
                         "start it (make flink-up) or fix --job_endpoint")
