"""What the pretraining trainer survives: a changed configuration on resume, two trainers on one MODEL_DIR, a
metrics file cut mid-line, checkpoints all set aside, a misspelled command-line macro, MODEL_DIR that is a file.
(Kill, preemption and lost hosts: tests/training/test_train.py, tests/multihost/ and tests/cloud/test_pod_cloud.py.)"""

import os
import shutil
import subprocess
import sys

import pytest

from ankh_jax.train import main
from ankh_jax.training.metrics import read_metrics

FLAGS = ["--gin_file=configs/pretrain_tiny_cpu.gin", "--gin.INPUTS_LENGTH=64", "--gin.BATCH_SIZE=8",
         "--gin.TRAIN_STEPS=4", "--gin.WARMUP_STEPS=1", "--gin.LoopConfig.log_every_steps=1",
         "--gin.CheckpointConfig.every_steps=2", "--gin.EvalConfig.every_steps=0", "--gin.LoopConfig.progress_bar=False",
         "--gin.make_input.shuffle_buffer_size=64", "--gin.LoopConfig.draw_plots=False",
         "--gin.T5Config.num_encoder_layers=1", "--gin.T5Config.num_decoder_layers=1"]


def _flags(model_dir, *extra):
    return FLAGS + [f"--gin.MODEL_DIR='{model_dir}'", *extra]


