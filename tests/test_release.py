"""The release manifest: transitions, the file format TF Serving reads, the two-phase write."""
import os

import pytest

from ctpipe.components import release as R


def _release(**labels):
    return R.Release("big_tipper", "/models/big_tipper", labels)


def test_first_push_is_stable_later_pushes_are_canary():
    first = R.after_push(_release(), 1)
    assert first.labels == {"stable": 1}
    second = R.after_push(first, 2)
    assert second.labels == {"stable": 1, "canary": 2}
    third = R.after_push(second, 3)  # an unpromoted canary is replaced, stable untouched
    assert third.labels == {"stable": 1, "canary": 3}
    assert third.versions == [1, 3]


def test_promote_keeps_the_old_stable_loaded_for_rollback():
    promoted = R.promoted(_release(stable=1, canary=2))
    assert promoted.labels == {"stable": 2, "previous": 1}
    back = R.rolled_back(promoted)
    assert back.labels == {"stable": 1}
    assert back.versions == [1]


def test_promote_or_rollback_to_a_given_version():
    assert R.promoted(_release(stable=1, canary=3), 2).labels == {
        "stable": 2, "previous": 1, "canary": 3}
    assert R.rolled_back(_release(stable=4, previous=3, canary=5), to=1).labels == {
        "stable": 1, "canary": 5}


@pytest.mark.parametrize("change, message", [
    (lambda r: R.promoted(r), "no canary"),
    (lambda r: R.rolled_back(r), "no previous"),
    (lambda r: R.promoted(r, 1), "already stable"),
    (lambda r: R.without_canary(r), "no canary"),
])
def test_impossible_changes_say_why(change, message):
    with pytest.raises(R.ReleaseError, match=message):
        change(_release(stable=1))


def test_manifest_is_a_model_server_config_tf_serving_parses(tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = str(tmp_path / "models.config")
    R.write(path, [_release(stable=1, canary=2, previous=0)])
    config = text_format.Parse(open(path).read(), model_server_config_pb2.ModelServerConfig())
    entry = config.model_config_list.config[0]
    assert entry.name == "big_tipper" and entry.model_platform == "tensorflow"
    assert list(entry.model_version_policy.specific.versions) == [0, 1, 2]
    assert dict(entry.version_labels) == {"stable": 1, "canary": 2, "previous": 0}
    assert R.read(path)[0].labels == {"stable": 1, "canary": 2, "previous": 0}
    assert not [name for name in os.listdir(tmp_path) if name != "models.config"]


def _versions(base, *versions):
    for version in versions:
        os.makedirs(os.path.join(base, str(version)))
        with open(os.path.join(base, str(version), "saved_model.pb"), "wb") as handle:
            handle.write(b"pb")


def test_apply_loads_a_new_version_before_any_label_points_at_it(tmp_path):
    base = str(tmp_path / "big_tipper")
    path = R.manifest_path(str(tmp_path))
    _versions(base, 1, 2)
    R.apply(path, "big_tipper", base, lambda r: R.after_push(r, 1))
    seen = []

    def wait_available(model, version):  # what the server sees while the Pusher waits
        seen.append((model, version, R.read(path)[0]))

    R.apply(path, "big_tipper", base, lambda r: R.after_push(r, 2), wait_available)
    [(model, version, during)] = seen
    assert (model, version) == ("big_tipper", 2)
    assert during.versions == [1, 2] and during.labels == {"stable": 1}
    assert R.read(path)[0].labels == {"stable": 1, "canary": 2}


def test_promote_of_a_loaded_canary_is_one_write(tmp_path):
    base = str(tmp_path / "big_tipper")
    path = R.manifest_path(str(tmp_path))
    _versions(base, 1, 2)
    R.write(path, [R.Release("big_tipper", base, {"stable": 1, "canary": 2})])
    calls = []
    R.apply(path, "big_tipper", base, R.promoted, lambda m, v: calls.append(v))
    assert calls == []
    assert R.read(path)[0].labels == {"stable": 2, "previous": 1}


def test_a_version_missing_on_disk_is_never_named(tmp_path):
    base = str(tmp_path / "big_tipper")
    path = R.manifest_path(str(tmp_path))
    _versions(base, 1)
    R.apply(path, "big_tipper", base, lambda r: R.after_push(r, 1))
    with pytest.raises(R.ReleaseError, match="not under"):
        R.apply(path, "big_tipper", base, lambda r: R.promoted(r, 7))
    assert R.read(path)[0].labels == {"stable": 1}


def test_a_server_that_never_loads_the_version_leaves_labels_alone(tmp_path):
    base = str(tmp_path / "big_tipper")
    path = R.manifest_path(str(tmp_path))
    _versions(base, 1, 2)
    R.apply(path, "big_tipper", base, lambda r: R.after_push(r, 1))
    waiter = R.rest_waiter("http://127.0.0.1:9", timeout_seconds=0.3, poll_seconds=0.1)
    with pytest.raises(R.ReleaseError, match="did not become AVAILABLE"):
        R.apply(path, "big_tipper", base, lambda r: R.after_push(r, 2), waiter)
    assert R.read(path)[0].labels == {"stable": 1}


def test_canary_label_always_exists_in_the_file_pointing_at_stable_when_idle(tmp_path):
    """A traffic split that sends a share to the canary label must never reach a missing one."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = str(tmp_path / "models.config")
    R.write(path, [R.promoted(_release(stable=1, canary=2))])
    entry = text_format.Parse(open(path).read(),
                              model_server_config_pb2.ModelServerConfig()).model_config_list.config[0]
    assert dict(entry.version_labels) == {"stable": 2, "canary": 2, "previous": 1}
    [read] = R.read(path)
    assert read.canary is None and read.labels == {"stable": 2, "previous": 1}
