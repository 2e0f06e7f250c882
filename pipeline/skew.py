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

The request log file layout (which files are complete) is defined here, below the serving area,
so that both the writer (serving/request_log.py) and this reader use one definition.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import tempfile
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from ctpipe.pipeline.errors import BadInput

# Complete request log files: requests-<unix ms>-<seq>.tfrecord (writers keep partial files
# hidden, with a .tmp suffix, and rename them when closed).
LOG_PREFIX = "requests-"
LOG_SUFFIX = ".tfrecord"

EXIT_OK, EXIT_SKEW = 0, 3
# Fewer rows than this make the comparators' estimates noise: on the sample spans, 100 clean
# requests stay below every threshold (schema/schema.pbtxt), far fewer do not.
MIN_EXAMPLES = 100
# Predict inputs that carry serialized tf.Examples (serving_default, classification).
SERIALIZED_INPUTS = ("examples", "inputs")
COMPARATOR_PREFIX = "COMPARATOR_"
COMPARATOR_NAMES = {"L_INFTY": "infinity_norm",
                    "JENSEN_SHANNON_DIVERGENCE": "jensen_shannon_divergence",
                    "NORMALIZED_ABSOLUTE_DIFFERENCE": "normalized_abs_difference"}


# -- reading request logs --------------------------------------------------------------------

def complete_log_files(directory: str) -> List[str]:
    """The complete request log files in `directory`, oldest first."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(directory):
        return []
    names = [name.strip("/") for name in tf.io.gfile.listdir(directory)]
    return [os.path.join(directory, name) for name in sorted(names)
            if name.startswith(LOG_PREFIX) and name.endswith(LOG_SUFFIX)]


def read_logs(directory: str) -> Iterator[Any]:
    """Every PredictionLog of the complete files in `directory`, oldest file first. A file the
    writer's rotation deletes between listing and reading is skipped."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    for path in complete_log_files(directory):
        try:
            for record in tf.data.TFRecordDataset(path):
                yield prediction_log_pb2.PredictionLog.FromString(record.numpy())
        except tf.errors.NotFoundError:
            continue


# -- requests -> tf.Examples -----------------------------------------------------------------

def _raw_kinds() -> Dict[str, str]:
    """Raw feature name -> 'float' | 'int' | 'string' | 'int_numeric' (an integer column the
    serving_raw signature takes as float32: trip_seconds)."""
    from ctpipe.components import features as F

    kinds = {name: ("int_numeric" if dtype.startswith("int") else "float")
             for name, dtype in F.NUMERIC_FEATURES.items()}
    kinds.update({name: "int" for name in F.CATEGORICAL_INT_FEATURES})
    kinds.update({name: "string" for name in F.CATEGORICAL_STRING_FEATURES})
    return kinds


def _is_missing(kind: str, value: Any) -> bool:
    from ctpipe.components import features as F

    if kind in ("float", "int_numeric"):
        return value is None or math.isnan(float(value))
    if kind == "int":
        return int(value) == F.MISSING_INT
    return value in (F.MISSING_STRING, F.MISSING_STRING.encode())


def example_from_values(values: Dict[str, Any]):
    """One raw row (feature -> scalar) as the tf.Example CsvExampleGen would have written:
    missing values absent, integer columns as int64."""
    import tensorflow as tf

    kinds = _raw_kinds()
    example = tf.train.Example()
    for name, value in values.items():
        kind = kinds.get(name)
        if kind is None or _is_missing(kind, value):
            continue
        feature = example.features.feature[name]
        if kind == "float":
            feature.float_list.value.append(float(value))
        elif kind == "int_numeric":
            feature.int64_list.value.append(int(round(float(value))))
        elif kind == "int":
            feature.int64_list.value.append(int(value))
        else:
            feature.bytes_list.value.append(value if isinstance(value, bytes)
                                            else str(value).encode())
    return example


