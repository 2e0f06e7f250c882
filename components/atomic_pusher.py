"""Atomic Pusher: a blessed model appears under <base>/<version> whole, or not at all.

Why: the stock Pusher copies file by file into <base>/<unix time> (tfx issue 4466) - TF Serving
polls the base path and can load a version whose variables are still being copied. Here the model
is copied into a hidden sibling directory (TF Serving ignores names that are not integers), checked,
and renamed into place in one step. Versions are small integers that only grow: one more than the
highest version ever published (a high-water file remembers versions that were later deleted).

Then the release manifest (components/release.py) names the new version as `canary` - stable is
unchanged, and the very first push becomes stable - after the server has loaded it when a server
address is configured (custom_config `serving_rest`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from typing import Any, Callable, Dict, List, Optional

import tensorflow as tf
from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from ctpipe.components.layout import versions_on_disk

INCOMING_PREFIX = ".incoming-"
IDENTICAL_PROPERTY = "identical_to_warm_start"  # read by pipeline/home/outcomes.py
# custom_config key: "pusher" (default) names the new version in the release manifest here;
# "runner": the local runner does, after its fresh-label step (pipeline/ops/fresh_labels.py).
LABELS_BY = "labels_by"
# custom_config keys for the fresh-label verdict the Pusher applies when it labels (Kubeflow):
# the config's `promotion` and `fresh_min_rows`.
PROMOTION_KEY, FRESH_MIN_ROWS_KEY = "promotion", "fresh_min_rows"
FRESH_LABELS_PROPERTY = "fresh_labels"  # the verdict, JSON, on the PushedModel
HIGH_WATER_FILE = ".ctpipe-high-water-version"

CopyTree = Callable[[str, str], None]


class PushError(RuntimeError):
    """The model could not be published; nothing was changed under the model base path."""


def _is_local(path: str) -> bool:
    return "://" not in path


def copy_tree(source: str, destination: str) -> None:
    if _is_local(source) and _is_local(destination):
        shutil.copytree(source, destination)
        return
    for directory, _, files in tf.io.gfile.walk(source):
        relative = os.path.relpath(directory, source)
        target_dir = os.path.normpath(os.path.join(destination, relative))
        tf.io.gfile.makedirs(target_dir)
        for name in files:
            tf.io.gfile.copy(os.path.join(directory, name), os.path.join(target_dir, name))


def _high_water(base: str) -> int:
    path = os.path.join(base, HIGH_WATER_FILE)
    if not tf.io.gfile.exists(path):
        return 0
    with tf.io.gfile.GFile(path) as handle:
        text = handle.read().strip()
    return int(text) if text.isdigit() else 0


def next_version(base: str) -> int:
    return max([_high_water(base), *versions_on_disk(base)], default=0) + 1


def remove_stale_incoming(base: str) -> None:
    """Left-overs of a push that was killed mid-copy; never visible to TF Serving."""
    if not tf.io.gfile.isdir(base):
        return
    for name in tf.io.gfile.listdir(base):
        if name.strip("/").startswith(INCOMING_PREFIX):
            tf.io.gfile.rmtree(os.path.join(base, name.strip("/")))


def _check_complete(model_dir: str) -> None:
    for required in ("saved_model.pb", os.path.join("variables", "variables.index")):
        if not tf.io.gfile.exists(os.path.join(model_dir, required)):
            raise PushError(f"model copy is incomplete: {required} missing")


def publish_atomically(model_dir: str, base: str, copy: CopyTree = copy_tree) -> int:
    """Copy model_dir to <base>/<next version> atomically; returns the version."""
    _check_complete(model_dir)
    tf.io.gfile.makedirs(base)
    remove_stale_incoming(base)
    version = next_version(base)
    incoming = os.path.join(base, f"{INCOMING_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
    try:
        copy(model_dir, incoming)
        _check_complete(incoming)
        target = os.path.join(base, str(version))
        if tf.io.gfile.exists(target):
            raise PushError(f"version {version} appeared during the push (concurrent pusher?)")
        if _is_local(base):
            os.rename(incoming, target)  # atomic on one POSIX filesystem
        else:
            tf.io.gfile.rename(incoming, target, overwrite=False)
    except BaseException:
        if tf.io.gfile.exists(incoming):
            tf.io.gfile.rmtree(incoming)
        raise
    with tf.io.gfile.GFile(os.path.join(base, HIGH_WATER_FILE), "w") as handle:
        handle.write(str(version))
    logging.info("published model version %d under %s", version, base)
    return version


class AtomicPusherExecutor(pusher_executor.Executor):
    """Pusher executor: the stock blessing check, then an atomic, integer-versioned publish."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model = artifact_utils.get_single_instance(
            input_dict[standard_component_specs.MODEL_KEY])
        if identical_to_warm_start(model.uri):
            # The candidate is its warm-start parent's weights (stable's, normally): pushing
            # it would serve the same model under a new version number.
            logging.info("candidate kept its warm-start weights: not pushed")
            self._MarkNotPushed(model_push)
            model_push.set_int_custom_property(IDENTICAL_PROPERTY, 1)
            return
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        base = destination.filesystem.base_directory
        version = publish_atomically(self.GetModelPath(input_dict), base)
        custom_config = _custom_config(exec_properties)
        judged: Dict[str, Any] = {}
        labels = {} if custom_config.get(LABELS_BY) == "runner" else \
            release_new_version(base, version, custom_config, read_lineage(model.uri), judged)
        self._MarkPushed(model_push, pushed_destination=os.path.join(base, str(version)),
                         pushed_version=str(version))
        if judged:
            model_push.set_string_custom_property(FRESH_LABELS_PROPERTY, json.dumps(judged))
        for label, labelled in labels.items():
            model_push.set_int_custom_property(f"release_{label}", labelled)


