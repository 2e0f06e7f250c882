"""The cluster path as a whole (issue 19): the compiled KFP spec, run by tests/kfp_harness.py as
open-source KFP runs it (each step a subprocess of the installed wheel, as the image's uid
10001 when the tests run as root), with flink-local.toml's `kfp_beam_pipeline_args`: every
Beam step submits its work to Beam's job server, which runs it on the local Flink cluster.

One scheduled run on a first span (~3 min): it pushes, and Flink's REST API shows one FINISHED
job at parallelism 2 inside the ML Metadata window of each Beam step (CsvExampleGen,
StatisticsGen, Evaluator), none other. The cluster runs on free ports (the same args as
flink-local.toml, other port numbers) and is stopped at the end. Skips where the Flink cache
cannot be filled, except under CI (tests/test_flink_cluster.py).

What it cannot prove: on a real cluster the job server and the TaskManagers are other pods, and
the steps' files must live on storage every pod mounts (flink.toml's comments); here every
process shares one file system.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import tomllib

from ctpipe.pipeline.home import outcomes
from ctpipe.pipeline.run import flink_local

from tests.kfp_harness import COMPLETE, KfpHarness
from tests.support import REPO, deliver, world_readable_dir
from tests.test_flink_cluster import _fetch_or_skip

pytestmark = pytest.mark.e2e
BEAM_STEPS = ("CsvExampleGen", "StatisticsGen", "Evaluator")
FLINK_LOCAL = REPO / "kubeflow" / "environments" / "flink-local.toml"
# Each step takes under a minute here; a step still running after this has hung (seen once in
# CI: StatisticsGen's Flink job never returned). It fails with its threads' stacks and the
# cluster's logs instead of holding the suite for the harness's default 15 minutes.
STEP_DEADLINE_S = 300
LOG_TAIL_LINES = 40
JSTACK_THREADS = 12
# Event loops and pool threads waiting for work: in every dump, never the hang.
IDLE_THREAD_FRAMES = ("EpollEventLoop.run", "ThreadPoolExecutor.getTask")


def _beam_args_on(ports: flink_local.Ports) -> list:
    """flink-local.toml's kfp_beam_pipeline_args with this cluster's ports: the checked-in file,
    not flink_local.beam_args(), so a drift between the two fails here."""
    args = tomllib.loads(FLINK_LOCAL.read_text())["kfp_beam_pipeline_args"]
    default = flink_local.Ports()
    replaced = []
    for arg in args:
        for name in ("job", "artifact", "worker_pool"):
            arg = arg.replace(f"localhost:{getattr(default, name)}",
                              f"localhost:{getattr(ports, name)}")
        replaced.append(arg)
    return replaced


@pytest.fixture(scope="module")
def flink_kfp_run(wheel_venv):
    _fetch_or_skip()
    root = world_readable_dir("ctpipe-kfp-flink-")
    state_dir = root / "flink-state"
    cluster = flink_local.up(state_dir, flink_local.Ports.free(), timeout=180)
    try:
        beam_args = _beam_args_on(cluster.ports)
        (root / "ctpipe.toml").write_text(
            "min_steps = 20\nmax_steps = 40\nkfp_serving_rest = \"\"\n"
            f"kfp_beam_pipeline_args = {json.dumps(beam_args)}\n")
        spec = root / "ctpipe.yaml"
        compiled = subprocess.run(
            [str(wheel_venv / "bin" / "ctpipe"), "kubeflow", "compile", "--config",
             str(root / "ctpipe.toml"), "--output", str(spec)],
            cwd=root, capture_output=True, text=True)
        assert compiled.returncode == 0, compiled.stderr
        harness = KfpHarness(spec, root / "kfp", str(wheel_venv / "bin" / "python"),
                             mounts={"ctpipe-models": str(root / "models-pvc")},
                             timeout=STEP_DEADLINE_S)
        deliver(root / "data", 1, 1)
        run = harness.run({"data-root": str(root / "data")})
        jobs = flink_local.rest(cluster.ports, "/jobs/overview")["jobs"]
        if run.failed:
            run.logs["flink"] = _cluster_diagnostics(jobs, cluster.ports, state_dir)
        for job in jobs:
            vertices = flink_local.rest(cluster.ports, f"/jobs/{job['jid']}")["vertices"]
            job["parallelisms"] = sorted({vertex["parallelism"] for vertex in vertices})
            job["execution_mode"] = flink_local.rest(
                cluster.ports, f"/jobs/{job['jid']}/config")["execution-config"]["execution-mode"]
        decisions = {d.run_id: d for d in outcomes.history(harness.store, "ctpipe")}
        yield {"run": run, "jobs": jobs, "decision": decisions.get(run.run_id),
               "windows": _task_windows(harness.store, run.run_id), "beam_args": beam_args,
               "models": root / "models-pvc" / "big_tipper"}
    finally:
        flink_local.down(state_dir)
        shutil.rmtree(root, ignore_errors=True)


def _cluster_diagnostics(jobs: list, ports, state_dir) -> str:
    """What the cluster says when a step failed or hung (the cluster and its logs are removed
    when the fixture ends): each job's state and, for a job not FINISHED, its unfinished
    operators; the busy Beam threads of each JVM (jstack, as a hung Flink job is diagnosed);
    the last lines of every process's log. Each part on its own: one that fails (no jstack
    on the machine, say) says so and leaves the others."""
    lines: list = []
    for part in (_job_lines, _jstack_lines, _log_lines):
        try:
            lines += part(jobs, ports, state_dir)
        except Exception as error:  # noqa: BLE001 - the step's failure is the news
            lines.append(f"--- {part.__name__} failed: {error!r}")
    return "\n".join(lines)


def _job_lines(jobs: list, ports, state_dir) -> list:
    lines = []
    for job in jobs:
        lines.append(f"job {job['jid']} {job['name']}: {job['state']}, {job['duration']} ms")
        if job["state"] != "FINISHED":
            lines += [f"  {vertex['status']:<9} {vertex['name'][:150]}" for vertex in
                      flink_local.rest(ports, f"/jobs/{job['jid']}")["vertices"]
                      if vertex["status"] != "FINISHED"]
    return lines


def _jstack_lines(jobs: list, ports, state_dir) -> list:
    lines = []
    for name, record in sorted(flink_local._records(state_dir).items()):
        if name == "workerpool":
            continue
        dump = subprocess.run(["jstack", str(record["pid"])], capture_output=True, text=True,
                              timeout=60).stdout
        busy = [thread for thread in dump.split("\n\n") if "org.apache.beam" in thread
                and not any(idle in thread for idle in IDLE_THREAD_FRAMES)]
        lines += [f"--- jstack {name}: {len(busy)} threads in Beam code, not idle",
                  *(thread[:1200] for thread in busy[:JSTACK_THREADS])]
    return lines


def _log_lines(jobs: list, ports, state_dir) -> list:
    lines = []
    for log in sorted((state_dir / "log").glob("*")):
        tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        lines += [f"--- {log.name}", *(line[:300] for line in tail)]
    return lines


def _task_windows(store, run_id: str) -> dict:
    """{task: (create ms, last update ms)} of a run's container executions (the harness creates
    each before its step starts and publishes it when the step ends, as KFP's driver and
    launcher do)."""
    run = store.get_context_by_type_and_name("system.PipelineRun", run_id)
    return {e.custom_properties["task_name"].string_value:
            (e.create_time_since_epoch, e.last_update_time_since_epoch)
            for e in store.get_executions_by_context(run.id)
            if e.custom_properties["task_name"].string_value}


def test_the_steps_used_flink_local_toml_args_unchanged_but_for_ports(flink_kfp_run):
    args = flink_kfp_run["beam_args"]
    assert "--runner=PortableRunner" in args and "--environment_type=EXTERNAL" in args
    assert "--parallelism=2" in args
    assert "--execution_mode_for_batch=BATCH_FORCED" in args


def test_a_first_scheduled_run_on_flink_pushes(flink_kfp_run):
    run, decision = flink_kfp_run["run"], flink_kfp_run["decision"]
    assert not run.failed, "\n".join(f"=== {t}\n{log}" for t, log in run.logs.items()
                                      if t in run.failed or t == "flink")
    assert all(run.states[step] == COMPLETE for step in BEAM_STEPS + ("Trainer", "Pusher"))
    assert decision is not None and decision.outcome == "pushed", decision
    assert (flink_kfp_run["models"] / "1" / "saved_model.pb").is_file()


def test_each_beam_step_ran_as_one_finished_flink_job_at_parallelism_2(flink_kfp_run):
    jobs, windows = flink_kfp_run["jobs"], flink_kfp_run["windows"]
    assert jobs and {job["state"] for job in jobs} == {"FINISHED"}, jobs
    assert all(job["parallelisms"] == [2] for job in jobs), jobs
    # blocking exchanges: Beam's default PIPELINED can block a job forever (FLINK-10672)
    assert {job["execution_mode"] for job in jobs} == {"BATCH_FORCED"}, jobs
    claimed = []
    for step in BEAM_STEPS:
        start, end = windows[step]
        inside = [job["jid"] for job in jobs if start <= job["start-time"] <= end]
        assert len(inside) == 1, (step, inside, windows)
        claimed += inside
    assert sorted(claimed) == sorted(job["jid"] for job in jobs)  # no other step used Flink
