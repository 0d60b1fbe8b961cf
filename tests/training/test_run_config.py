"""A pretraining run's configuration is checked before anything is read or written: each bad value is one line on
stderr, exit 2, naming the gin binding, and MODEL_DIR is never created (through ``python -m ankh_jax.train``)."""

import pytest

from ankh_jax.train import main

FLAGS = ["--gin_file=configs/pretrain_tiny_cpu.gin", "--gin.LoopConfig.progress_bar=False"]


@pytest.mark.parametrize("binding, named", [
    ("--gin.TRAIN_STEPS=30", "TRAIN_STEPS"),  # below the tiny config's 40 warm-up steps
    ("--gin.TRAIN_STEPS=0", "LoopConfig.num_train_steps (TRAIN_STEPS)"),
    ("--gin.BATCH_SIZE=12", "DataConfig.global_batch_size (BATCH_SIZE) = 12 is not divisible by the data-parallel size 8"),
    ("--gin.INPUTS_LENGTH=1024", "DataConfig.feature_lengths['inputs'] (INPUTS_LENGTH) = 1024"),
    ("--gin.span_corruption.noise_density=0.95", "needs 121 sentinels"),  # 95% of 127 residues
    ("--gin.EvalConfig.every_steps=-5", "EvalConfig.every_steps"),
    ("--gin.EvalConfig.steps=0", "EvalConfig.steps"),
    ("--gin.CheckpointConfig.every_steps=0", "CheckpointConfig.every_steps"),
    ("--gin.LoopConfig.log_every_steps=-1", "LoopConfig.log_every_steps"),
    ("--gin.CheckpointConfig.keep=0", "CheckpointConfig.keep"),
    ("--gin.ProgramConfig.num_microbatches=3", "ProgramConfig.num_microbatches = 3"),
])
def test_bad_configuration_is_one_line_exit_2_naming_the_binding(tmp_path, capsys, binding, named):
    model_dir = tmp_path / "run"
    assert main(FLAGS + [f"--gin.MODEL_DIR='{model_dir}'", binding]) == 2
    err = capsys.readouterr().err
    assert named in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not model_dir.exists()
