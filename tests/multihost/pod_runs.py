"""Shared pieces of the multi-process trainer tests: the tiny run's flags and readers of what a run left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import jax
import numpy as np
from harness import Job, start

from ankh_jax.storage.paths import as_path

BASE_FLAGS = [
    "--gin_file=configs/pretrain_tiny_cpu.gin",
    "--gin.INPUTS_LENGTH=64", "--gin.BATCH_SIZE=8", "--gin.TRAIN_STEPS=12", "--gin.WARMUP_STEPS=2",
    "--gin.LoopConfig.log_every_steps=1", "--gin.CheckpointConfig.every_steps=4", "--gin.EvalConfig.every_steps=6",
    "--gin.EvalConfig.steps=None", "--gin.LoopConfig.progress_bar=False", "--gin.make_input.shuffle_buffer_size=64",
    "--gin.LoopConfig.draw_plots=False",  # tests/training/test_train.py covers the plots
    # A lost host ends the job after this long (the default is 100 s).
    "--gin.initialize_distributed.heartbeat_timeout_seconds=10",
]
HEARTBEAT_S = 10  # the binding above
LOST_HOST_BOUND_S = HEARTBEAT_S + 50  # how long the other host may take to stop (a loaded 2-core machine)
TIMEOUT = 420  # seconds for one multi-process run on a loaded 2-core machine
NO_EVAL = "--gin.EvalConfig.every_steps=0"


def flags(model_dir, *extra) -> list[str]:
    return BASE_FLAGS + [f"--gin.MODEL_DIR='{model_dir}'", *extra]


def launch(model_dir, *extra, processes: int = 2, devices: int = 4, script: str | None = None,
           log_dir: str | None = None) -> Job:
    """The real entry point on ``processes`` processes x ``devices`` fake devices (or ``python -c script``).

    A ``gs://`` MODEL_DIR runs the hosts with no directory in common (``harness.start(private_dirs=True)``): each
    has its own working directory, HOME, TMPDIR and data directory, and names the gin file as an installed
    config; ``log_dir`` is then required."""
    args = ["-c", script] if script else ["-m", "ankh_jax.train"]
    private = os.fspath(model_dir).startswith("gs://")
    run_flags = flags(model_dir, *extra)
    if private:
        run_flags = [f.replace("--gin_file=configs/", "--gin_file=") for f in run_flags]
    return start([*args, *run_flags], num_processes=processes, devices_per_process=devices,
                 log_dir=log_dir or f"{model_dir}_logs", private_dirs=private)


def lose_host(job: Job, sig: int) -> tuple[int | None, float]:
    """Host 1 lost (``sig``: SIGKILL or SIGSTOP): process 0's exit code (None if it was still running after
    :data:`LOST_HOST_BOUND_S`) and the seconds it took; every process is killed afterwards."""
    job.kill(sig, which=[1])
    started = time.time()
    try:
        code = job.procs[0].wait(timeout=LOST_HOST_BOUND_S)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        job.kill(signal.SIGKILL)
    return code, time.time() - started


def run(model_dir, *extra, **kw) -> Job:
    job = launch(model_dir, *extra, **kw)
    codes = job.wait(TIMEOUT)
    assert codes == [0] * len(codes), f"exit codes {codes}\n{job.tail()}"
    return job


def rows(model_dir, kind: str = "train") -> dict[int, dict]:
    """The ``kind`` rows of MODEL_DIR's metrics.jsonl (local or gs://) by step; a step written twice fails."""
    out: dict[int, dict] = {}
    for line in as_path(model_dir).joinpath("metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["kind"] == kind:
            assert row["step"] not in out, f"step {row['step']} written twice: two writers?"
            out[row["step"]] = row
    return out


def last_step(model_dir) -> int:
    try:
        return max(rows(model_dir))
    except (OSError, ValueError):
        return 0


def committed_steps(model_dir) -> list[int]:
    """The checkpoint steps under MODEL_DIR (local or gs://), in order."""
    folder = as_path(model_dir) / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def meta(model_dir, step: int) -> dict:
    return json.loads((as_path(model_dir) / "checkpoints" / str(step) / "meta" / "metadata").read_text())


def state(model_dir, step: int | None = None):
    """(params, opt_state) of a checkpoint as numpy, read on this (single) process."""
    import orbax.checkpoint as ocp

    directory = as_path(model_dir) / "checkpoints"
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                               item_handlers={"params": ocp.StandardCheckpointHandler(),
                                              "opt_state": ocp.StandardCheckpointHandler()}) as manager:
        step = manager.latest_step() if step is None else step
        metadata = manager.item_metadata(step)
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        out = []
        for item in ("params", "opt_state"):
            tree = getattr(metadata[item], "tree", metadata[item])
            abstract = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=one),
                                              tree, is_leaf=lambda m: hasattr(m, "shape"))
            restored = manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract)}))
            out.append(jax.tree_util.tree_map(np.asarray, restored[item]))
        return step, out[0], out[1]


def assert_bit_identical(a, b, what: str) -> None:
    fa = jax.tree_util.tree_leaves_with_path(a)
    fb = dict(jax.tree_util.tree_leaves_with_path(b))
    assert len(fa) == len(fb), what
    for path, x in fa:
        np.testing.assert_array_equal(x, fb[path], err_msg=f"{what} {jax.tree_util.keystr(path)}")


def assert_same_checkpoint(model_dir, reference, step: int | None = None) -> int:
    """MODEL_DIR's checkpoint at ``step`` (default: the newest) holds the same step, parameters and optimizer
    state, bit for bit, as REFERENCE's; returns the step."""
    step, params, opt_state = state(model_dir, step)
    ref_step, ref_params, ref_opt = state(reference, step)
    assert step == ref_step, (step, ref_step)
    assert_bit_identical(params, ref_params, "params")
    assert_bit_identical(opt_state, ref_opt, "opt_state")
    return step


KILL_AFTER_SAVE_STARTS = """
import os, signal, sys
from ankh_jax.io import checkpoints
save = checkpoints.Checkpointer.save
def save_then_die(self, step, *args):
    started = save(self, step, *args)
    if step == {step}:  # the async write of this step is under way: every process dies now
        os.kill(os.getpid(), signal.SIGKILL)
    return started
checkpoints.Checkpointer.save = save_then_die
from ankh_jax.train import main
sys.exit(main(sys.argv[1:]))
"""

SIGKILL, SIGTERM = signal.SIGKILL, signal.SIGTERM
