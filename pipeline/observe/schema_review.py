"""How the schema SchemaGen would infer differs from the curated contract (schema/schema.pbtxt).

Why: the inferred schema is kept for review, not used. When data legitimately changes (a new
payment type, a new column) this diff shows what to update in the contract by hand.
"""
from __future__ import annotations

import os
import tempfile
from typing import List, Optional

from ctpipe.components.curated_schema import load_contract
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.spans import check_span, discover_spans


def _describe(feature) -> dict:
    from tensorflow_metadata.proto.v0 import schema_pb2

    domain = feature.WhichOneof("domain_info")
    return {
        "type": schema_pb2.FeatureType.Name(feature.type),
        "presence": round(feature.presence.min_fraction, 3),
        "values": (feature.value_count.min, feature.value_count.max)
        if feature.HasField("value_count") else None,
        "domain": domain,
    }


def diff_schemas(curated, inferred) -> List[str]:
    curated_by_name = {f.name: f for f in curated.feature}
    inferred_by_name = {f.name: f for f in inferred.feature}
    lines = []
    for name in sorted(set(curated_by_name) | set(inferred_by_name)):
        if name not in inferred_by_name:
            lines.append(f"{name}: in the contract, absent from the data")
            continue
        if name not in curated_by_name:
            lines.append(f"{name}: in the data, not in the contract")
            continue
        ours, theirs = _describe(curated_by_name[name]), _describe(inferred_by_name[name])
        for key in ours:
            if ours[key] != theirs[key]:
                lines.append(f"{name}: {key} curated={ours[key]} inferred={theirs[key]}")
    return lines


def csv_statistics(pattern: str):
    """TFDV statistics of CSV files. TFDV's default output folder is a new one in the system
    temp dir that nobody removes; this one is."""
    import tensorflow_data_validation as tfdv

    with tempfile.TemporaryDirectory() as scratch:
        return tfdv.generate_statistics_from_csv(
            pattern, output_path=os.path.join(scratch, "stats.tfrecord"))


def schema_diff(config: PipelineConfig, span: Optional[int] = None) -> List[str]:
    import tensorflow_data_validation as tfdv

    spans = discover_spans(config.data_root)
    chosen = span if span is not None else max(spans)
    span_dir = os.path.join(config.data_root, f"span-{chosen}")
    check_span(chosen, span_dir)
    statistics = csv_statistics(os.path.join(span_dir, "*"))
    inferred = tfdv.infer_schema(statistics)
    curated = load_contract(config.schema_path)
    return [f"span {chosen}: {line}" for line in diff_schemas(curated, inferred)]
