"""The local Flink cluster (pipeline/run/flink_local.py): up on free ports, a real Beam job on it,
a stopped job server failing at once, and nothing of ours left after down().

The cluster is fetched once into the user cache (~400 MB; PyPI and Maven). Where that cannot be
done the tests skip, except under CI, where they fail: CI must prove the Flink path.
"""
from __future__ import annotations

import os
import re
import signal
import time
import uuid

import pytest

from ctpipe.pipeline.run import flink_local

from tests.support import temp_entries

OURS = re.compile(r"flink|beam|blob|jobserver|artifact", re.IGNORECASE)


def _fetch_or_skip() -> None:
    try:
        flink_local.ensure_cached()
    except (flink_local.FlinkError, OSError) as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Flink tests, but the cache could not be filled: {error}")
        pytest.skip(f"the Flink cache could not be filled (PyPI/Maven unreachable?): {error}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    _fetch_or_skip()
    temp_before = temp_entries()
    state_dir = tmp_path_factory.mktemp("flink") / "state"
    cluster = flink_local.up(state_dir, flink_local.Ports.free(), timeout=180)
    records = flink_local._records(state_dir)
    try:
        yield cluster, records, temp_before
    finally:
        flink_local.down(state_dir)  # a no-op when test_down already stopped it


def _listening(port: int) -> set:
    """Local addresses listening on port (from /proc/net/tcp{,6}), e.g. {'127.0.0.1'}."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    if width == 8:
                        found.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
                    elif address.endswith("0100007F") or address == "0" * 24 + "01000000":
                        found.add("127.0.0.1")  # ::ffff:127.0.0.1 or ::1
                    else:
                        found.add("::" if set(address) == {"0"} else address)
    return found


def test_up_gives_two_slots_on_loopback_and_is_idempotent(cluster):
    running, records, _ = cluster
    overview = flink_local.rest(running.ports, "/overview")
    assert overview["taskmanagers"] == 1 and overview["slots-total"] == 2
    assert overview["flink-version"] == flink_local.FLINK_VERSION
    assert set(records) == set(flink_local.PROCESSES)
    again = flink_local.up(running.state_dir, running.ports)
    assert not again.started and flink_local._records(running.state_dir) == records
    ports = running.ports
    # Beam's job server binds its job and artifact ports on every interface whatever
    # --job-host says (Beam's ServerFactory); every other port is loopback only.
    for port in (ports.rest, ports.jobmanager_rpc, ports.expansion, ports.worker_pool):
        assert _listening(port) == {"127.0.0.1"}, port


def test_a_beam_job_finishes_on_flink_with_parallelism_2(cluster):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to

    running, _, _ = cluster
    name = f"ctpipe-test-{uuid.uuid4().hex[:8]}"
    options = PipelineOptions(running.beam_args() + [f"--job_name={name}"])
    # Only callables the SDK workers can import: a lambda here would be pickled by reference to
    # `tests.test_flink_cluster`, which the workers cannot import (AttributeError at unpickling;
    # the DirectRunner, in this process, would not notice).
    with beam.Pipeline(options=options) as pipeline:
        sums = (pipeline | beam.Create([(x % 3, x) for x in range(100)])
                | beam.CombinePerKey(sum))
        assert_that(sums, equal_to([(0, 1683), (1, 1617), (2, 1650)]))
    jobs = [job for job in flink_local.rest(running.ports, "/jobs/overview")["jobs"]
            if job["name"].startswith(name)]
    assert [job["state"] for job in jobs] == ["FINISHED"]
    vertices = flink_local.rest(running.ports, f"/jobs/{jobs[0]['jid']}")["vertices"]
    assert vertices and {vertex["parallelism"] for vertex in vertices} == {2}
    # Blocking exchanges (FLINK-10672), as Flink ran the job, not only as we asked
    config = flink_local.rest(running.ports, f"/jobs/{jobs[0]['jid']}/config")
    assert config["execution-config"]["execution-mode"] == "BATCH_FORCED"


def test_a_stopped_job_server_fails_at_once_naming_flink(cluster):
    running, records, _ = cluster
    args = running.beam_args()
    flink_local.require_job_server(args)  # answering: no error
    os.killpg(int(records["jobserver"]["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + 30
    while flink_local._port_open(running.ports.job) and time.monotonic() < deadline:
        time.sleep(0.2)
    started = time.monotonic()
    with pytest.raises(flink_local.FlinkError, match=r"^Flink: Beam job server at localhost:\d+ "
                                                     r"does not answer") as error:
        flink_local.require_job_server(args)
    assert time.monotonic() - started < 2 and "\n" not in str(error.value)
    flink_local.require_job_server(["--runner=DirectRunner"])  # other runners: no probe


def test_down_stops_every_process_and_port_and_leaves_no_folder(cluster):
    running, records, temp_before = cluster
    flink_local.down(running.state_dir)
    for name, record in records.items():
        assert not flink_local._alive(record), name
        assert not os.path.exists(f"/proc/{record['pid']}") or \
            flink_local._start_time(int(record["pid"])) is None, name
    for name, port in running.ports.as_dict().items():
        assert not flink_local._port_open(port), name
    assert not running.state_dir.exists()
    assert {entry for entry in temp_entries() - temp_before if OURS.search(entry)} == set()
    assert flink_local.down(running.state_dir) == []  # idempotent
