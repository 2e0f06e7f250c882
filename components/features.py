"""Feature and label names: the one place they are spelled.

The trainer, the Evaluator config, the schema checks, the data gate, the serving clients and the
tests import these names; no other module writes a column name as a literal.
"""
from __future__ import annotations

from typing import Dict, Tuple

LABEL_KEY = "big_tipper"

# Every column of the source CSV, in file order (the span contract checked before ExampleGen).
CSV_COLUMNS: Tuple[str, ...] = (
    "pickup_community_area", "fare", "trip_start_month", "trip_start_hour", "trip_start_day",
    "trip_start_timestamp", "pickup_latitude", "pickup_longitude", "dropoff_latitude",
    "dropoff_longitude", "trip_miles", "pickup_census_tract", "dropoff_census_tract",
    "payment_type", "company", "trip_seconds", "dropoff_community_area", "tips", "big_tipper",
)

# Numeric features: standardised in the model; a missing value becomes 0 plus a "missing" flag.
# Values are the dtype in tf.Example as CsvExampleGen writes it (trip_seconds is an integer column).
NUMERIC_FEATURES: Dict[str, str] = {
    "fare": "float32",
    "trip_miles": "float32",
    "trip_seconds": "int64",
    "pickup_latitude": "float32",
    "pickup_longitude": "float32",
    "dropoff_latitude": "float32",
    "dropoff_longitude": "float32",
}

# Categorical features -> vocabulary capacity. The vocabulary itself is learned from the training
# window; the capacity is fixed so that warm-started models keep identical weight shapes.
CATEGORICAL_INT_FEATURES: Dict[str, int] = {
    "trip_start_hour": 32,
    "trip_start_day": 8,
    "trip_start_month": 16,
    "pickup_community_area": 96,
    "dropoff_community_area": 96,
    "dropoff_census_tract": 512,
}
CATEGORICAL_STRING_FEATURES: Dict[str, int] = {
    "payment_type": 16,
    "company": 128,
}

# Columns that are valid data but never model inputs, and why.
NOT_MODEL_FEATURES: Dict[str, str] = {
    "tips": "the label is derived from it (target leakage)",
    "trip_start_timestamp": "defines the span; the model sees hour/day/month instead",
    "pickup_census_tract": "empty in all but one row of the source",
}

# Evaluator slices (besides the overall slice).
SLICE_FEATURES: Tuple[str, ...] = ("payment_type",)

# How a missing value is written in the dense "raw features" form (serving_raw signature).
MISSING_FLOAT = float("nan")
MISSING_INT = -1
MISSING_STRING = ""


def categorical_features() -> Dict[str, int]:
    return {**CATEGORICAL_INT_FEATURES, **CATEGORICAL_STRING_FEATURES}


def model_feature_names() -> Tuple[str, ...]:
    return tuple(NUMERIC_FEATURES) + tuple(categorical_features())
