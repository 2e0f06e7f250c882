"""StatisticsGen's executor: TFX's, with an in-process path for the DirectRunner.

Why: a span's statistics cost TFDV a fraction of a second in memory (76k rows: 0.3 s of
generate_statistics_in_memory after a ~2 s decode), while a Beam pipeline costs seconds of
start-up however small the span (~3.5 s of a 200-row span's cycle). The same TFDV generators run
either way (stats_impl.generate_statistics_in_memory is what GenerateStatistics runs per batch),
on the same schema-less decoding of the same records (tfx_bsl's ExamplesToRecordBatchDecoder,
what TFXIO's BeamSource uses), so the numbers agree with Beam's up to float summation order
(the last digits of a mean).

When Beam runs elsewhere (a `--runner` other than the DirectRunner), a split's files exceed
IN_PROCESS_MAX_BYTES, the records are not tf.Examples, or the options ask for anything the
in-memory path does not do (sampling, sharded output, filtered reads, slicing, lift statistics,
custom generators), TFX's executor runs TFDV on Beam as before. One difference remains on
purpose: in memory TFDV counts top values with its sketch (Misra-Gries, 1024 counters), exact
for columns with fewer distinct values than that - every column of ours. The output is TFX's:
`Split-<name>/FeatureStats.pb` (a binary DatasetFeatureStatisticsList) and the same artifact
properties.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List

import tensorflow as tf
from tfx import types
from tfx.components.statistics_gen import executor as tfx_statistics
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, json_utils

from ctpipe.components.fast_evaluator import runs_in_process

# Compressed bytes of one split's files up to which it is decoded in memory (~1M rows of ours,
# ~1.5 GB of decoded Arrow and records at the peak); above it Beam streams the split.
IN_PROCESS_MAX_BYTES = 256 << 20
READ_BATCH = 65536


class InProcessStatisticsGenExecutor(tfx_statistics.Executor):
    """TFX's StatisticsGen executor; in process where it can be (module docstring)."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],  # noqa: N802 - TFX API
           output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
        from tensorflow_data_validation.statistics import stats_options as options

        examples = artifact_utils.get_single_instance(
            input_dict[standard_component_specs.EXAMPLES_KEY])
        stats_options = options.StatsOptions()
        if exec_properties.get(standard_component_specs.STATS_OPTIONS_JSON_KEY):
            stats_options = options.StatsOptions.from_json(
                exec_properties[standard_component_specs.STATS_OPTIONS_JSON_KEY])
        exclude = json_utils.loads(
            exec_properties.get(standard_component_specs.EXCLUDE_SPLITS_KEY, "null")) or []
        splits = [s for s in artifact_utils.decode_split_names(examples.split_names)
                  if s not in exclude]
        files = {split: _split_files(examples, split) for split in splits}
        if (not runs_in_process(self._beam_pipeline_args) or not splits
                or examples.has_custom_property(examples_utils.CUSTOM_SPLIT_PATTERN_PROPERTY_NAME)
                or stats_options.sample_rate
                or json_utils.loads(exec_properties.get(
                    standard_component_specs.SAMPLE_RATE_BY_SPLIT_KEY, "null"))
                or exec_properties.get(standard_component_specs.SHARDED_STATS_OUTPUT_KEY)
                or stats_options.experimental_filter_read_paths
                # TFDV in memory: no slicing, no lift statistics, combiner generators only.
                or stats_options.experimental_slice_functions
                or stats_options.experimental_slice_sqls or stats_options.slicing_config
                or stats_options.label_feature or stats_options.generators
                or stats_options.schema is not None
                or examples_utils.get_payload_format(examples)
                != example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE
                or any(sum(tf.io.gfile.stat(f).length for f in paths) > IN_PROCESS_MAX_BYTES
                       for paths in files.values())):
            return super().Do(input_dict, output_dict, exec_properties)
        if input_dict.get(standard_component_specs.SCHEMA_KEY):
            stats_options.schema = io_utils.SchemaReader().read(io_utils.get_only_uri_in_dir(
                artifact_utils.get_single_uri(input_dict[standard_component_specs.SCHEMA_KEY])))
        statistics = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.STATISTICS_KEY])
        # The properties TFX's executor sets (tfx/components/statistics_gen/executor.py).
        statistics.split_names = artifact_utils.encode_split_names(splits)
        statistics.span = examples.span
        statistics.set_string_custom_property(tfx_statistics.STATS_DASHBOARD_LINK, "")  # none local
        statistics.set_json_value_custom_property(
            tfx_statistics.SAMPLE_RATE_BY_SPLIT_PROPERTY_NAME,
            json_utils.dumps({split: 1.0 for split in splits}))
        for split in splits:
            result = split_statistics(files[split], stats_options)
            output = artifact_utils.get_split_uri([statistics], split)
            tf.io.gfile.makedirs(output)
            io_utils.write_bytes_file(os.path.join(output, tfx_statistics.DEFAULT_FILE_NAME),
                                      result.SerializeToString())
        return None


def _split_files(examples: types.Artifact, split: str) -> List[str]:
    uri = artifact_utils.get_split_uri([examples], split)
    return sorted(tf.io.gfile.glob(io_utils.all_files_pattern(uri)))


def split_statistics(files: List[str], stats_options):
    """TFDV statistics of GZIP TFRecord tf.Example files, decoded and computed in memory."""
    import pyarrow as pa
    from tensorflow_data_validation.statistics import stats_impl
    from tfx_bsl.coders import example_coder

    records: List[bytes] = []
    if files:
        dataset = tf.data.TFRecordDataset(files, compression_type="GZIP", buffer_size=1 << 24)
        for batch in dataset.batch(READ_BATCH):
            records.extend(batch.numpy().tolist())
    decoder = example_coder.ExamplesToRecordBatchDecoder()
    batch = decoder.DecodeBatch(records) if records else pa.RecordBatch.from_arrays([], [])
    return stats_impl.generate_statistics_in_memory(batch, stats_options)
