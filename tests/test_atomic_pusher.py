"""Atomic publish: a version appears whole or not at all, also when the push is killed."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from ctpipe.components import atomic_pusher as ap
from ctpipe.components.layout import versions_on_disk


@pytest.fixture()
def model_dir(tmp_path):
    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"pb")
    (model / "variables" / "variables.index").write_bytes(b"index")
    (model / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(4096))
    return model


def test_versions_are_increasing_integers(model_dir, tmp_path):
    base = tmp_path / "serving"
    assert ap.publish_atomically(str(model_dir), str(base)) == 1
    assert ap.publish_atomically(str(model_dir), str(base)) == 2
    assert versions_on_disk(str(base)) == [1, 2]
    shutil.rmtree(base / "2")  # a rollback deletes a version: its number is never reused
    assert ap.publish_atomically(str(model_dir), str(base)) == 3


def test_failed_copy_leaves_nothing(model_dir, tmp_path):
    base = tmp_path / "serving"

    def copy_then_fail(source, destination):
        os.makedirs(destination)
        shutil.copyfile(os.path.join(source, "saved_model.pb"),
                        os.path.join(destination, "saved_model.pb"))
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ap.publish_atomically(str(model_dir), str(base), copy=copy_then_fail)
    assert os.listdir(base) == []


def test_incomplete_model_is_refused(model_dir, tmp_path):
    os.remove(model_dir / "variables" / "variables.index")
    with pytest.raises(ap.PushError, match="incomplete"):
        ap.publish_atomically(str(model_dir), str(tmp_path / "serving"))


def test_killed_push_leaves_no_version_and_is_cleaned_up(model_dir, tmp_path):
    base = tmp_path / "serving"
    script = textwrap.dedent(f"""
        import os, shutil, sys, time
        from ctpipe.components import atomic_pusher as ap
        def slow_copy(source, destination):
            os.makedirs(destination)
            shutil.copyfile(os.path.join(source, "saved_model.pb"),
                            os.path.join(destination, "saved_model.pb"))
            print("copying", flush=True)
            time.sleep(60)
        ap.publish_atomically({str(model_dir)!r}, {str(base)!r}, copy=slow_copy)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                               cwd=os.path.dirname(os.path.dirname(ap.__file__)))
    assert process.stdout.readline().strip() == "copying"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    leftovers = os.listdir(base)
    assert versions_on_disk(str(base)) == []
    assert all(name.startswith(ap.INCOMING_PREFIX) for name in leftovers)
    assert ap.publish_atomically(str(model_dir), str(base)) == 1
    assert not [n for n in os.listdir(base) if n.startswith(ap.INCOMING_PREFIX)]


def test_the_next_cycle_removes_what_a_killed_push_left(tmp_path):
    from ctpipe.pipeline.config import PipelineConfig
    from ctpipe.pipeline.home.store import open_store, sqlite_connection
    from ctpipe.pipeline.run.local_runner import settle

    config = PipelineConfig(home=str(tmp_path / "home"), data_root=str(tmp_path))
    base = tmp_path / "home" / "serving" / config.model_name
    (base / ".incoming-3-deadbeef" / "variables").mkdir(parents=True)
    (base / "2").mkdir()
    settle(open_store(sqlite_connection(str(tmp_path / "m.sqlite"))), config)
    assert sorted(p.name for p in base.iterdir()) == ["2"]
