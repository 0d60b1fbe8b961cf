"""A host of a 2-host job (2 processes x 4 fake devices, the real ``python -m ankh_jax.train``) that hangs: the
others stop in bounded time, never hang. (Every host SIGKILLed, also mid async save, a host killed, and SIGTERM to
one host: tests/cloud/test_pod_cloud.py, on hosts that share no disk.)"""

import signal

from pod_runs import LOST_HOST_BOUND_S, NO_EVAL, TIMEOUT, committed_steps, last_step, launch, lose_host


def test_a_hung_host_stops_the_others_within_the_heartbeat_timeout(tmp_path):
    """SIGSTOP: jax's coordination service declares the silent process dead after heartbeat_timeout_seconds and
    terminates the others, naming it; what was saved stays usable."""
    model_dir = tmp_path / "run"
    job = launch(model_dir, NO_EVAL, "--gin.TRAIN_STEPS=100000", "--gin.CheckpointConfig.every_steps=2")
    job.wait_for(lambda: last_step(model_dir) >= 3 and 2 in committed_steps(model_dir), TIMEOUT, "step 3")
    code, took = lose_host(job, signal.SIGSTOP)
    assert code not in (0, None) and took < LOST_HOST_BOUND_S, (code, took)
    assert "stopped sending heartbeats" in job.log(0)
    assert 2 in committed_steps(model_dir)
