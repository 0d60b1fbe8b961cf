"""``python -m ankh_jax.train ... --preflight`` on one host: the step compiles, the memory plan is printed, MODEL_DIR
is probed and left as it was, and a bad MODEL_DIR or mismatched host configuration is one line (exit 2). The
2-host mismatch itself: tests/multihost/test_pod_preflight.py."""

import os

from ankh_jax.train import main
from ankh_jax.training.preflight import differences

FLAGS = ["--gin_file=configs/pretrain_tiny_cpu.gin", "--gin.INPUTS_LENGTH=64", "--gin.BATCH_SIZE=8",
         "--gin.LoopConfig.progress_bar=False", "--gin.make_input.shuffle_buffer_size=64", "--preflight"]


def test_preflight_compiles_plans_and_writes_nothing(tmp_path, capsys):
    model_dir = tmp_path / "run"
    assert main(FLAGS + [f"--gin.MODEL_DIR='{model_dir}'"]) == 0
    out = capsys.readouterr().out
    assert "preflight: 1 host(s)" in out and "train step compiled for a global batch of 8" in out
    assert "GiB temporaries, peak" in out and "preflight passed" in out
    assert not model_dir.exists() and os.listdir(tmp_path) == []


def test_preflight_refuses_a_model_dir_it_cannot_create(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(FLAGS + [f"--gin.MODEL_DIR='{blocker}/run'"]) == 2
    err = capsys.readouterr().err
    assert f"cannot be created, {blocker} is a file" in err and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_differences_name_the_binding():
    a = {"version": "0.1.0", "config": "LoopConfig.log_every_steps = 1\nMODEL_DIR = '/x'\n"}
    b = {"version": "0.1.0", "config": "LoopConfig.log_every_steps = 7\nMODEL_DIR = '/x'\n"}
    assert differences(a, a) == ""
    assert differences(a, b).startswith("binding LoopConfig.log_every_steps differs")
    assert differences(a, dict(b, version="0.2.0")) == "ankh_jax 0.1.0 vs 0.2.0"
