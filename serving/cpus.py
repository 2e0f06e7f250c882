"""How many CPUs this server may run on: the one count its thread defaults are sized by.

TF Serving sizes its defaults by `port::NumSchedulableCPUs()` (the process's affinity mask: a
pod's cpuset, taskset), not by the machine's CPU count: gRPC handler threads, REST threads
(`--rest_api_num_threads`: 4 x, model_servers/main.cc) and batch threads (`num_batch_threads`:
`port::MaxParallelism()`, BasicBatchScheduler::Options). On a 64-CPU node a pod pinned to 2
CPUs (a cpuset: Kubernetes' static CPU manager, taskset) gets threads for 2; a CPU limit
alone (a CFS quota) narrows no affinity and is not counted, here as in TF Serving."""
from __future__ import annotations

import os


def schedulable_cpus() -> int:
    """The CPUs this process may run on (its affinity, as NumSchedulableCPUs reads it); the
    machine's count where affinity is unknown."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1