def clean_example(example):
    """A served tf.Example with the missing-value conventions removed (NaN, -1 codes, empty
    strings of the known features): the model reads those as missing, so statistics must too."""
    kinds = _raw_kinds()
    features = example.features.feature
    for name in [n for n in features if n in kinds]:
        feature = features[name]
        which = feature.WhichOneof("kind")
        values = list(getattr(feature, which).value) if which else []
        kept = [v for v in values if not _is_missing(kinds[name], v)]
        if not kept:
            del features[name]
        elif len(kept) != len(values):
            del getattr(feature, which).value[:]
            getattr(feature, which).value.extend(kept)
    return example


def _rows_of_raw(inputs) -> Optional[List[Dict[str, Any]]]:
    import tensorflow as tf

    kinds = _raw_kinds()
    arrays = {name: tf.make_ndarray(proto) for name, proto in inputs.items() if name in kinds}
    if not arrays:
        return None
    columns = {name: array.reshape(array.shape[0] if array.ndim else 1, -1)
               for name, array in arrays.items()}
    sizes = {column.shape[0] for column in columns.values()}
    if len(sizes) != 1:
        return None  # inconsistent batch: the server rejected it too
    rows = sizes.pop()
    return [{name: column[i][0] for name, column in columns.items() if column.shape[1]}
            for i in range(rows)]


def _examples_of_input(request_input) -> List[Any]:
    """tensorflow.serving.Input: example_list, or example_list_with_context (context merged
    into every example, as the server does)."""
    import tensorflow as tf

    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        copies = []
        for example in request_input.example_list.examples:
            copy = tf.train.Example()
            copy.CopyFrom(example)
            copies.append(clean_example(copy))
        return copies
    if kind == "example_list_with_context":
        listed = request_input.example_list_with_context
        merged = []
        for example in listed.examples:
            combined = tf.train.Example()
            combined.CopyFrom(listed.context)
            combined.MergeFrom(example)
            merged.append(clean_example(combined))
        return merged
    return []


def examples_of_log(log) -> Tuple[str, Optional[List[Any]]]:
    """(signature name, its rows as tf.Examples); rows None for a record of no known form."""
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    kind = log.WhichOneof("log_type")
    if kind not in ("predict_log", "classify_log", "regress_log", "multi_inference_log"):
        return kind or "unknown", None
    request = getattr(log, kind).request
    if kind == "multi_inference_log":
        tasks = request.tasks
        signature = tasks[0].model_spec.signature_name if tasks else ""
    else:
        signature = request.model_spec.signature_name
    signature = signature or log.log_metadata.model_spec.signature_name or "serving_default"
    if kind != "predict_log":
        return signature, _examples_of_input(request.input) or None
    for alias in SERIALIZED_INPUTS:
        proto = request.inputs.get(alias)
        if proto is not None and proto.dtype == types_pb2.DT_STRING:
            serialized = tf.make_ndarray(proto).reshape(-1)
            try:
                return signature, [clean_example(tf.train.Example.FromString(bytes(s)))
                                   for s in serialized]
            except Exception:  # noqa: BLE001 - not tf.Examples after all (DecodeError)
                return signature, None
    rows = _rows_of_raw(request.inputs)
    if rows is None:
        return signature, None
    return signature, [example_from_values(row) for row in rows]


@dataclasses.dataclass
class ServingData:
    examples: List[Any]
    requests: int  # log records whose rows were used
    signatures: Dict[str, int]  # records per signature
    skipped: int  # records of no known form
    files: int


