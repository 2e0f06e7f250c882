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


CORRUPTIONS = {"break_contract": break_contract, "shuffle_labels": shuffle_labels,
               "scale_fares": scale_fares, "shift_payments": shift_payments}
