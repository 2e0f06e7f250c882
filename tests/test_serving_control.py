"""`serve --control-percent P --control-key K`: a sticky share of unlabelled requests goes to the
version labelled control, by the sha256 of the unit key (the same arm after a restart)."""
import subprocess
import sys

import pytest

from ctpipe.serving.core import ServingCore
from ctpipe.serving.registry import ModelRegistry, in_control


def test_the_arm_is_a_fixed_function_of_the_key():
    units = [f"user-{i}" for i in range(20)]
    # pinned: the same units in control in every process, on every machine, after restarts
    assert [u for u in units if in_control(u, 30)] == \
        ["user-5", "user-9", "user-11", "user-15", "user-16", "user-17"]
    script = ("from ctpipe.serving.registry import in_control;"
              "print([u for u in ['user-%d' % i for i in range(20)] if in_control(u, 30)])")
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}, check=True)
    assert other.stdout.strip() == str([u for u in units if in_control(u, 30)])
    share = sum(in_control(f"u{i}", 10) for i in range(20000)) / 20000
    assert share == pytest.approx(0.10, abs=0.01)
    # raising the percent only moves units into control
    assert all(in_control(f"u{i}", 20) for i in range(2000) if in_control(f"u{i}", 10))
    assert not in_control("u1", 0) and in_control("u1", 100)


class _Model:
    def __init__(self, labels):
        self._labels = labels

    def available(self):
        return {v: f"servable-{v}" for v in self._labels.values()}

    def labels(self):
        return dict(self._labels)

    def route_to_canary(self, percent):
        return False


def test_unlabelled_units_go_to_control_and_labelled_requests_do_not():
    registry = ModelRegistry([], control_percent=30)
    registry._models["m"] = _Model({"stable": 2, "control": 1})
    assert registry.route("m", unit="user-5") == ("servable-1", "control")
    assert registry.route("m", unit="user-0") == ("servable-2", "stable")
    assert registry.route("m") == ("servable-2", "stable")  # no unit key: never control
    assert registry.route("m", label="stable", unit="user-5") == ("servable-2", "stable")
    assert registry.route("m", version=2, unit="user-5") == ("servable-2", "")
    registry._models["n"] = _Model({"stable": 2})  # no control label: stable
    assert registry.route("n", unit="user-5") == ("servable-2", "stable")
    with pytest.raises(ValueError):
        ModelRegistry([], control_percent=101)


def test_unit_key_from_a_header_or_a_feature():
    core = ServingCore(ModelRegistry([]))
    assert core.unit_of([("x-user", "a")], {"user": ["b"]}) is None  # no --control-key
    core.control_key = "X-User"
    assert core.unit_of([("x-user", "a")], {"X-User": ["b"]}) == "a"
    core.control_key = "user"
    assert core.unit_of([], {"user": [b"b", b"c"]}) == "b"
    assert core.unit_of([], {"user": [[7], [8]]}) == "7"
    assert core.unit_of([], {"other": [1]}) is None
