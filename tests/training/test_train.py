"""End to end on the tiny model: sharding invariance, exact resume after SIGKILL, corrupt-checkpoint fallback, NaN
stop, and config/data errors before anything is written.

The CLI runs in-process (``ankh_jax.train.main``) to share jax/TF start-up; only the SIGKILLed run is a subprocess.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from ankh_jax.io.checkpoints import load_params
from ankh_jax.model.config import T5Config
from ankh_jax.model.network import Transformer
from ankh_jax.train import main
from ankh_jax.training.metrics import read_metrics
from ankh_jax.training.optim import make_optimizer, make_schedule
from ankh_jax.training.partitioning import Partitioner
from ankh_jax.training.steps import StateLayout, jit_train_step, make_train_step

BASE_FLAGS = [
    "--gin_file=configs/pretrain_tiny_cpu.gin",
    "--gin.INPUTS_LENGTH=64", "--gin.BATCH_SIZE=8", "--gin.TRAIN_STEPS=8", "--gin.WARMUP_STEPS=2",
    "--gin.LoopConfig.log_every_steps=1", "--gin.CheckpointConfig.every_steps=4", "--gin.EvalConfig.every_steps=0",
    "--gin.LoopConfig.progress_bar=False", "--gin.make_input.shuffle_buffer_size=64",
    "--gin.LoopConfig.draw_plots=False",  # drawn (and checked) in the uninterrupted run only
]
COMPARED = ("loss", "accuracy", "learning_rate", "grad_norm", "z_loss", "target_tokens")


def _flags(model_dir, *extra):
    return BASE_FLAGS + [f"--gin.MODEL_DIR='{model_dir}'", *extra]


def _train_rows(model_dir):
    return {r["step"]: r for r in read_metrics(str(model_dir)) if r["kind"] == "train"}


def _assert_same_params(a, b):
    flat_a = jax.tree_util.tree_leaves_with_path(a)
    flat_b = dict(jax.tree_util.tree_leaves_with_path(b))
    assert len(flat_a) == len(flat_b)
    for path, x in flat_a:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(flat_b[path]), err_msg=jax.tree_util.keystr(path))


# ---------------------------------------------------------------------------------------------- sharding
def _synthetic_batch(rows=16, enc=24, dec=12, seed=0):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(3, 28, (rows, enc)).astype(np.int32)
    inputs[:, -5:] = 0  # some padding
    targets = rng.integers(3, 144, (rows, dec)).astype(np.int32)
    weights = np.ones((rows, dec), np.float32)
    weights[::3, -4:] = 0
    targets[weights == 0] = 0
    dec_in = np.concatenate([np.zeros((rows, 1), np.int32), targets[:, :-1]], axis=1)
    return {"encoder_input_tokens": inputs, "decoder_input_tokens": dec_in, "decoder_target_tokens": targets,
            "decoder_loss_weights": weights}


def _losses(mesh_shape, devices=None, num_microbatches=1, steps=2, init_params=None):
    model = Transformer(T5Config.tiny(num_encoder_layers=1, num_decoder_layers=1))  # 1 + 1 layers: faster compiles
    schedule = make_schedule(peak_learning_rate=0.01, warmup_steps=0, total_steps=10)
    tx = make_optimizer(schedule, adafactor_min_dim_size_to_factor=32)
    p = Partitioner(mesh_shape=mesh_shape, devices=devices)
    layout = StateLayout(model, tx, p)
    # The 1-device run initialises; the others start from the same values (created sharded by from_params).
    state = layout.create(jax.random.key(0)) if init_params is None else layout.from_params(init_params)
    first_params = jax.device_get(state.params)
    step = jit_train_step(make_train_step(model, tx, schedule, num_microbatches=num_microbatches), layout)
    out = []
    for i in range(steps):
        state, m = step(state, p.make_global_batch(_synthetic_batch()), jax.random.key(1))
        out.append(float(m["loss_sum"]) / float(m["weight_sum"]))
    return np.array(out), first_params


def test_meshes_give_the_same_losses_as_one_device():
    reference, init = _losses((1, 1, 1), devices=jax.devices()[:1])
    assert reference[-1] < reference[0]  # it trains
    for shape, micro in [((8, 1, 1), 1), ((2, 2, 2), 2), ((1, 1, 8), 1)]:
        losses, _ = _losses(shape, num_microbatches=micro, init_params=init)
        np.testing.assert_allclose(losses, reference, rtol=0, atol=1e-5, err_msg=f"mesh {shape}, {micro} micro-batches")


# ---------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """(a): 8 steps without interruption; checkpoints at 4 and 8."""
    model_dir = tmp_path_factory.mktemp("a") / "run"
    assert main(_flags(model_dir, "--gin.LoopConfig.draw_plots=True")) == 0
    return model_dir


def test_uninterrupted_run_writes_everything(uninterrupted):
    d = uninterrupted
    for name in ("config.gin", "model_config.json", "metrics.jsonl", "plots/training.png"):
        assert (d / name).is_file(), name
    assert sorted(os.listdir(d / "checkpoints")) == ["4", "8"]
    assert any(f.startswith("events.out") for f in os.listdir(d / "tensorboard" / "train"))
    gin_text = (d / "config.gin").read_text()
    assert "TRAIN_STEPS = 8" in gin_text and "LoopConfig.num_train_steps = %TRAIN_STEPS" in gin_text
    rows = _train_rows(d)
    assert sorted(rows) == list(range(1, 9))
    for r in rows.values():
        assert {"loss", "accuracy", "learning_rate", "grad_norm", "target_tokens_per_s", "mfu"} <= set(r)
    eval_rows = [r for r in read_metrics(str(d)) if r["kind"] == "eval"]
    assert eval_rows == []  # eval_every_steps=0
    config, params = load_params(str(d))
    assert config == T5Config.tiny()
    assert params["token_embedder"]["embedding"].shape == (144, 64)


def test_the_operative_gin_config_is_a_tensorboard_text_summary(uninterrupted):
    """As t5x: TensorBoard's Text tab shows the run's config.gin (read back from the event file)."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(uninterrupted / "tensorboard" / "train"),
                                             size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    (event,) = acc.Tensors("config/text_summary")
    text = event.tensor_proto.string_val[0].decode()
    assert event.step == 0
    for line in (uninterrupted / "config.gin").read_text().splitlines():
        if line and not line.startswith("#"):
            assert "    " + line in text.splitlines(), line


