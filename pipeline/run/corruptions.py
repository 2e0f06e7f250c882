"""Ways a span goes bad, applied to a copy of a clean span (used by the demo and the tests).

Each keeps the CSV readable - these are data problems for the gate and the Evaluator to catch,
not parse errors.
"""
from __future__ import annotations

import csv
import random
from typing import Callable, Dict, List

from ctpipe.components import features as F

Rows = List[Dict[str, str]]


def _rewrite(source: str, destination: str, change: Callable[[Rows], None]) -> None:
    with open(source, newline="") as handle:
        reader = csv.DictReader(handle)
        fieldnames, rows = reader.fieldnames, list(reader)
    change(rows)
    with open(destination, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def break_contract(source: str, destination: str, seed: int = 0) -> None:
    """A broken upstream export: negative fares and a payment type outside the vocabulary."""
    def change(rows: Rows) -> None:
        rng = random.Random(seed)
        for row in rng.sample(rows, max(1, len(rows) // 5)):
            row["fare"] = f"-{row['fare'] or '1'}"
            row["payment_type"] = "Bitcoin"
    _rewrite(source, destination, change)


def shuffle_labels(source: str, destination: str, seed: int = 0) -> None:
    """Labels detached from their rows: same label rate (no drift), no signal."""
    def change(rows: Rows) -> None:
        labels = [row[F.LABEL_KEY] for row in rows]
        random.Random(seed).shuffle(labels)
        for row, label in zip(rows, labels):
            row[F.LABEL_KEY] = label
    _rewrite(source, destination, change)


def scale_fares(source: str, destination: str, factor: float = 100.0) -> None:
    """A unit change upstream (dollars -> cents): valid values, shifted distribution."""
    def change(rows: Rows) -> None:
        for row in rows:
            if row["fare"]:
                row["fare"] = f"{float(row['fare']) * factor:.2f}"
    _rewrite(source, destination, change)


def shift_payments(source: str, destination: str, fraction: float = 0.6, seed: int = 0) -> None:
    """A lasting change upstream (cash trips move to cards, e.g. card-only cabs): every value is
    valid, but the payment mix drifts past the schema's L-infinity threshold."""
    def change(rows: Rows) -> None:
        rng = random.Random(seed)
        for row in rows:
            if row["payment_type"] == "Cash" and rng.random() < fraction:
                row["payment_type"] = "Credit Card"
    _rewrite(source, destination, change)


def leak_label(source: str, destination: str, seed: int = 0) -> None:
    """An upstream join bug leaks the label into the trip's time and place: big tippers' trips
    are stamped on days 1-3 and hours 0-11 and placed in community area 8 (pickup and
    dropoff), the others on days 4-7 and hours 12-23 in area 32 - the two busiest areas of
    every sample span, so both values stay in the model's vocabulary and are common in clean
    spans. Every value is valid, day, hour and the areas have no drift comparator, and the
    labels are true (the production model still agrees with them), so the span passes the gate.
    A model trained on it looks excellent on this span's own eval split - it reads the answer
    off four features at once - and is clearly worse on the next, clean span, where those
    features say nothing: only an out-of-time check (fresh labels) catches it."""
    def change(rows: Rows) -> None:
        rng = random.Random(seed)
        for row in rows:
            tipper = row[F.LABEL_KEY] == "1"
            row["trip_start_day"] = str(rng.randint(1, 3) if tipper else rng.randint(4, 7))
            row["trip_start_hour"] = str(rng.randint(0, 11) if tipper else rng.randint(12, 23))
            area = LEAK_AREAS[0] if tipper else LEAK_AREAS[1]
            row["pickup_community_area"] = row["dropoff_community_area"] = str(area)
    _rewrite(source, destination, change)


# (big tipper, other): the two busiest community areas of every sample span.
LEAK_AREAS = (8, 32)


CORRUPTIONS = {"leak_label": leak_label,
               "break_contract": break_contract, "shuffle_labels": shuffle_labels,
               "scale_fares": scale_fares, "shift_payments": shift_payments}