def read_lineage(model_uri: str) -> Dict[str, Any]:
    """The Trainer's lineage file (components/trainer.py `write_lineage`); {} when absent."""
    from ctpipe.components.layout import LINEAGE_FILE

    path = os.path.join(model_uri, LINEAGE_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


def identical_to_warm_start(model_uri: str) -> bool:
    """The Trainer's lineage says no checkpoint beat the warm-start weights (components/
    trainer.py `fit`), so the candidate is its parent's model."""
    lineage = read_lineage(model_uri)
    return bool(lineage.get("warm_start_uri")
                and (lineage.get("training") or {}).get("kept_warm_start_weights"))


def _custom_config(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
    value = exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "{}"
    return json.loads(value) if isinstance(value, str) else dict(value)


def release_new_version(base: str, version: int, custom_config: Dict[str, Any],
                        lineage: Optional[Dict[str, Any]] = None,
                        judged: Optional[Dict[str, Any]] = None) -> Dict[str, int]:
    """Name the published version in the release manifest beside the base path; returns the
    labels after the change. First, in the same locked change, the fresh-label verdict on the
    canary on trial (components/fresh_labels.py) from the DataGate's scores in the model's
    lineage, as the local runner's step does (pipeline/ops/fresh_labels.py); the verdict is
    copied into `judged`."""
    from ctpipe.components import release
    from ctpipe.components.fresh_labels import LINEAGE_KEY, settled

    fresh = (lineage or {}).get(LINEAGE_KEY) or {}
    promotion = custom_config.get(PROMOTION_KEY) or "manual"
    min_rows = int(custom_config.get(FRESH_MIN_ROWS_KEY) or 0)

    def change_(current):
        after = current
        if fresh.get("fresh_span_auc"):
            after, verdict = settled(current, fresh["fresh_span_auc"], fresh.get("span"),
                                     min_rows, promotion)
            if verdict is not None and judged is not None:
                judged.clear()
                judged.update(verdict)
        return release.after_push(after, version)

    serving_rest = custom_config.get("serving_rest") or ""
    waiter = release.rest_waiter(serving_rest) if serving_rest else None
    base = base.rstrip("/")
    change = release.apply(release.manifest_path(os.path.dirname(base)), os.path.basename(base),
                           base, change_, waiter)
    if judged:
        logging.info("%s (%s)", judged["reason"],
                     "applied" if judged["applied"] else "not applied: promotion " + promotion)
    if change.get("note"):
        logging.warning("%s", change["note"])
    logging.info("release manifest: %s -> %s", change["before"].labels, change["after"].labels)
    return change["after"].labels
