"""Upload and schedule the compiled pipeline on a Kubeflow Pipelines server (kfp.Client, API v2).

Both operations are idempotent: a version is named after the spec's content hash, so uploading
the same spec twice creates nothing new; a schedule with the same name is reported, not doubled.
Unreachable servers and bad cron expressions become one-line KubeflowError messages.
"""
from __future__ import annotations

import contextlib
import hashlib
import sys
from typing import Any, Dict, Optional

from ctpipe.components.basics import first_line
from ctpipe.pipeline.errors import KubeflowError

__all__ = ["KubeflowError", "connect", "normalise_cron", "schedule", "spec_version_name",
           "upload"]


def normalise_cron(expression: str) -> str:
    """KFP wants 6 fields (seconds first); accept the usual 5-field form too."""
    fields = expression.split()
    if len(fields) == 5:
        fields = ["0"] + fields
    if len(fields) != 6:
        raise KubeflowError(f"cron expression {expression!r} must have 5 or 6 fields "
                            "(e.g. '0 3 * * *' = every day at 03:00)")
    allowed = set("0123456789*/,-?LW#") | set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    for field in fields:
        if not field or not set(field.upper()) <= allowed:
            raise KubeflowError(f"cron expression {expression!r} has an invalid field {field!r}")
    return " ".join(fields)


def spec_version_name(package_path: str) -> str:
    with open(package_path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()[:12]
    return f"spec-{digest}"


def connect(host: str):
    import kfp

    try:
        with contextlib.redirect_stdout(sys.stderr):
            return kfp.Client(host=host)
    except Exception as error:  # noqa: BLE001 - urllib3/kfp raise many kinds; one line out
        reason = (first_line(error) or type(error).__name__)
        raise KubeflowError(f"Kubeflow Pipelines at {host} is unreachable: {reason[:200]}")


def _call(host: str, what: str, function, *args, **kwargs):
    try:
        with contextlib.redirect_stdout(sys.stderr):  # kfp prints links; stdout stays for --json
            return function(*args, **kwargs)
    except KubeflowError:
        raise
    except Exception as error:  # noqa: BLE001
        reason = (first_line(error) or type(error).__name__)
        raise KubeflowError(f"{what} failed on {host}: {reason[:200]}")


def _find_version(client, pipeline_id: str, version_name: str) -> Optional[Any]:
    response = client.list_pipeline_versions(pipeline_id=pipeline_id, page_size=200)
    for version in response.pipeline_versions or []:
        if version.display_name == version_name:
            return version
    return None


def upload(host: str, package_path: str, pipeline_name: str) -> Dict[str, Any]:
    """Create the pipeline, or add this spec as a new version of it."""
    from ctpipe.kubeflow.runner import load_documents

    try:
        load_documents(package_path)
    except Exception as error:  # noqa: BLE001 - OSError, JSON or YAML errors: one line out
        raise KubeflowError(f"pipeline spec {package_path} is not a readable compiled spec "
                            f"(YAML or JSON): {first_line(error, 200)}")
    client = connect(host)
    version_name = spec_version_name(package_path)
    pipeline_id = _call(host, "pipeline lookup", client.get_pipeline_id, pipeline_name)
    if pipeline_id is None:
        pipeline = _call(host, "pipeline upload", client.upload_pipeline,
                         pipeline_package_path=package_path, pipeline_name=pipeline_name,
                         description="ctpipe continuous training (TFX)")
        pipeline_id = pipeline.pipeline_id
    existing = _call(host, "version lookup", _find_version, client, pipeline_id, version_name)
    if existing is not None:
        return {"pipeline_id": pipeline_id, "version_id": existing.pipeline_version_id,
                "version_name": version_name, "created": False}
    version = _call(host, "version upload", client.upload_pipeline_version,
                    pipeline_package_path=package_path, pipeline_version_name=version_name,
                    pipeline_id=pipeline_id)
    return {"pipeline_id": pipeline_id, "version_id": version.pipeline_version_id,
            "version_name": version_name, "created": True}


def schedule(host: str, pipeline_name: str, cron: str, experiment: str,
             parameters: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A recurring run of the newest version; one run at a time, no catch-up storm."""
    cron = normalise_cron(cron)
    client = connect(host)
    pipeline_id = _call(host, "pipeline lookup", client.get_pipeline_id, pipeline_name)
    if pipeline_id is None:
        raise KubeflowError(f"pipeline {pipeline_name} is not on {host}: "
                            "run 'ctpipe kubeflow upload' first")
    versions = _call(host, "version lookup", client.list_pipeline_versions,
                     pipeline_id=pipeline_id, sort_by="created_at desc", page_size=1)
    if not versions.pipeline_versions:
        raise KubeflowError(f"pipeline {pipeline_name} on {host} has no version")
    version_id = versions.pipeline_versions[0].pipeline_version_id
    experiment_id = _call(host, "experiment", client.create_experiment, name=experiment) \
        .experiment_id
    job_name = f"{pipeline_name}-retrain"
    run = _call(host, "schedule", client.create_recurring_run, experiment_id=experiment_id,
                job_name=job_name, cron_expression=cron, pipeline_id=pipeline_id,
                version_id=version_id, params=parameters or {}, max_concurrency=1,
                no_catchup=True, enabled=True)
    return {"recurring_run_id": run.recurring_run_id, "experiment_id": experiment_id,
            "pipeline_id": pipeline_id, "version_id": version_id, "cron": cron}
