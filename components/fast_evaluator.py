"""The Evaluator's executor: TFX's, with an in-process path for the DirectRunner.

Why: TFMA computes every metric per example in Python combiners (on this machine ~600 rows/s,
bound by `metric_util.to_label_prediction_example_weight` and the calibration histogram), and a
Beam pipeline costs seconds of start-up on a 200-row span. Our metrics are six plain numbers per
slice and model (ExampleCount, AUC, BinaryAccuracy, Calibration, MeanLabel, MeanPrediction), so
on one machine the candidate and the baseline score the eval split in batches through their
serving signatures and numpy computes the metrics. TFMA's own code then turns them into its
protos, checks the thresholds (metrics_validator.validate_metrics, CombineValidations) and the
files are written where and as TFMA writes them, so tfma.load_eval_result /
load_validation_result, the blessing and everything that reads them are unchanged.

When Beam runs elsewhere (Flink, Dataflow: a `--runner` other than the DirectRunner), or the
eval config asks for anything this path does not compute (other metrics, metric options,
example weights, feature-value or cross slices, more than one model besides a baseline), TFX's
executor runs TFMA on Beam as before.

Differences from TFMA, on purpose:
- AUC is the exact area (Mann-Whitney, ties counted half: components/label_check.auc), not
  TFMA's 10,000-bucket approximation; the two differ in the 4th decimal
  (tests/test_fast_evaluator.py bounds it).
- With one class in a slice TFMA reports AUC 0.0, and so does this path (undefined really).
- Plots and attributions files hold one empty entry per slice, as TFMA writes them for this
  config (it configures no plot metrics).
"""
from __future__ import annotations

import itertools
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.evaluators import metrics_validator
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.proto import metrics_for_slice_pb2
from tensorflow_model_analysis.writers import eval_config_writer
from tensorflow_model_analysis.writers import metrics_plots_and_validations_writer as tfma_writer
from tfx import types
from tfx.components.evaluator import constants
from tfx.components.evaluator import executor as tfx_evaluator
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, json_utils, path_utils, proto_utils

from ctpipe.components.label_check import auc, serving_signature

# TFMA metric class -> the key it reports; what this path computes.
SUPPORTED_METRICS = {"ExampleCount": "example_count", "AUC": "auc",
                     "BinaryAccuracy": "binary_accuracy", "Calibration": "calibration",
                     "MeanLabel": "mean_label", "MeanPrediction": "mean_prediction"}
SCORE_BATCH = 4096
DIRECT_RUNNERS = ("", "directrunner", "direct")


