"""The curated contract: clean sample spans pass it (schema and drift), real shifts fail it."""

import pytest

from ctpipe.components.curated_schema import load_contract
from ctpipe.pipeline.observe.schema_review import csv_statistics
from ctpipe.pipeline.run import corruptions

from tests.support import SAMPLE

tfdv = pytest.importorskip("tensorflow_data_validation")


@pytest.fixture(scope="module")
def schema():
    return load_contract()


@pytest.fixture(scope="module")
def span_stats():
    return {span: csv_statistics(str(SAMPLE / f"span-{span}" / "data.csv"))
            for span in range(1, 17)}


def _reasons(anomalies):
    return {name: [r.short_description for r in info.reason]
            for name, info in anomalies.anomaly_info.items()}


def test_every_clean_span_meets_the_contract_and_drift_rules(schema, span_stats):
    for span in range(1, 17):
        previous = span_stats.get(span - 1)
        anomalies = tfdv.validate_statistics(span_stats[span], schema,
                                             previous_statistics=previous)
        assert not anomalies.anomaly_info, f"span {span}: {_reasons(anomalies)}"


def test_contract_declares_domains_and_comparators(schema):
    fare = tfdv.get_feature(schema, "fare")
    assert fare.float_domain.min == 0
    assert tfdv.get_feature(schema, "big_tipper").int_domain.max == 1
    assert list(tfdv.get_domain(schema, "payment_type").value)
    assert tfdv.get_feature(schema, "payment_type").drift_comparator.infinity_norm.threshold > 0
    assert tfdv.get_feature(schema, "big_tipper").drift_comparator \
        .jensen_shannon_divergence.threshold > 0


def test_broken_export_violates_the_contract(schema, tmp_path):
    target = tmp_path / "broken.csv"
    corruptions.break_contract(str(SAMPLE / "span-5" / "data.csv"), str(target))
    anomalies = tfdv.validate_statistics(csv_statistics(str(target)), schema)
    assert {"fare", "payment_type"} <= set(anomalies.anomaly_info)


def test_unit_change_is_caught_as_drift(schema, span_stats, tmp_path):
    target = tmp_path / "cents.csv"
    corruptions.scale_fares(str(SAMPLE / "span-5" / "data.csv"), str(target))
    anomalies = tfdv.validate_statistics(csv_statistics(str(target)), schema,
                                         previous_statistics=span_stats[4])
    assert "fare" in anomalies.anomaly_info


def test_skew_comparators_mirror_the_drift_comparators(schema):
    """Every drift-checked input feature is skew-checked with the same kind of comparator;
    numeric ones on quantile histograms; the label (absent from requests) is not."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    from ctpipe.components.features import LABEL_KEY

    for feature in schema.feature:
        drift, skew = feature.drift_comparator, feature.skew_comparator
        if feature.name == LABEL_KEY or not feature.HasField("drift_comparator"):
            assert not feature.HasField("skew_comparator"), feature.name
            continue
        for kind in ("infinity_norm", "jensen_shannon_divergence"):
            assert drift.HasField(kind) == skew.HasField(kind), feature.name
        if skew.HasField("jensen_shannon_divergence"):
            assert skew.jensen_shannon_divergence.threshold > 0
            assert skew.jensen_shannon_divergence.source.type == \
                schema_pb2.HistogramSelection.QUANTILES
        else:
            assert skew.infinity_norm.threshold > 0


def test_the_gate_s_drift_check_ignores_skew_comparators(schema, span_stats, tmp_path):
    """The data gate calls validate_statistics with previous statistics only: skew comparators
    measure nothing there, so they cannot block a span; with serving statistics they do."""
    from ctpipe.components.data_gate import drift_reasons

    target = tmp_path / "cents.csv"
    corruptions.scale_fares(str(SAMPLE / "span-5" / "data.csv"), str(target))
    cents = csv_statistics(str(target))
    gate = tfdv.validate_statistics(span_stats[5], schema, previous_statistics=span_stats[4])
    assert not any(info.skew_measurements for info in gate.drift_skew_info)
    assert drift_reasons(span_stats[5], span_stats[4], schema, 4) == []
    served = tfdv.validate_statistics(span_stats[4], schema, serving_statistics=cents)
    assert "fare" in served.anomaly_info
    assert any(info.skew_measurements for info in served.drift_skew_info)
