"""Training/serving skew: do the requests the server logged look like the data the production
model was trained on?

    ctpipe skew --home H --requests D [--json] [--min-examples N]

exits 0 when every skew comparator holds, 3 when serving data has drifted (each anomaly listed:
feature, comparator, value vs threshold), 2 on bad input (no such directory, no complete log
file, no request of a known signature, too few rows, no production model or training data).

Where the numbers come from:
  serving   the complete PredictionLog files in D (serving/request_log.py writes them; a TF
            Serving request log or warmup file works too). serving_raw requests carry one tensor
            per raw feature (components/features.py; NaN / -1 / "" mean missing); serving_default
            ("examples"), classification ("inputs") and Classify / Regress / MultiInference
            requests carry tf.Examples. Every row becomes a tf.Example in which a missing value is
            absent - as CsvExampleGen writes training data - never a NaN, -1 or "" value; then
            TFDV statistics.
  training  the production model: the version labelled `stable` in <home>/serving/models.config,
            else the highest version under <home>/serving/<model>/. In ML Metadata the Pusher
            execution whose PushedModel has that pushed_version names the Model it pushed; the
            Trainer execution that made the Model names its input examples - the training window
            (DataGate's training_examples, one link per span file). Statistics are recomputed
            over the window's train split: exactly the rows the model learnt from. Why not the
            spans' own FeatureStats.pb: statistics of a union cannot be merged exactly from the
            parts (histogram boundaries and quantiles differ per span), and the newest span alone
            ignores the rest of the window. When retention has removed the window's files, the
            newest training span's train-split statistics still on disk are used, and the report
            says so (`training_statistics.source`).
  rules     the schema's skew_comparator per feature - L-infinity (infinity_norm) for categorical
            features, approximate Jensen-Shannon divergence for numeric ones - through
            tfdv.validate_statistics(training, schema, serving_statistics=serving). The data gate
            never passes serving statistics, so skew comparators do not change its decisions.

Decoding the logged requests: pipeline/observe/skew_decode.py; the log file layout:
components/request_log_format.py (one definition for writer and reader).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from ctpipe.components.basics import atomic_write
from ctpipe.pipeline.errors import BadInput
from ctpipe.pipeline.home import Home
from ctpipe.pipeline.observe.skew_decode import (
    ServingData,
    serving_data,
    statistics_of_examples,
    statistics_of_tfrecords,
)

# Fewer rows than this make the comparators' estimates noise: on the sample spans, 100 clean
# requests stay below every threshold (schema/schema.pbtxt), far fewer do not.
MIN_EXAMPLES = 100
COMPARATOR_PREFIX = "COMPARATOR_"
COMPARATOR_NAMES = {"L_INFTY": "infinity_norm",
                    "JENSEN_SHANNON_DIVERGENCE": "jensen_shannon_divergence",
                    "NORMALIZED_ABSOLUTE_DIFFERENCE": "normalized_abs_difference"}


# -- the comparison ----------------------------------------------------------------------------

def skew_features(schema) -> Dict[str, str]:
    """Feature -> its skew comparator kind, from the schema."""
    found = {}
    for feature in schema.feature:
        if feature.HasField("skew_comparator"):
            for kind in ("infinity_norm", "jensen_shannon_divergence"):
                if feature.skew_comparator.HasField(kind):
                    found[feature.name] = kind
    return found


def skew_findings(training_statistics, serving_statistics, schema
                  ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(anomalies, measurements) of the schema's skew comparators, training vs serving. Every
    measurement: feature, comparator, value, threshold; an anomaly adds TFDV's description."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    if not skew_features(schema):
        raise BadInput("the schema has no skew_comparator: nothing to compare")
    result = tfdv.validate_statistics(training_statistics, schema,
                                      serving_statistics=serving_statistics)
    measurements = []
    for info in result.drift_skew_info:
        feature = ".".join(info.path.step)
        for measurement in info.skew_measurements:
            kind = anomalies_pb2.DriftSkewInfo.Measurement.Type.Name(measurement.type)
            measurements.append({"feature": feature,
                                 "comparator": COMPARATOR_NAMES.get(kind, kind.lower()),
                                 "value": round(float(measurement.value), 6),
                                 "threshold": round(float(measurement.threshold), 6)})
    anomalies = []
    for feature, info in sorted(result.anomaly_info.items()):
        for reason in info.reason:
            if not anomalies_pb2.AnomalyInfo.Type.Name(reason.type).startswith(
                    COMPARATOR_PREFIX):
                continue  # schema anomalies of the training data are the gate's business
            measured = [m for m in measurements if m["feature"] == feature
                        and m["value"] > m["threshold"]] or [
                {"feature": feature, "comparator": "", "value": None, "threshold": None}]
            for measurement in measured:
                anomalies.append({**measurement, "description": reason.description})
    return anomalies, sorted(measurements, key=lambda m: m["feature"])


# -- the production model and its training data ------------------------------------------------

def production_version(home: str, model_name: str, model_dir: str) -> Tuple[int, str]:
    """(version, how it was chosen): the `stable` label of the release manifest, else the
    highest version on disk."""
    from ctpipe.components import release
    from ctpipe.components.layout import versions_on_disk

    manifest = release.manifest_path(os.path.join(home, "serving"))
    try:
        entries = release.read(manifest)
    except release.ReleaseError as error:
        raise BadInput(f"{manifest}: {error}")
    for entry in entries:
        if entry.model_name == model_name and entry.stable is not None:
            return entry.stable, f"{release.STABLE} in {manifest}"
    versions = versions_on_disk(model_dir)
    if not versions:
        raise BadInput(f"no production model: no version under {model_dir}")
    return versions[-1], f"highest version under {model_dir}"


@dataclasses.dataclass
class TrainingData:
    model_uri: str
    spans: List[int]
    examples_uri: Optional[str]  # the Trainer's input (the window), if recorded


def training_data(store, version: int) -> TrainingData:
    """The Model pushed as `version`, its training spans and the Trainer's input examples
    (the ML Metadata walk `ctpipe lineage` makes: pipeline/home/lineage.py ModelIndex)."""
    from ctpipe.pipeline.home.lineage import ModelIndex, lineage_file

    index = ModelIndex(store)
    model = index.model_of_version.get(version)
    if model is None:
        raise BadInput(f"ML Metadata has no push of version {version} (not pushed by this "
                       "pipeline home?)")
    trainer = index.producer_of(model.id)
    examples = index.input_of(trainer, "examples") if trainer else None
    return TrainingData(model_uri=model.uri,
                        spans=list(lineage_file(model.uri).get("training_spans", [])),
                        examples_uri=examples.uri if examples is not None else None)


def _readable(path: str) -> bool:
    import tensorflow as tf

    return os.path.exists(path) if "://" not in path else tf.io.gfile.exists(path)


def training_statistics(store, pipeline_name: str, data: TrainingData
                        ) -> Tuple[Any, Dict[str, Any]]:
    """(statistics, where they came from): recomputed over the window's train split, else the
    newest training span's train-split statistics still on disk (module docstring)."""
    import tensorflow as tf
    import tensorflow_data_validation as tfdv

    from ctpipe.pipeline.home.ledger_store import latest_ledger

    if data.examples_uri:
        pattern = os.path.join(data.examples_uri, "Split-train", "*")
        files = tf.io.gfile.glob(pattern)
        if files and all(_readable(path) for path in files):
            return statistics_of_tfrecords(pattern), {
                "source": "recomputed over the training window's train split",
                "uri": data.examples_uri, "spans": data.spans}
    ledger, _ = latest_ledger(store, pipeline_name)
    for span in sorted(data.spans, reverse=True):
        entry = ledger.entry(span) or {}
        uri = entry.get("statistics_uri")
        path = os.path.join(uri, "Split-train", "FeatureStats.pb") if uri else ""
        if path and _readable(path):
            return tfdv.load_stats_binary(path), {
                "source": f"span {span}'s train-split statistics (the window's files were "
                          "removed by retention)", "uri": uri, "spans": [span]}
    raise BadInput("the production model's training data is no longer on disk "
                   f"(window {data.examples_uri}, spans {data.spans})")


