"""The curated contract: clean sample spans pass it (schema and drift), real shifts fail it."""

import pytest

from ctpipe.components.curated_schema import load_contract
from ctpipe.pipeline import corruptions
from ctpipe.pipeline.schema_review import csv_statistics

from tests.conftest import SAMPLE

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