def runs_in_process(beam_pipeline_args: Sequence[str]) -> bool:
    """True when Beam would run on this machine anyway (the DirectRunner, either mode). The
    runner is read as Beam reads it (`--runner=X` and `--runner X` alike)."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    runner = PipelineOptions(list(beam_pipeline_args or [])).view_as(StandardOptions).runner
    return (runner or "").lower() in DIRECT_RUNNERS


def unsupported(eval_config: tfma.EvalConfig,
                exec_properties: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """Why this eval config (or the component's properties) needs TFMA; None: this path
    computes all of it exactly as TFMA would."""
    exec_properties = exec_properties or {}
    if exec_properties.get(standard_component_specs.MODULE_FILE_KEY) or exec_properties.get(
            standard_component_specs.MODULE_PATH_KEY):
        return "a module file (custom extractors or model loading)"
    if len(eval_config.model_specs) > 2 or eval_config.cross_slicing_specs:
        return "more than two models or cross slices"
    if not eval_config.slicing_specs:
        return "no slicing spec (TFMA then adds the overall slice)"
    if eval_config.options.ByteSize():
        return "eval options (minimum slice size, confidence intervals, ...)"
    for spec in eval_config.model_specs:
        if spec.example_weight_key or spec.example_weight_keys or not spec.label_key \
                or not spec.prediction_key or spec.signature_name not in ("", "serving_default") \
                or spec.model_type or spec.preprocessing_function_names or spec.label_keys \
                or spec.prediction_keys:
            return f"model spec {spec.name!r} needs TFMA"
    for spec in eval_config.slicing_specs:
        if spec.feature_values or spec.slice_keys_sql:
            return "a slicing spec with feature values or SQL"
    for metrics_spec in eval_config.metrics_specs:
        if metrics_spec.binarize.ByteSize() or metrics_spec.aggregate.ByteSize() \
                or metrics_spec.query_key or metrics_spec.example_weights.ByteSize() \
                or metrics_spec.output_names or metrics_spec.thresholds \
                or metrics_spec.per_slice_thresholds or metrics_spec.cross_slice_thresholds:
            return "binarized, aggregated, query, weighted or per-output metrics"
        if metrics_spec.model_names and set(metrics_spec.model_names) != {
                s.name for s in eval_config.model_specs}:
            return "metrics for some of the models only"
        for metric in metrics_spec.metrics:
            if metric.class_name not in SUPPORTED_METRICS or metric.config or metric.module \
                    or metric.cross_slice_thresholds:
                return f"metric {metric.class_name} with options"
            for per_slice in metric.per_slice_thresholds:
                if any(spec.feature_values or spec.slice_keys_sql
                       for spec in per_slice.slicing_specs):
                    return "a threshold on a slice by feature value"
    return None


class InProcessEvaluatorExecutor(tfx_evaluator.Executor):
    """TFX's Evaluator executor; in process where runs_in_process() and unsupported() allow."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],  # noqa: N802 - TFX API
           output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
        config_json = exec_properties.get(standard_component_specs.EVAL_CONFIG_KEY)
        if not config_json or not runs_in_process(self._beam_pipeline_args) \
                or standard_component_specs.MODEL_KEY not in input_dict:
            return super().Do(input_dict, output_dict, exec_properties)
        has_baseline = bool(input_dict.get(standard_component_specs.BASELINE_MODEL_KEY))
        eval_config = tfma.EvalConfig()
        proto_utils.json_to_proto(config_json, eval_config)
        # As TFX does: rubber stamp (change thresholds dropped) when there is no baseline.
        eval_config = tfma.utils.update_eval_config_with_defaults(
            eval_config, has_baseline=has_baseline, rubber_stamp=True)
        tfma.utils.verify_eval_config(eval_config)
        if unsupported(eval_config, exec_properties) \
                or input_dict.get(standard_component_specs.SCHEMA_KEY):
            return super().Do(input_dict, output_dict, exec_properties)
        models = {}
        for spec in eval_config.model_specs:
            key = (standard_component_specs.BASELINE_MODEL_KEY if spec.is_baseline
                   else standard_component_specs.MODEL_KEY)
            artifact = artifact_utils.get_single_instance(input_dict[key])
            models[spec.name] = path_utils.serving_model_path(
                artifact.uri, path_utils.is_old_model_artifact(artifact))
        splits = json_utils.loads(
            exec_properties.get(standard_component_specs.EXAMPLE_SPLITS_KEY) or "null")
        files = [path for split in (splits or ["eval"])
                 for uri in artifact_utils.get_split_uris(
                     input_dict[standard_component_specs.EXAMPLES_KEY], split)
                 for path in sorted(tf.io.gfile.glob(io_utils.all_files_pattern(uri)))]
        output_uri = artifact_utils.get_single_uri(output_dict[constants.EVALUATION_KEY])
        evaluate(eval_config, models, files, output_uri)
        if not tfma.metrics.metric_thresholds_from_metrics_specs(
                eval_config.metrics_specs, eval_config=eval_config):
            return None  # TFX: no thresholds, no blessing
        bless(input_dict, output_dict, exec_properties, output_uri)
        return None


def _scores(eval_config: tfma.EvalConfig, models: Dict[str, str], files: List[str]
            ) -> Tuple[np.ndarray, Dict[str, np.ndarray], Dict[str, List[List[bytes]]]]:
    """One pass over the files: labels, each model's prediction, each slice feature's values."""
    spec = eval_config.model_specs[0]
    slice_features = sorted({name for s in eval_config.slicing_specs for name in s.feature_keys})
    dtypes = _feature_dtypes(files, [spec.label_key] + slice_features)
    parse = {spec.label_key: tf.io.VarLenFeature(dtypes.get(spec.label_key, tf.float32))}
    parse.update({name: tf.io.VarLenFeature(dtypes.get(name, tf.string))
                  for name in slice_features})
    signatures = {}
    for name, path in models.items():
        signature = serving_signature(path)  # the gate may have loaded it this cycle
        [input_name] = list(signature.structured_input_signature[1])
        signatures[name] = (signature, input_name)
    keys = {s.name: s.prediction_key for s in eval_config.model_specs}
    labels: List[np.ndarray] = []
    predictions: Dict[str, List[np.ndarray]] = {name: [] for name in models}
    slice_values: Dict[str, List[List[bytes]]] = {name: [] for name in slice_features}
    if files:
        dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(SCORE_BATCH)
        for records in dataset:
            parsed = tf.io.parse_example(records, parse)
            label = parsed[spec.label_key]
            rows = int(label.dense_shape[0])
            if len(label.values) != rows or (rows and int(label.dense_shape[1]) != 1):
                # TFMA fails such an evaluation too ("no value provided for label").
                raise ValueError(f"label {spec.label_key!r} missing or repeated in some of "
                                 f"{rows} eval rows")
            labels.append(label.values.numpy())
            for name in slice_features:
                sparse = parsed[name]
                per_row: List[List[Any]] = [[] for _ in range(int(sparse.dense_shape[0]))]
                for (row, _), value in zip(sparse.indices.numpy(), sparse.values.numpy().tolist()):
                    # As TFMA's slicer: text for bytes (raises on non-UTF-8), each value once.
                    value = tf.compat.as_text(value) if isinstance(value, bytes) else value
                    if value not in per_row[row]:
                        per_row[row].append(value)
                slice_values[name].extend(per_row)
            for name, (signature, input_name) in signatures.items():
                outputs = signature(**{input_name: records})
                predicted = outputs[keys[name]].numpy().reshape(-1)
                if len(predicted) != rows or not np.isfinite(predicted).all():
                    # TFMA's histogram cannot bucket NaN either: never bless such a model.
                    raise ValueError(f"model {name or 'candidate'!r}: {keys[name]!r} gave "
                                     f"{len(predicted)} values for {rows} rows, or non-finite")
                predictions[name].append(predicted)
    label_array = np.concatenate(labels).astype(np.float64) if labels else np.zeros(0)
    return (label_array, {name: np.concatenate(p) if p else np.zeros(0)
                          for name, p in predictions.items()}, slice_values)


_KINDS = {"bytes_list": tf.string, "int64_list": tf.int64, "float_list": tf.float32}


def _feature_dtypes(files: List[str], names: List[str], look_at: int = 1000) -> Dict[str, Any]:
    """The tf dtype of each named feature, from the first records that have it (ExampleGen
    types a column by the schema, so every record agrees)."""
    found: Dict[str, Any] = {}
    if not files:
        return found
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(look_at):
        example = tf.train.Example.FromString(record.numpy())
        for name in names:
            if name not in found and name in example.features.feature:
                kind = example.features.feature[name].WhichOneof("kind")
                if kind:
                    found[name] = _KINDS[kind]
        if len(found) == len(names):
            break
    return found


def _slices(eval_config: tfma.EvalConfig, rows: int,
            slice_values: Dict[str, List[List[bytes]]]) -> Dict[tuple, np.ndarray]:
    """{TFMA slice key: row indices}: () for the overall slice, one key per value of each
    sliced feature (a row without the feature is in no such slice, as in TFMA)."""
    result: Dict[tuple, np.ndarray] = {}
    for spec in eval_config.slicing_specs:
        if not spec.feature_keys:
            result[()] = np.arange(rows)
            continue
        groups: Dict[tuple, List[int]] = {}
        names = sorted(spec.feature_keys)
        for row in range(rows):
            values = [slice_values[name][row] for name in names]
            if any(not v for v in values):
                continue
            for combination in itertools.product(*values):
                key = tuple((name, value) for name, value in zip(names, combination))
                groups.setdefault(key, []).append(row)
        result.update({key: np.asarray(rows_) for key, rows_ in groups.items()})
    return result


def metric_values(labels: np.ndarray, predictions: np.ndarray) -> Dict[str, float]:
    """The six metrics as TFMA defines them, unweighted (NaN where TFMA's is undefined)."""
    count = float(len(labels))
    label_sum, prediction_sum = float(labels.sum()), float(predictions.sum())
    area = auc(labels, predictions) if len(labels) else None
    return {
        "example_count": count,
        # one class only: TFMA's AUC (from its confusion matrices) comes out 0.0
        "auc": 0.0 if area is None else area,
        # BinaryAccuracy: threshold 0.5, a prediction above it counts as positive
        "binary_accuracy": (float(((predictions > 0.5) == (labels > 0.5)).mean())
                            if count else float("nan")),
        "calibration": prediction_sum / label_sum if label_sum else float("nan"),
        "mean_label": label_sum / count if count else float("nan"),
        "mean_prediction": prediction_sum / count if count else float("nan"),
    }


def sliced_metrics(eval_config: tfma.EvalConfig, models: Dict[str, str], files: List[str]
                   ) -> Dict[tuple, Dict[metric_types.MetricKey, float]]:
    """{slice key: {MetricKey: value}} with TFMA's keys: per model, and for the candidate the
    difference to the baseline (is_diff) when there is one."""
    labels, predictions, slice_values = _scores(eval_config, models, files)
    wanted = {SUPPORTED_METRICS[m.class_name] for spec in eval_config.metrics_specs
              for m in spec.metrics}
    baseline = next((s.name for s in eval_config.model_specs if s.is_baseline), None)
    result = {}
    for slice_key, rows in _slices(eval_config, len(labels), slice_values).items():
        if not len(rows):
            continue  # TFMA writes no slice without rows (an empty split: missing slices)
        per_model = {name: metric_values(labels[rows], predictions[name][rows])
                     for name in models}
        values: Dict[metric_types.MetricKey, float] = {}
        for name, metrics in per_model.items():
            for metric, value in metrics.items():
                if metric in wanted:
                    values[metric_types.MetricKey(name=metric, model_name=name,
                                                  example_weighted=False)] = value
        if baseline is not None:
            for name in models:
                if name == baseline:
                    continue
                for metric in wanted:
                    values[metric_types.MetricKey(
                        name=metric, model_name=name, example_weighted=False, is_diff=True)] = \
                        per_model[name][metric] - per_model[baseline][metric]
        result[slice_key] = values
    return result


def evaluate(eval_config: tfma.EvalConfig, models: Dict[str, str], files: List[str],
             output_uri: str) -> None:
    """Write metrics, plots, attributions, validations and eval_config.json to output_uri as
    tfma.ExtractEvaluateAndWriteResults does (its file names and protos)."""
    metrics = sliced_metrics(eval_config, models, files)
    tf.io.gfile.makedirs(output_uri)
    # TFX builds its models without rubber_stamp (default_eval_shared_model's default), so
    # TFMA combines the validations with rubber_stamp=False.
    combine = tfma_writer.CombineValidations(eval_config, rubber_stamp=False)
    validation = combine.create_accumulator()
    for slice_key, values in metrics.items():
        validation = combine.add_input(
            validation, metrics_validator.validate_metrics((slice_key, values), eval_config))
    validation = combine.extract_output(validation)
    _write_records(os.path.join(output_uri, "metrics-00000-of-00001.tfrecord"),
                   [tfma_writer.convert_slice_metrics_to_proto((key, values), [])
                    for key, values in metrics.items()])
    for kind, proto in (("plots", metrics_for_slice_pb2.PlotsForSlice),
                        ("attributions", metrics_for_slice_pb2.AttributionsForSlice)):
        _write_records(os.path.join(output_uri, f"{kind}-00000-of-00001.tfrecord"),
                       [proto(slice_key=_slice_key_proto(key)) for key in metrics])
    _write_records(os.path.join(output_uri, "validations.tfrecord"), [validation])
    io_utils.write_string_file(
        os.path.join(output_uri, "eval_config.json"),
        eval_config_writer._serialize_eval_run(  # noqa: SLF001 - TFMA's own format
            eval_config, ",".join(files), "tfrecords", models))


def _slice_key_proto(key: tuple):
    from tensorflow_model_analysis.slicer import slicer_lib

    return slicer_lib.serialize_slice_key(key)


def _write_records(path: str, protos) -> None:
    with tf.io.TFRecordWriter(path) as writer:
        for proto in protos:
            writer.write(proto.SerializeToString())


def bless(input_dict: Dict[str, List[types.Artifact]],
          output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any],
          output_uri: str) -> None:
    """The blessing as TFX's executor writes it (tfx/components/evaluator/executor.py)."""
    blessing = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.BLESSING_KEY])
    model = input_dict[standard_component_specs.MODEL_KEY][0]
    blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY,
                                        model.uri)
    blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, model.id)
    if input_dict.get(standard_component_specs.BASELINE_MODEL_KEY):
        baseline = input_dict[standard_component_specs.BASELINE_MODEL_KEY][0]
        blessing.set_string_custom_property(
            constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY, baseline.uri)
        blessing.set_int_custom_property(
            constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY, baseline.id)
    if "current_component_id" in exec_properties:
        blessing.set_string_custom_property("component_id",
                                            exec_properties["current_component_id"])
    blessed = tfma.load_validation_result(output_uri).validation_ok
    io_utils.write_string_file(os.path.join(
        blessing.uri, constants.BLESSED_FILE_NAME if blessed else constants.NOT_BLESSED_FILE_NAME),
        "")
    blessing.set_int_custom_property(
        constants.ARTIFACT_PROPERTY_BLESSED_KEY,
        constants.BLESSED_VALUE if blessed else constants.NOT_BLESSED_VALUE)