KILLER = textwrap.dedent("""
    import os, signal, sys, time
    from ankh_jax.training import metrics as metrics_writer
    write = metrics_writer.MetricsWriter.write
    def write_then_die(self, step, kind, scalars):
        write(self, step, kind, scalars)
        if step >= {kill_at}:
            # Die between checkpoints: once the async save of the previous one has committed.
            done = os.path.join(self.model_dir, "checkpoints", "{previous}")
            deadline = time.time() + 120
            while not os.path.isdir(done) and time.time() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
    metrics_writer.MetricsWriter.write = write_then_die
    from ankh_jax.train import main
    sys.exit(main(sys.argv[1:]))
""")


def test_sigkill_then_restart_is_bit_identical(uninterrupted, tmp_path, repo_root, capsys):
    """(b): killed at step 6 (after the checkpoint at 4), restarted: same final params and metrics after 4."""
    model_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    proc = subprocess.run([sys.executable, "-c", KILLER.format(kill_at=6, previous=4), *_flags(model_dir)],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert max(_train_rows(model_dir)) == 6
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["4"]
    capsys.readouterr()
    assert main(_flags(model_dir)) == 0
    assert "resumed from the checkpoint at step 4" in capsys.readouterr().out
    _assert_same_params(load_params(str(uninterrupted))[1], load_params(str(model_dir))[1])
    a, b = _train_rows(uninterrupted), _train_rows(model_dir)
    assert sorted(b) == list(range(1, 9))
    for step in range(5, 9):
        assert {k: a[step][k] for k in COMPARED} == {k: b[step][k] for k in COMPARED}, step


def test_corrupt_latest_checkpoint_uses_previous(uninterrupted, tmp_path, capsys):
    """(c): the checkpoint at 8 damaged: the restart says so, resumes from 4, and ends where (a) ended."""
    model_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, model_dir)
    for root, _, files in os.walk(model_dir / "checkpoints" / "8" / "params"):
        for f in files:
            if os.sep + "d" + os.sep in os.path.join(root, f):
                os.truncate(os.path.join(root, f), 10)
    capsys.readouterr()
    assert main(_flags(model_dir)) == 0
    out = capsys.readouterr().out
    assert "checkpoint at step 8" in out and "unreadable" in out and "falling back to step 4" in out
    assert "resumed from the checkpoint at step 4" in out
    assert (model_dir / "checkpoints_unreadable" / "8").is_dir()
    _assert_same_params(load_params(str(uninterrupted))[1], load_params(str(model_dir))[1])


