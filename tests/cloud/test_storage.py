"""The path layer against a local GCS: atomic writes, JSON lines without append, the object lock and its
staleness rule, commit markers, and the one-line refusals (a missing bucket, another scheme)."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from ankh_jax.errors import InputError
from ankh_jax.storage import atomic, lock, paths
from ankh_jax.storage.jsonl import JsonlWriter, read_jsonl


def test_as_path_keeps_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert os.fspath(paths.as_path("gs://b/run/")) == "gs://b/run"
    assert os.fspath(paths.as_path("run")) == os.path.join(str(tmp_path), "run")
    with pytest.raises(InputError, match="only local paths and gs:// URLs"):
        paths.as_path("s3://b/run")
    assert not (tmp_path / "gs:").exists()


def test_atomic_writes_and_local_staging_reach_the_bucket(bucket, tmp_path):
    atomic.write_json(f"{bucket}/a/b.json", {"x": 1})
    assert json.loads(paths.as_path(f"{bucket}/a/b.json").read_text()) == {"x": 1}
    with atomic.local_file(f"{bucket}/c.bin", suffix=".bin") as local:
        assert not local.startswith("gs:")
        with open(local, "wb") as f:
            f.write(b"\x00" * 1000)
    assert paths.as_path(f"{bucket}/c.bin").read_bytes() == b"\x00" * 1000
    with pytest.raises(RuntimeError), atomic.local_file(f"{bucket}/d.bin") as local:  # a failure uploads nothing
        with open(local, "wb") as f:
            f.write(b"half")
        raise RuntimeError("killed")
    assert not paths.as_path(f"{bucket}/d.bin").exists()


def test_jsonl_without_append_keeps_every_row_once_across_a_resume(bucket):
    path = f"{bucket}/run/metrics.jsonl"
    writer = JsonlWriter(path)
    for step in range(1, 6):
        writer.append({"step": step})
    assert [r["step"] for r in read_jsonl(path)[0]] == [1, 2, 3, 4, 5]
    # A resume from step 3: rows after it go, then the run writes 4.. again.
    resumed = JsonlWriter(path)
    resumed.keep(lambda r: r["step"] <= 3, read_jsonl(path)[0])
    for step in (4, 5, 6):
        resumed.append({"step": step})
    assert [r["step"] for r in read_jsonl(path)[0]] == [1, 2, 3, 4, 5, 6]


def test_missing_bucket_is_one_line_before_anything(gcs):
    with pytest.raises(InputError, match="bucket gs://no-such-bucket-x does not exist"):
        paths.check_reachable("gs://no-such-bucket-x/run", "MODEL_DIR")


def test_the_object_lock_refuses_a_second_holder_and_releases(bucket):
    first = lock.DirectoryLock(f"{bucket}/run", "training").acquire()
    owner = json.loads(paths.as_path(f"{bucket}/run/.lock").read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    with pytest.raises(lock.DirectoryInUseError, match=f"pid {os.getpid()} on host"):
        lock.DirectoryLock(f"{bucket}/run", "training").acquire()
    first.release()
    assert not paths.as_path(f"{bucket}/run/.lock").exists()
    lock.DirectoryLock(f"{bucket}/run", "training").acquire().release()


def test_a_killed_holder_on_this_host_leaves_a_lock_that_is_taken_over(bucket):
    """The pid in the lock object is gone: the rerun of a SIGKILLed command takes the lock at once."""
    code = ("import time; from ankh_jax.storage.lock import DirectoryLock; "
            f"DirectoryLock('{bucket}/run', 'training').acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(lock.DirectoryInUseError):
        lock.DirectoryLock(f"{bucket}/run", "training").acquire()
    holder.kill()
    holder.wait()
    taken = lock.DirectoryLock(f"{bucket}/run", "resumed").acquire()
    assert json.loads(paths.as_path(f"{bucket}/run/.lock").read_text())["purpose"] == "resumed"
    taken.release()


def test_a_lock_from_another_host_is_stale_only_after_its_heartbeat_ages(bucket, monkeypatch):
    other = {"purpose": "training", "host": "another-host", "pid": 1, "started": "then",
             "started_unix": time.time()}
    paths.filesystem().pipe_file(f"{bucket}/run/.lock", json.dumps(other).encode(), mode="create")
    with pytest.raises(lock.DirectoryInUseError, match="on host another-host"):
        lock.DirectoryLock(f"{bucket}/run", "training").acquire()
    monkeypatch.setattr(lock, "STALE_SECONDS", 0.5)
    time.sleep(1.0)
    held = lock.DirectoryLock(f"{bucket}/run", "training").acquire()
    assert json.loads(paths.as_path(f"{bucket}/run/.lock").read_text())["host"] == socket.gethostname()
    held.release()


def test_the_heartbeat_keeps_a_live_lock_fresh(bucket, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT_SECONDS", 0.2)
    held = lock.DirectoryLock(f"{bucket}/run", "training").acquire()
    time.sleep(1.0)
    fs = paths.filesystem()
    fs.invalidate_cache()
    beat = float(fs.info(f"{bucket}/run/.lock")["metadata"]["heartbeat"])
    assert time.time() - beat < 1.0
    held.release()


def test_markers_say_whether_a_multi_file_result_is_complete(bucket):
    assert atomic.read_marker(f"{bucket}/out", "COMMIT") is None
    atomic.write_marker(f"{bucket}/out", "COMMIT", {"complete": False})
    assert atomic.read_marker(f"{bucket}/out", "COMMIT") == {"complete": False}
    atomic.write_marker(f"{bucket}/out", "COMMIT", {"complete": True, "files": 2})
    assert atomic.read_marker(f"{bucket}/out", "COMMIT")["complete"] is True


def test_paired_outputs_are_written_to_the_bucket_the_primary_last(bucket):
    """What generate and score write (``storage.outputs.write_together``) goes to gs:// like a local path."""
    from ankh_jax.storage import outputs

    outputs.check_destinations({"--output": f"{bucket}/v.fasta", "--log_likelihoods": f"{bucket}/v.csv"})
    with pytest.raises(InputError, match="is the same file as the output"):
        outputs.check_destinations({"--output": f"{bucket}/v.csv", "--log_likelihoods": f"{bucket}/v.csv"})
    written = outputs.write_together([(f"{bucket}/v.csv", lambda f: f.write("id,ll\n")),
                                      (f"{bucket}/v.fasta", lambda f: f.write(">a\nMK\n"))])
    assert written == [f"{bucket}/v.csv", f"{bucket}/v.fasta"]
    assert paths.as_path(f"{bucket}/v.fasta").read_text() == ">a\nMK\n"
    assert paths.as_path(f"{bucket}/v.csv").read_text() == "id,ll\n"
