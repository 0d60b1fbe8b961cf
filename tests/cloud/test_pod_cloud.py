"""A 2-host pod whose hosts share no directory: MODEL_DIR on gs:// (a local GCS emulator), each process in its
own working directory with its own HOME, TMPDIR and data directory, as on a Cloud TPU slice. What the pod
survives there: every host SIGKILLed while an async checkpoint is being uploaded, then one host lost (the other
stops in bounded time), then the same command, bit-identical to an uninterrupted run; SIGTERM to one host saves
one agreed step, and the same command continues from it, bit-identical. (A hung host: tests/multihost/
test_pod_faults.py; other host counts: tests/multihost/test_pod_training.py.)"""

import os
import re
import signal

import pod_runs as pod
import pytest
from harness import REPO, host_dirs

from ankh_jax.storage.paths import as_path


def _no_local_gs_dir(log_dir, processes: int = 2) -> None:
    """No host ever made a local directory named gs: (a URL passed to os.path would)."""
    for i in range(processes):
        assert not os.path.exists(os.path.join(host_dirs(log_dir, i)["cwd"], "gs:"))
    assert not os.path.exists(os.path.join(REPO, "gs:"))


@pytest.fixture(scope="module")
def reference(pod_reference):
    """12 uninterrupted steps on 2 hosts, checkpoints at 4, 8 and 12: the run's shared ``pod_reference`` on local
    disk (tests/conftest.py). Where the checkpoints live changes no number, so the runs in the bucket compare with
    it bit for bit."""
    return pod_reference


def _resumed_from(log: str) -> int:
    found = re.search(r"resumed from the checkpoint at step (\d+)", log)
    assert found, log[-3000:]
    return int(found.group(1))


def test_every_host_killed_mid_upload_then_a_lost_host_then_the_same_command_is_bit_identical(reference, bucket,
                                                                                               tmp_path):
    model_dir = f"{bucket}/run"
    lives = [str(tmp_path / f"life{i}") for i in (1, 2, 3)]
    # 1st life: both hosts die right after starting the async write of step 8 to the bucket.
    job = pod.launch(model_dir, pod.NO_EVAL, script=pod.KILL_AFTER_SAVE_STARTS.format(step=8), log_dir=lives[0])
    assert job.wait(pod.TIMEOUT) == [-signal.SIGKILL] * 2, job.tail()
    assert 4 in pod.committed_steps(model_dir)
    # 2nd life, on hosts with fresh local disks: the lock left in the bucket belongs to a dead pid of this host and
    # is taken over. After step 9, host 1 alone is killed: host 0's next collective breaks and it stops, non-zero,
    # in bounded time (never a hang), leaving the committed checkpoints usable.
    job = pod.launch(model_dir, pod.NO_EVAL, log_dir=lives[1])
    job.wait_for(lambda: pod.last_step(model_dir) >= 9, pod.TIMEOUT, "step 9")
    code, took = pod.lose_host(job, signal.SIGKILL)
    assert code not in (0, None) and took < pod.LOST_HOST_BOUND_S, (code, took, job.tail())
    assert _resumed_from(job.log(0)) >= 4
    # 3rd life: the same command resumes from the newest committed checkpoint and runs to the end.
    job = pod.run(model_dir, pod.NO_EVAL, log_dir=lives[2])
    assert _resumed_from(job.log(0)) in (4, 8)
    assert pod.assert_same_checkpoint(model_dir, reference) == 12
    a, b = pod.rows(reference), pod.rows(model_dir)  # rows() fails on a step written twice
    assert sorted(b) == list(range(1, 13)) and all(a[s]["loss"] == b[s]["loss"] for s in b)
    assert not as_path(f"{model_dir}/.lock").exists()  # released at the end
    for life in lives:
        _no_local_gs_dir(life)


def test_sigterm_to_one_host_saves_one_agreed_step_and_the_same_command_continues(reference, bucket, tmp_path):
    model_dir = f"{bucket}/run"
    job = pod.launch(model_dir, pod.NO_EVAL, "--gin.CheckpointConfig.every_steps=1000", log_dir=str(tmp_path / "a"))
    job.wait_for(lambda: pod.last_step(model_dir) >= 3, pod.TIMEOUT, "step 3")
    job.kill(signal.SIGTERM, which=[1])  # host 1 alone is preempted
    assert job.wait(120) == [0, 0], job.tail()
    saved = pod.committed_steps(model_dir)
    assert len(saved) == 1 and 3 <= saved[0] < 12, saved  # one step, the same for both hosts
    assert f"saved the checkpoint at step {saved[0]} and stopped" in job.log(0)
    assert len(pod.meta(model_dir, saved[0])["input_states"]) == 2
    job = pod.run(model_dir, pod.NO_EVAL, "--gin.CheckpointConfig.every_steps=1000", log_dir=str(tmp_path / "b"))
    assert _resumed_from(job.log(0)) == saved[0]
    assert pod.assert_same_checkpoint(model_dir, reference, 12) == 12
    a, b = pod.rows(reference), pod.rows(model_dir)
    assert sorted(b) == list(range(1, 13)) and all(a[s]["loss"] == b[s]["loss"] for s in b)
    _no_local_gs_dir(tmp_path / "a")
    _no_local_gs_dir(tmp_path / "b")