def _tree(path) -> dict:
    """Every file under path with its size and mtime ('untouched' means this is unchanged); the lock files, which
    only say who holds the directory, left out."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            if f.startswith(".lock"):
                continue
            st = os.stat(os.path.join(root, f))
            out[os.path.relpath(os.path.join(root, f), path)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("finished") / "run"
    assert main(_flags(model_dir)) == 0
    return model_dir


@pytest.mark.parametrize("change,named", [
    ("--gin.T5Config.scan_layers=True", "scan_layers differs"),
    ("--gin.make_optimizer.name='adamw'", "another optimizer state"),
])
def test_a_changed_configuration_is_refused_and_the_checkpoints_stay(finished, tmp_path, capsys, change, named):
    model_dir = tmp_path / "run"
    shutil.copytree(finished, model_dir)
    before = _tree(model_dir)
    capsys.readouterr()
    assert main(_flags(model_dir, "--gin.TRAIN_STEPS=6", change)) == 2
    err = capsys.readouterr().err
    assert named in err and "Nothing was changed" in err and len(err.strip().splitlines()) == 1, err
    assert _tree(model_dir) == before  # not "unreadable", nothing moved aside, not even config.gin rewritten
    assert not (model_dir / "checkpoints_unreadable").exists()
    # The original command still resumes where the run was.
    assert main(_flags(model_dir, "--gin.TRAIN_STEPS=6")) == 0
    assert "resumed from the checkpoint at step 4" in capsys.readouterr().out


def test_checkpoints_all_set_aside_never_restart_from_zero(finished, tmp_path, capsys):
    model_dir = tmp_path / "run"
    shutil.copytree(finished, model_dir)
    os.makedirs(model_dir / "checkpoints_unreadable")
    for step in os.listdir(model_dir / "checkpoints"):
        shutil.move(model_dir / "checkpoints" / step, model_dir / "checkpoints_unreadable" / step)
    capsys.readouterr()
    assert main(_flags(model_dir, "--gin.TRAIN_STEPS=6")) == 2
    err = capsys.readouterr().err
    assert "Not starting again from step 0" in err and "checkpoints_unreadable" in err
    assert os.listdir(model_dir / "checkpoints") == []


def test_a_second_trainer_on_the_same_model_dir_is_refused_naming_the_first(finished, tmp_path, capsys, repo_root):
    model_dir = tmp_path / "run"
    shutil.copytree(finished, model_dir)
    hold = ("import sys, time; from ankh_jax.storage.lock import DirectoryLock; "
            "lock = DirectoryLock(sys.argv[1], 'ankh_jax.train').acquire(); print('locked', flush=True); time.sleep(300)")
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(model_dir)], cwd=repo_root, env=dict(os.environ, PYTHONPATH=str(repo_root)), stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = read_metrics(str(model_dir))
        capsys.readouterr()
        assert main(_flags(model_dir, "--gin.TRAIN_STEPS=6")) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "in use by another run" in err and "host" in err, err
        assert read_metrics(str(model_dir)) == before  # the second run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert main(_flags(model_dir, "--gin.TRAIN_STEPS=5")) == 0  # the lock died with its holder


def test_a_metrics_file_cut_mid_line_does_not_block_the_resume(finished, tmp_path):
    model_dir = tmp_path / "run"
    shutil.copytree(finished, model_dir)
    with open(model_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "kind": "train", "lo')  # a crash while writing the row of step 5
    assert main(_flags(model_dir, "--gin.TRAIN_STEPS=6")) == 0
    rows = read_metrics(str(model_dir))
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert (model_dir / "metrics.jsonl").read_text().endswith("}\n")


def test_a_misspelled_macro_on_the_command_line_is_an_error(tmp_path, capsys):
    model_dir = tmp_path / "run"
    assert main(_flags(model_dir, "--gin.TRAIN_STEP=5")) == 2
    err = capsys.readouterr().err
    assert "TRAIN_STEP = 5" in err and "did you mean TRAIN_STEPS" in err
    assert not model_dir.exists()


def test_model_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    model_dir = tmp_path / "run"
    model_dir.write_text("not a directory")
    assert main(_flags(model_dir)) == 2
    err = capsys.readouterr().err
    assert "is a file, not a directory" in err and len(err.strip().splitlines()) == 1
    assert model_dir.read_text() == "not a directory"


def test_a_model_dir_that_cannot_be_written_is_one_line_before_any_compute(capsys):
    """/sys refuses new files even to root (a read-only MODEL_DIR or a mount without space gives the same line):
    found by the write probe before the model is built, not by orbax after the first steps."""
    assert main(_flags("/sys/ankh_jax_run")) == 2
    err = capsys.readouterr().err
    assert "MODEL_DIR /sys/ankh_jax_run: /sys is read-only" in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists("/sys/ankh_jax_run")


@pytest.mark.parametrize("binding,named", [
    ("--gin.WARMUP_STEPS=40", "total_steps (4) > warmup_steps (40)"),  # TRAIN_STEPS=4: the schedule cannot decay
    ("--gin.BATCH_SIZE=6", "DataConfig.global_batch_size (BATCH_SIZE) = 6 is not divisible by the data-parallel size 8"),
])
def test_an_impossible_run_configuration_is_one_line_before_anything_is_written(tmp_path, capsys, binding, named):
    model_dir = tmp_path / "run"
    assert main(_flags(model_dir, binding)) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1, err
    assert not model_dir.exists()


_BUG_IN_A_STEP = """
import sys
from ankh_jax import train
from ankh_jax.training import program

def jit_train_step(step_fn, layout):
    def step(*args):
        raise ValueError("a bug inside the train step")
    return step

program.jit_train_step = jit_train_step
sys.exit(train.main(sys.argv[1:]))
"""


def test_a_value_error_inside_a_train_step_keeps_its_traceback(tmp_path, repo_root):
    """A ValueError that is not an InputError is a bug (in ankh_jax, jax, orbax or optax), never "bad input":
    the traceback is printed and the exit status is 1, not the one-line exit 2 of a user error."""
    model_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", _BUG_IN_A_STEP, *_flags(model_dir)], cwd=repo_root,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ValueError: a bug inside the train step" in proc.stderr
    assert "error: a bug inside the train step" not in proc.stderr


def test_an_unquoted_gin_string_names_the_binding_and_the_quotes(tmp_path, capsys):
    """Before: ``SyntaxError: Unable to parse value. (line 3)``, naming neither the binding nor the fix."""
    model_dir = tmp_path / "run"
    assert main(FLAGS + [f"--gin.MODEL_DIR={model_dir}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"binding 'MODEL_DIR = {model_dir}'" in err[0], err
    assert f"""a string needs inner quotes: --gin.MODEL_DIR="'{model_dir}'\"""" in err[0]
    assert not model_dir.exists()