def test_non_finite_loss_stops_naming_the_step(uninterrupted, tmp_path, capsys):
    """(d): an inf loss at step 9 (z-loss 1e38): exit 3, the message names step 9, checkpoint 8 intact."""
    model_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, model_dir)
    meta_before = (model_dir / "checkpoints" / "8" / "meta" / "metadata").read_text()
    capsys.readouterr()
    assert main(_flags(model_dir, "--gin.TRAIN_STEPS=12", "--gin.ProgramConfig.z_loss=1e38")) == 3
    err = capsys.readouterr().err
    assert "step 9" in err and "loss is inf" in err and "last good checkpoint is step 8" in err
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["4", "8"]
    assert (model_dir / "checkpoints" / "8" / "meta" / "metadata").read_text() == meta_before
    _assert_same_params(load_params(str(uninterrupted))[1], load_params(str(model_dir), step=8)[1])


def test_non_finite_loss_between_log_steps_is_caught_within_the_bound(uninterrupted, tmp_path, capsys):
    """Metrics are fetched every LoopConfig.log_every_steps only: an inf loss at step 9 is found at the log step 10,
    named as step 9, exit 3, and nothing is saved after it (checkpoints every 4: step 12 never comes)."""
    model_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, model_dir)
    capsys.readouterr()
    assert main(_flags(model_dir, "--gin.TRAIN_STEPS=12", "--gin.ProgramConfig.z_loss=1e38",
                       "--gin.LoopConfig.log_every_steps=5")) == 3
    err = capsys.readouterr().err
    assert "step 9: loss is inf" in err and "checked at step 10" in err
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["4", "8"]


@pytest.mark.parametrize("bad_flag,expected", [
    ("--gin.train.num_trian_steps=3", "num_trian_steps"),
    ("--gin.uniref50_data_dir.data_dir='/nonexistent/tfds'", "/nonexistent/tfds"),
])
def test_bad_config_fails_before_writing(tmp_path, capsys, bad_flag, expected):
    """(e): a misspelled binding or a missing data path: exit 2 naming it, and MODEL_DIR never created."""
    model_dir = tmp_path / "run"
    assert main(_flags(model_dir, bad_flag)) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert not model_dir.exists()


