"""A 2-host pod whose hosts share no directory: MODEL_DIR on gs:// (a local GCS emulator), each process in its
own working directory with its own HOME, TMPDIR and data directory. The promises of tests/multihost hold there:
SIGKILL of every host then the same command is bit-identical to an uninterrupted run, SIGTERM to one host saves
one agreed step, and the run moves from 2 hosts to 1 (elastic restore)."""

import os
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


def test_sigkill_every_host_then_the_same_command_is_bit_identical(reference, bucket, tmp_path):
    model_dir = f"{bucket}/run"
    # 1st life: both hosts die right after starting the async write of step 8 to the bucket.
    job = pod.launch(model_dir, pod.NO_EVAL, script=pod.KILL_AFTER_SAVE_STARTS.format(step=8),
                     log_dir=str(tmp_path / "life1"))
    assert job.wait(pod.TIMEOUT) == [-signal.SIGKILL] * 2, job.tail()
    assert 4 in pod.committed_steps(model_dir)
    # 2nd life, on hosts with fresh local disks: the lock left in the bucket belongs to a dead pid of this host.
    job = pod.run(model_dir, pod.NO_EVAL, log_dir=str(tmp_path / "life2"))
    assert "resumed from the checkpoint at step" in job.log(0), job.tail()
    assert pod.assert_same_checkpoint(model_dir, reference) == 12
    a, b = pod.rows(reference), pod.rows(model_dir)  # rows() fails on a step written twice
    assert sorted(b) == list(range(1, 13)) and all(a[s]["loss"] == b[s]["loss"] for s in b)
    assert not as_path(f"{model_dir}/.lock").exists()  # released at the end
    _no_local_gs_dir(tmp_path / "life1")
    _no_local_gs_dir(tmp_path / "life2")


def test_sigterm_to_one_host_then_an_elastic_restore_on_one_host(reference, bucket, tmp_path):
    model_dir = f"{bucket}/run"
    job = pod.launch(model_dir, pod.NO_EVAL, "--gin.CheckpointConfig.every_steps=1000", log_dir=str(tmp_path / "pod"))
    job.wait_for(lambda: pod.last_step(model_dir) >= 3, pod.TIMEOUT, "step 3")
    job.kill(signal.SIGTERM, which=[1])  # host 1 alone is preempted
    assert job.wait(120) == [0, 0], job.tail()
    saved = pod.committed_steps(model_dir)
    assert len(saved) == 1 and 3 <= saved[0] < 12, saved
    assert len(pod.meta(model_dir, saved[0])["input_states"]) == 2
    # The slice comes back smaller: 1 host with 8 devices reads both data shards and continues them exactly.
    job = pod.run(model_dir, pod.NO_EVAL, "--gin.CheckpointConfig.every_steps=1000",
                  "--gin.DataConfig.num_data_shards=2", processes=1, devices=8, log_dir=str(tmp_path / "one"))
    log = job.log(0)
    assert f"resumed from the checkpoint at step {saved[0]}" in log
    assert "written by 2 process(es), this run has 1" in log and "2 data shards continue exactly" in log
    a, b = pod.rows(reference), pod.rows(model_dir)
    assert sorted(b) == list(range(1, 13))
    for s in range(1, 13):  # another process count reduces in another order: equal within 1e-5, as 1 vs 2 hosts
        assert abs(a[s]["loss"] - b[s]["loss"]) <= 1e-5, s
    _no_local_gs_dir(tmp_path / "pod")
    _no_local_gs_dir(tmp_path / "one", processes=1)
