"""``python -m ankh_jax.train`` with MODEL_DIR on gs://, run from a directory that is not the checkout, the
emulator named only by STORAGE_EMULATOR_HOST: a missing bucket is one line before any compute; a run killed while
its async checkpoint is being uploaded resumes with the same command, through storage that fails requests with 503
and drops connections, and ends bit-identical to an uninterrupted run."""

import os
import signal
import subprocess
import sys

import pytest
from harness import xla_flags
from pod_runs import BASE_FLAGS, KILL_AFTER_SAVE_STARTS, assert_bit_identical, rows, state

from ankh_jax.storage.emulator import FaultProxy, GcsEmulator, free_port
from ankh_jax.storage.paths import as_path
from ankh_jax.train import main

FLAGS = [f.replace("--gin_file=configs/", "--gin_file=") for f in BASE_FLAGS] + ["--gin.EvalConfig.every_steps=0"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 420
# The share of requests the proxy fails (HTTP 503) and drops (connection closed unanswered) in the faulty run.
ERROR_RATE, DROP_RATE = 0.05, 0.02


def train(model_dir: str, cwd, *extra, script: str | None = None) -> subprocess.CompletedProcess:
    """The trainer in a fresh process, 8 fake devices, from ``cwd`` (outside the checkout)."""
    args = ["-c", script] if script else ["-m", "ankh_jax.train"]
    env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, *args, *FLAGS, f"--gin.MODEL_DIR='{model_dir}'", *extra], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def test_a_bucket_that_does_not_exist_is_one_line_before_any_compute(gcs, tmp_path):
    done = train("gs://no-such-bucket-anywhere/run", tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "MODEL_DIR gs://no-such-bucket-anywhere/run: bucket gs://no-such-bucket-anywhere does not exist" in last
    assert "step" not in done.stdout and not os.path.exists(tmp_path / "gs:")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in this process (8 devices, as ``train`` gives its processes) on local disk: where
    the checkpoints live changes no number."""
    model_dir = tmp_path_factory.mktemp("reference") / "run"
    assert main([*FLAGS, f"--gin.MODEL_DIR='{model_dir}'"]) == 0
    return model_dir


def test_killed_mid_upload_then_resumed_through_faulty_storage_is_bit_identical(reference, gcs, tmp_path):
    _, ref_params, ref_opt = state(reference)
    port = free_port()  # the emulator hands out upload URLs on the proxy, so every request passes it
    with GcsEmulator(external_url=f"http://127.0.0.1:{port}") as faulty, \
            FaultProxy(faulty.url, error_rate=ERROR_RATE, drop_rate=DROP_RATE, seed=1, port=port) as proxy:
        model_dir = faulty.create_bucket("faulty") + "/run"
        first = train(model_dir, tmp_path, script=KILL_AFTER_SAVE_STARTS.format(step=8))
        assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
        second = train(model_dir, tmp_path)
        assert second.returncode == 0, second.stderr[-3000:]
        assert "resumed from the checkpoint at step" in second.stdout
        step, params, opt_state = state(model_dir)
        assert step == 12
        assert_bit_identical(params, ref_params, "params")
        assert_bit_identical(opt_state, ref_opt, "opt_state")
        assert sorted(rows(model_dir)) == list(range(1, 13))  # every row once
        assert not as_path(f"{model_dir}/.lock").exists()
        counts = dict(proxy.counts)
    assert counts["errors_503"] > 0 and counts["dropped"] > 0, counts
    logged = (first.stderr + second.stderr).count("object storage:")  # retries are logged, not hidden
    assert logged > 0, (counts, second.stderr[-2000:])
    print(f"fault proxy: {counts}; retries logged by the trainer: {logged}")
    assert not os.path.exists(tmp_path / "gs:")
