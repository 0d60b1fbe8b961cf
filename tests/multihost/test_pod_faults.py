"""What a 2-host job (2 processes x 4 fake devices, the real ``python -m ankh_jax.train``) survives:
every host SIGKILLed (also while an async checkpoint is being written), SIGTERM to one host only (preemption),
and a host that dies or hangs (the others stop in bounded time, never hang)."""

import signal
import time

import pytest
from pod_runs import (
    KILL_AFTER_SAVE_STARTS,
    NO_EVAL,
    TIMEOUT,
    assert_same_checkpoint,
    committed_steps,
    last_step,
    launch,
    meta,
    rows,
    run,
)

HEARTBEAT_S = 10  # pod_runs.BASE_FLAGS


@pytest.fixture(scope="module")
def reference(pod_reference):
    """12 steps on 2 processes without interruption (checkpoints at 4, 8, 12): the run's shared ``pod_reference``
    (tests/conftest.py), whose evaluation at 6 and 12 leaves the training state as it is without."""
    return pod_reference


def test_sigkill_every_host_even_during_an_async_save_then_rerun_is_bit_identical(reference, tmp_path):
    model_dir = tmp_path / "run"
    # 1st life: every process dies right after starting the async write of step 8.
    job = launch(model_dir, NO_EVAL, script=KILL_AFTER_SAVE_STARTS.format(step=8))
    assert job.wait(TIMEOUT) == [-signal.SIGKILL] * 2, job.tail()
    assert 4 in committed_steps(model_dir)
    # 2nd life: resumes from the newest committed checkpoint; killed from outside between checkpoints.
    job = launch(model_dir, NO_EVAL)
    job.wait_for(lambda: last_step(model_dir) >= 9, TIMEOUT, "step 9")
    job.kill(signal.SIGKILL)
    assert job.wait(60) == [-signal.SIGKILL] * 2, "the run finished before it could be killed"
    assert "resumed from the checkpoint at step" in job.log(0)
    # 3rd life: runs to the end.
    job = run(model_dir, NO_EVAL)
    assert "resumed from the checkpoint at step 8" in job.log(0)
    assert assert_same_checkpoint(model_dir, reference) == 12
    a, b = rows(reference), rows(model_dir)
    assert sorted(b) == list(range(1, 13))
    assert all(a[s]["loss"] == b[s]["loss"] for s in range(1, 13))


def test_sigterm_to_one_host_saves_one_agreed_step_and_the_rerun_continues(reference, tmp_path):
    model_dir = tmp_path / "run"
    job = launch(model_dir, NO_EVAL, "--gin.CheckpointConfig.every_steps=1000")
    job.wait_for(lambda: last_step(model_dir) >= 3, TIMEOUT, "step 3")
    job.kill(signal.SIGTERM, which=[1])  # process 1 alone is preempted
    assert job.wait(120) == [0, 0], job.tail()
    saved = committed_steps(model_dir)
    assert len(saved) == 1 and 3 <= saved[0] < 12, saved  # one step, the same for both hosts
    assert f"saved the checkpoint at step {saved[0]} and stopped" in job.log(0)
    assert len(meta(model_dir, saved[0])["input_states"]) == 2
    job = run(model_dir, NO_EVAL, "--gin.CheckpointConfig.every_steps=1000")
    assert f"resumed from the checkpoint at step {saved[0]}" in job.log(0)
    assert_same_checkpoint(model_dir, reference, 12)


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_a_lost_host_stops_the_others_within_the_heartbeat_timeout(tmp_path, fault):
    """killed: the next collective breaks at once; hung (SIGSTOP): jax's coordination service declares the
    silent process dead after heartbeat_timeout_seconds and terminates the others. Either way: no hang."""
    model_dir = tmp_path / "run"
    job = launch(model_dir, NO_EVAL, "--gin.TRAIN_STEPS=100000", "--gin.CheckpointConfig.every_steps=2")
    job.wait_for(lambda: last_step(model_dir) >= 3 and 2 in committed_steps(model_dir), TIMEOUT, "step 3")
    job.kill(signal.SIGKILL if fault == "killed" else signal.SIGSTOP, which=[1])
    started = time.time()
    try:
        code = job.procs[0].wait(timeout=HEARTBEAT_S + 50)
    finally:
        job.kill(signal.SIGKILL)
    took = time.time() - started
    assert code != 0 and took < HEARTBEAT_S + 50, (code, took)
    if fault == "hung":
        assert "stopped sending heartbeats" in job.log(0)
    assert 2 in committed_steps(model_dir)  # what was saved stays usable