def serving_data(requests_dir: str) -> ServingData:
    """The rows of every usable logged request. BadInput when there is nothing to compare."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(requests_dir):
        raise BadInput(f"no request log directory {requests_dir}")
    files = complete_log_files(requests_dir)
    if not files:
        raise BadInput(f"no complete request log file ({LOG_PREFIX}*{LOG_SUFFIX}) "
                       f"in {requests_dir}")
    examples: List[Any] = []
    signatures: Dict[str, int] = collections.Counter()
    skipped = used = 0
    try:
        for log in read_logs(requests_dir):
            signature, rows = examples_of_log(log)
            if not rows:
                skipped += 1
                continue
            used += 1
            signatures[signature] += 1
            examples.extend(rows)
    except tf.errors.OpError as error:
        raise BadInput(f"request log in {requests_dir} is unreadable: "
                       f"{str(error).splitlines()[0][:200]}")
    except Exception as error:  # noqa: BLE001 - a record that is not a PredictionLog
        raise BadInput(f"request log in {requests_dir} holds a record that is not a "
                       f"PredictionLog: {type(error).__name__}")
    if not examples:
        raise BadInput(f"no request of a known signature in {requests_dir} "
                       f"({skipped} record(s) of none: expected serving_raw features or "
                       "serialized tf.Examples)")
    return ServingData(examples=examples, requests=used, signatures=dict(signatures),
                       skipped=skipped, files=len(files))


def statistics_of_examples(examples: Iterable[Any]):
    """TFDV statistics of tf.Examples (in a scratch TFRecord file that is removed after)."""
    import tensorflow as tf
    import tensorflow_data_validation as tfdv

    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "requests.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for example in examples:
                writer.write(example.SerializeToString())
        return tfdv.generate_statistics_from_tfrecord(
            path, output_path=os.path.join(scratch, "stats.tfrecord"))


def statistics_of_tfrecords(pattern: str):
    """TFDV statistics of TFRecord files of tf.Examples (.gz ones are decompressed)."""
    import tensorflow_data_validation as tfdv

    with tempfile.TemporaryDirectory() as scratch:
        return tfdv.generate_statistics_from_tfrecord(
            pattern, output_path=os.path.join(scratch, "stats.tfrecord"))


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
    (the ML Metadata walk `ctpipe lineage` makes: pipeline/lineage.py ModelIndex)."""
    from ctpipe.pipeline.lineage import ModelIndex, lineage_file

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

    from ctpipe.pipeline.ledger_store import latest_ledger

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
    from ctpipe.pipeline.outcomes import open_store, sqlite_connection

    serving = serving_data(requests_dir)
    _check_enough(serving, min_examples)  # before any heavy work
    if not os.path.exists(config.metadata_path):
        raise BadInput(f"no pipeline home at {config.home} (no "
                       f"{os.path.basename(config.metadata_path)})")
    version, version_source = production_version(config.home, config.model_name,
                                                  config.serving_model_dir)
    store = open_store(sqlite_connection(config.metadata_path))
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


# -- the command -------------------------------------------------------------------------------

def register(commands) -> None:
    from ctpipe.pipeline.command_line import add_config_flags

    skew = commands.add_parser(
        "skew", help="logged requests vs the production model's training data (exit 3: skew)")
    skew.add_argument("--home", required=True, help="pipeline home (ML Metadata, serving)")
    skew.add_argument("--requests", required=True,
                      help="request log directory (ctpipe serve --request-log-dir)")
    skew.add_argument("--min-examples", type=int, default=MIN_EXAMPLES,
                      help=f"fewest logged rows to compare (default {MIN_EXAMPLES})")
    add_config_flags(skew)
    skew.set_defaults(handler=cmd_skew)


def cmd_skew(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.command_line import load_config

    if args.min_examples < 1:
        raise BadInput(f"--min-examples must be >= 1, got {args.min_examples}")
    config = load_config(args, home=args.home)
    report = skew_report(config, args.requests, args.min_examples)
    record_result(config.home, report)
    print(json.dumps(report) if args.json else format_report(report), flush=True)
    return EXIT_SKEW if report["drifted"] else EXIT_OK


def record_result(home: str, report: Dict[str, Any]) -> None:
    """<home>/skew/latest.json (replaced whole) and history.jsonl (one line per check): what
    the pipeline metrics publish as ctpipe_skew_drifted / ctpipe_skew_alarms_total."""
    import time

    folder = os.path.join(home, "skew")
    os.makedirs(folder, exist_ok=True)
    result = {"drifted": bool(report["drifted"]), "at": time.time(),
              "anomalies": report["anomalies"]}
    temporary = os.path.join(folder, f".latest.json.{os.getpid()}.tmp")
    with open(temporary, "w") as handle:
        json.dump(result, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, os.path.join(folder, "latest.json"))
    with open(os.path.join(folder, "history.jsonl"), "a") as handle:
        handle.write(json.dumps(result) + "\n")
