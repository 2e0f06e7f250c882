"""Slow drift: each span close to the previous one, far from where the window started. The gate
compares with the baseline *and* the oldest span of the reference window (real TFDV
statistics and the curated schema's comparators)."""
import os

import pytest

from ctpipe.components.data_gate import _drift_against_references
from ctpipe.components.ledger import Ledger
from ctpipe.pipeline.observe.schema_review import csv_statistics
from ctpipe.pipeline.run import corruptions

from tests.support import SAMPLE

tfdv = pytest.importorskip("tensorflow_data_validation")


def _statistics(tmp_path, name, csv_path):
    uri = tmp_path / name
    (uri / "Split-train").mkdir(parents=True)
    stats = csv_statistics(str(csv_path))
    (uri / "Split-train" / "FeatureStats.pb").write_bytes(stats.SerializeToString())
    return str(uri)


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    """Span 1: as sampled; span 2: 20 % of cash trips moved to cards; span 3: 40 %."""
    tmp_path = tmp_path_factory.mktemp("drift")
    source = SAMPLE / "span-3" / "data.csv"
    uris = {1: _statistics(tmp_path, "s1", source)}
    for span, fraction in ((2, 0.2), (3, 0.4)):
        shifted = tmp_path / f"span{span}.csv"
        corruptions.shift_payments(str(source), str(shifted), fraction=fraction)
        uris[span] = _statistics(tmp_path, f"s{span}", shifted)
    return uris


def _ledger(uris, spans):
    ledger = Ledger()
    for span in spans:
        ledger = ledger.accept({"span": span, "examples_uri": "", "statistics_uri": uris[span]})
    return ledger


def test_neighbours_look_alike_but_the_window_start_does_not(drifting):
    from ctpipe.components.curated_schema import load_contract

    schema = load_contract()
    only_baseline = _drift_against_references(_ledger(drifting, [2]), 3, drifting[3], schema,
                                              3, "train")
    assert only_baseline == []  # span 3 vs span 2 alone: no drift
    reasons = _drift_against_references(_ledger(drifting, [1, 2]), 3, drifting[3], schema, 3,
                                        "train")
    assert len(reasons) == 1 and reasons[0].startswith(
        "payment_type: drift vs span 1 (oldest span of the window)"), reasons


def test_an_accepted_change_moves_the_reference(drifting):
    from ctpipe.components.curated_schema import load_contract

    ledger = _ledger(drifting, [1, 2])
    ledger.drift_anchor = 2  # the operator released span 2: the old regime is no reference
    assert _drift_against_references(ledger, 3, drifting[3], load_contract(), 3, "train") == []
    assert os.path.exists(drifting[1])
