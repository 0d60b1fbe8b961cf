"""The trainer when its disk runs out of room: a checkpoint that cannot be written is one line naming the step and
the last complete checkpoint, no orbax temporary folder is left, and the same command resumes once there is room;
a disk without room for one checkpoint is refused before the first step."""

import os
import subprocess
import sys

import pytest
from test_trainer_faults import _flags

from ankh_jax.io.checkpoints import TMP_MARK
from ankh_jax.storage import capacity
from ankh_jax.train import main
from ankh_jax.training.metrics import read_metrics

# A file-size limit (ulimit -f) makes the OS refuse to grow any file past it, as a full disk refuses every write:
# the same failure inside tensorstore's C++ writer, with "File too large" (EFBIG) for "No space left on device".
# 8 kB admits the metrics, TensorBoard and config files of 4 steps (each under 8 kB) and no checkpoint: its array
# metadata alone is ~10 kB and ~40 kB. (The array data is no bound: tensorstore splits it into more, smaller files
# when the machine is busy, 55-90 kB each where a quiet machine writes 150-420 kB.)
_WITH_A_FILE_SIZE_LIMIT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (8_000, 8_000))
from ankh_jax.train import main
sys.exit(main(sys.argv[1:]))
"""


def _leftovers(model_dir) -> list[str]:
    return [os.path.join(root, name) for root, dirs, files in os.walk(model_dir) for name in dirs + files
            if TMP_MARK in name]


def test_a_checkpoint_without_room_is_one_line_leaves_nothing_unfinished_and_the_rerun_resumes(tmp_path, repo_root,
                                                                                               capsys):
    model_dir = tmp_path / "run"
    assert main(_flags(model_dir, "--gin.TRAIN_STEPS=2")) == 0  # a complete checkpoint at step 2
    proc = subprocess.run([sys.executable, "-c", _WITH_A_FILE_SIZE_LIMIT, *_flags(model_dir)], cwd=repo_root,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", ANKH_JAX_COMPILATION_CACHE=""), check=False,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    # Before: 860 lines of stderr with 81 tracebacks (orbax's background threads, tensorstore's callbacks).
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m ankh_jax.train: error: ") and "File too large while writing the checkpoint " \
        "at step 4; its unfinished files were removed. The last complete checkpoint is step 2" in last, last
    assert not proc.stderr.replace(last, "").count("error"), proc.stderr
    assert _leftovers(model_dir) == [] and sorted(os.listdir(model_dir / "checkpoints")) == ["2"], (_leftovers(model_dir), proc.stderr)
    # With room again, the same command resumes from step 2 and writes every metrics row once.
    assert main(_flags(model_dir)) == 0
    assert "resumed from the checkpoint at step 2" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(model_dir) if r["kind"] == "train"] == [1, 2, 3, 4]
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["2", "4"]


def test_a_disk_without_room_for_one_checkpoint_is_refused_before_the_first_step(tmp_path, capsys, monkeypatch):
    model_dir = tmp_path / "run"
    monkeypatch.setattr(capacity, "free_bytes", lambda path: 2**20)  # 1 MiB free: the state and its margin need more
    assert main(_flags(model_dir)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{model_dir / 'checkpoints'}: No space left on device for one checkpoint of this run: " \
        "it needs about 1." in err[0] and "the disk has 1.0 MiB free. The last complete checkpoint is none yet" in err[0]
    assert not (model_dir / "metrics.jsonl").exists() and os.listdir(model_dir / "checkpoints") == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs), where this machine lets the test mount one (root, outside most sandboxes)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], check=False,
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here; test_a_disk_without_room_for_one_checkpoint_... covers the check")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_a_real_full_disk_is_refused_before_the_first_step(tiny_disk, capsys):
    model_dir = tiny_disk / "run"
    assert main(_flags(model_dir)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device for one checkpoint of this run" in err[0], err
    assert _leftovers(tiny_disk) == [] and os.listdir(model_dir / "checkpoints") == []