# -- the report ------------------------------------------------------------------------------

def _check_enough(serving: ServingData, min_examples: int) -> None:
    if len(serving.examples) < min_examples:
        raise BadInput(f"only {len(serving.examples)} logged row(s) in {serving.files} file(s); "
                       f"at least {min_examples} are needed for a meaningful comparison "
                       "(--min-examples)")


def compare(training_stats, serving: ServingData, schema,
            min_examples: int = MIN_EXAMPLES) -> Dict[str, Any]:
    """The skew part of the report, from explicit inputs (training statistics, logged requests,
    schema)."""
    _check_enough(serving, min_examples)
    anomalies, measurements = skew_findings(
        training_stats, statistics_of_examples(serving.examples), schema)
    return {"drifted": bool(anomalies), "anomalies": anomalies, "measurements": measurements,
            "requests": serving.requests, "examples": len(serving.examples),
            "signatures": serving.signatures, "skipped_records": serving.skipped,
            "files": serving.files}


def skew_report(config, requests_dir: str, min_examples: int = MIN_EXAMPLES) -> Dict[str, Any]:
    """Logged requests vs the production model's training data, for a PipelineConfig home:
    {"drifted", "anomalies", "measurements", "requests", "examples", "signatures",
     "production_version", "version_source", "training_spans", "training_statistics"}."""
    from ctpipe.components.curated_schema import load_contract
    from ctpipe.pipeline.home.store import open_store, sqlite_connection

    serving = serving_data(requests_dir)
    _check_enough(serving, min_examples)  # before any heavy work
    if not os.path.exists(Home.of(config).metadata_path):
        raise BadInput(f"no pipeline home at {config.home} (no "
                       f"{os.path.basename(Home.of(config).metadata_path)})")
    version, version_source = production_version(config.home, config.model_name,
                                                  Home.of(config).model_dir)
    store = open_store(sqlite_connection(Home.of(config).metadata_path))
    data = training_data(store, version)
    statistics, source = training_statistics(store, config.pipeline_name, data)
    report = compare(statistics, serving, load_contract(config.schema_path), min_examples)
    return {**report, "production_version": version, "version_source": version_source,
            "training_spans": data.spans, "training_statistics": source,
            "requests_dir": os.path.abspath(requests_dir)}