def test_metrics_rows_are_json_with_finite_numbers(uninterrupted):
    for line in (uninterrupted / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert np.isfinite(row["loss"]) and row["loss"] > 0


def test_continued_pretraining_from_a_huggingface_directory(uninterrupted, tmp_path, capsys):
    """init_from_hf: the exported model of (a) is the starting point (its first loss is (a)'s trained level)."""
    from ankh_jax.io.hf_export import export
    from ankh_jax.training.loop import _load_hf_params

    config, params = load_params(str(uninterrupted))
    hf_dir = tmp_path / "hf"
    export(config, params, str(hf_dir))
    _assert_same_params(params, _load_hf_params(str(hf_dir), config))
    with pytest.raises(ValueError, match="d_model: HF 64 vs gin 32"):
        _load_hf_params(str(hf_dir), config.replace(d_model=32))
    model_dir = tmp_path / "run"
    capsys.readouterr()
    assert main(_flags(model_dir, "--gin.TRAIN_STEPS=1", "--gin.WARMUP_STEPS=0",
                       f"--gin.CheckpointConfig.init_from_hf='{hf_dir}'")) == 0
    assert "initialised from the HuggingFace model" in capsys.readouterr().out
    first = _train_rows(model_dir)[1]["loss"]
    a = _train_rows(uninterrupted)
    assert first < a[1]["loss"] - 0.5 and abs(first - a[8]["loss"]) < 0.5


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path, monkeypatch, capsys):
    """Preemption: SIGTERM at step 3 -> a checkpoint at step 3 (between the regular ones) and a clean exit."""
    import signal

    from ankh_jax.training import metrics as metrics_writer

    write = metrics_writer.MetricsWriter.write

    def write_then_term(self, step, kind, scalars):
        write(self, step, kind, scalars)
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(metrics_writer.MetricsWriter, "write", write_then_term)
    model_dir = tmp_path / "run"
    assert main(_flags(model_dir)) == 0
    assert "preemption signal: saved the checkpoint at step 3" in capsys.readouterr().err
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["3"]
    assert max(_train_rows(model_dir)) == 3


def test_rates_count_training_steps_only():
    """steps/s and MFU come from the time spent in training steps: an eval or a checkpoint save in the interval
    (here 0.3 s of sleep, measured and excluded as the loop does) leaves them unchanged, while the wall-clock rate
    (for the ETA) includes it."""
    import time

    from ankh_jax.training.metrics import Timer

    timer = Timer()
    for _ in range(3):
        timer.step()
    started = time.perf_counter()
    time.sleep(0.3)  # an eval
    timer.exclude(time.perf_counter() - started)
    assert timer.steps == 3
    assert timer.busy_seconds() < 0.1
    assert timer.wall_seconds() >= 0.3


def test_checkpoint_of_the_size_rule_layout_is_converted_on_resume(tmp_path, capsys):
    """A run whose Adafactor kept optax's layout (unfactored [embed, heads, kv] kernels, as before the logical
    rule) resumes under the logical rule: the state is converted (and said so), never reset, and training goes on
    with the factored statistics saved from then on."""
    model_dir = tmp_path / "run"
    assert main(_flags(model_dir, "--gin.TRAIN_STEPS=4", "--gin.make_optimizer.adafactor_factored_by='size'")) == 0
    old = load_params(str(model_dir))[1]
    capsys.readouterr()
    assert main(_flags(model_dir, "--gin.TRAIN_STEPS=5", "--gin.LoopConfig.profile_steps=(5, 5)")) == 0
    out = capsys.readouterr().out
    assert "resumed from the checkpoint at step 4" in out and "converted them to the logical-axes factors" in out
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["4", "5"]
    from ankh_jax.io.checkpoints import CHECKPOINT_SUBDIR, Checkpointer, tree_shapes

    ckpt = Checkpointer(str(model_dir), save_interval_steps=1)
    shapes = tree_shapes(ckpt.manager.item_metadata(5)["opt_state"])
    ckpt.close()
    query = [k for k in shapes if "encoder/layers_0/attention/query/kernel" in k]
    assert {shapes[k] for k in query} == {(64,), (4, 16), (1,)}, {k: shapes[k] for k in query}  # v_row, v_col, v
    assert (model_dir / CHECKPOINT_SUBDIR).is_dir()
    new = load_params(str(model_dir))[1]
    moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), old, new)
    assert 0 < max(jax.tree_util.tree_leaves(moved)) < 0.1  # one ordinary step from step 4's parameters
    # LoopConfig.profile_steps: a jax.profiler trace of step 5 where TensorBoard's Profile tab reads it.
    traces = list((model_dir / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0