def format_report(report: Dict[str, Any]) -> str:
    """The report for a person: what was compared, then one line per anomaly."""
    signatures = ", ".join(f"{name} {count}" for name, count in
                           sorted(report["signatures"].items()))
    spans = report["training_spans"]
    lines = [f"production version {report['production_version']} "
             f"(trained on span{'s' if len(spans) != 1 else ''} "
             f"{', '.join(map(str, spans)) or '?'}; "
             f"training statistics: {report['training_statistics']['source']})",
             f"{report['requests']} logged request(s), {report['examples']} row(s) "
             f"({signatures})" + (f"; {report['skipped_records']} record(s) of no known "
                                  "signature skipped" if report["skipped_records"] else "")]
    if not report["drifted"]:
        checked = ", ".join(f"{m['feature']} {m['value']:.3g} <= {m['threshold']:g}"
                            for m in report["measurements"])
        lines.append(f"no skew: every skew comparator holds ({checked})")
        return "\n".join(lines)
    count = len(report["anomalies"])
    lines.append(f"serving data has drifted from the training data: {count} "
                 f"anomal{'y' if count == 1 else 'ies'}")
    for anomaly in report["anomalies"]:
        if anomaly["value"] is None:
            lines.append(f"  {anomaly['feature']}: {anomaly['description']}")
        else:
            lines.append(f"  {anomaly['feature']}: {anomaly['comparator']} "
                         f"{anomaly['value']:.4g} > threshold {anomaly['threshold']:g}")
    return "\n".join(lines)


def record_result(home: str, report: Dict[str, Any]) -> None:
    """<home>/skew/latest.json (replaced whole) and history.jsonl (one line per check): what
    the pipeline metrics publish as ctpipe_skew_drifted / ctpipe_skew_alarms_total."""
    import time

    paths = Home(home)
    result = {"drifted": bool(report["drifted"]), "at": time.time(),
              "anomalies": report["anomalies"]}
    atomic_write(paths.skew_latest, json.dumps(result))
    with open(paths.skew_history, "a") as handle:
        handle.write(json.dumps(result) + "\n")
