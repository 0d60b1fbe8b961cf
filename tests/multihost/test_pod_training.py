"""A 2-host pod slice on this CPU: 2 processes x 4 fake devices running the real ``python -m ankh_jax.train``
give the same losses and eval rows as one process with 8 devices, each host reads its own shard, only process 0
writes, and a checkpoint moves between 2 hosts and 1 (elastic restart), also onto a mesh whose fsdp axis spans
the hosts."""

import os
import shutil
import types

import jax
import numpy as np
import pytest
from pod_runs import flags, meta, rows, run, state

from ankh_jax.train import main

STEPS = list(range(1, 13))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process, 8 devices, mesh (8,1,1), 12 steps, eval at 6 and 12 over the whole split; the
    data in 2 shards, as 2 hosts read it (DataConfig.num_data_shards), so the global batches are the same."""
    model_dir = tmp_path_factory.mktemp("single") / "run"
    assert main(flags(model_dir, "--gin.DataConfig.num_data_shards=2")) == 0
    return model_dir


@pytest.fixture(scope="module")
def pod(pod_reference):
    """The same run on 2 processes x 4 devices (the run's shared ``pod_reference``, tests/conftest.py)."""
    return pod_reference


def test_two_hosts_train_and_evaluate_like_one(single, pod):
    a, b = rows(single), rows(pod)
    assert sorted(a) == sorted(b) == STEPS
    for step in STEPS:
        assert abs(a[step]["loss"] - b[step]["loss"]) <= 1e-5, step
        assert a[step]["target_tokens"] == b[step]["target_tokens"], step
    assert a[12]["loss"] < a[1]["loss"] - 0.5  # it trains
    ea, eb = rows(single, "eval"), rows(pod, "eval")
    assert sorted(ea) == sorted(eb) == [6, 12]
    for step in (6, 12):
        # Every validation protein once, masked by (seed, its id): the same tokens however many hosts read them.
        assert ea[step]["target_tokens"] == eb[step]["target_tokens"] > 0
        assert abs(ea[step]["loss"] - eb[step]["loss"]) <= 1e-5 and abs(ea[step]["accuracy"] - eb[step]["accuracy"]) <= 1e-6


def test_each_host_reads_its_own_shard_and_only_process_0_writes(pod):
    saved = meta(pod, 12)
    assert saved["num_processes"] == 2
    positions = saved["input_states"]
    # Host i read data shard i of 2 (tests/data/test_input_pipeline.py proves those shards disjoint and
    # complete), 12 batches of 4 examples each, in epoch 0, and its position was saved.
    assert [(s["config"]["shard_id"], s["config"]["num_shards"], s["config"]["batch_size"]) for s in positions] == \
        [(0, 2, 4), (1, 2, 4)]
    assert [(s["epoch"], s["position"]) for s in positions] == [(0, 48), (0, 48)]
    # One writer: every metrics row once (rows() asserts it), one TensorBoard file per kind, the lock held by
    # process 0 (whose pid is in its log's lock owner record).
    for kind in ("train", "eval"):
        events = [f for f in os.listdir(pod / "tensorboard" / kind) if f.startswith("events.out")]
        assert len(events) == 1, (kind, events)
    assert (pod / "config.gin").read_text().count("LoopConfig.num_train_steps") == 1
    assert sorted(os.listdir(pod / "checkpoints")) == ["12", "4", "8"]


def test_eval_rows_are_the_loss_over_the_whole_validation_split(single):
    """A known answer for the eval path: the row at step 12 equals the model's float64 cross-entropy over every
    validation batch, computed here from the checkpoint at step 12 and the same validation input."""
    import ankh_jax.tasks.pretraining  # noqa: F401  (registers the uniref50 tasks)
    import gin

    from ankh_jax.data.input_pipeline import make_input
    from ankh_jax.io.checkpoints import load_params
    from ankh_jax.model.network import Transformer

    config, params = load_params(str(single), step=12)
    model = Transformer(config)
    gin.clear_config()  # the objective's defaults are the run's (configs/runs/pretrain.gin binds the same values)
    it = make_input("uniref50_ankh", "validation", feature_lengths={"inputs": 64}, batch_size=8, seed=0,
                    shuffle=False, repeat=False, shard_id=0, num_shards=1)
    loss, weight, correct = 0.0, 0.0, 0.0
    apply = jax.jit(lambda p, b: model.apply({"params": p}, b["encoder_input_tokens"], b["decoder_input_tokens"]))
    for batch in it:
        logits = np.asarray(apply(params, batch), np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        t, w = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
        loss -= (np.take_along_axis(logp, t[..., None], -1)[..., 0] * w).sum()
        correct += ((logits.argmax(-1) == t) * w).sum()
        weight += w.sum()
    row = rows(single, "eval")[12]
    assert row["target_tokens"] == weight
    np.testing.assert_allclose(row["loss"], loss / weight, rtol=1e-5)
    np.testing.assert_allclose(row["accuracy"], correct / weight, atol=1e-6)


def test_elastic_restart_from_two_hosts_to_one_and_from_one_to_two(single, pod, tmp_path, capsys):
    import flax.linen as nn

    from ankh_jax.io.checkpoints import Checkpointer
    from ankh_jax.model.config import T5Config
    from ankh_jax.model.network import Transformer
    from ankh_jax.training.optim import make_optimizer, make_schedule
    from ankh_jax.training.partitioning import Partitioner
    from ankh_jax.training.steps import StateLayout, abstract_boxed_params

    # The state written by 2 processes restores, resharded onto this process's 8 devices, bit for bit. The
    # optimizer is the trainer's: Adafactor factored by the model's logical axes (as build_program makes it).
    model, partitioner = Transformer(T5Config.tiny()), Partitioner(mesh_shape=(2, 2, 2))
    boxed = abstract_boxed_params(model, partitioner)
    gin_free_tx = make_optimizer(make_schedule(peak_learning_rate=0.01, warmup_steps=2, total_steps=12),
                                 param_axes=(nn.get_partition_spec(boxed), nn.unbox(boxed)))
    layout = StateLayout(model, gin_free_tx, partitioner, boxed)
    abstract = layout.abstract_state()
    ck = Checkpointer(str(pod), save_interval_steps=4)
    restored = ck.restore_latest(abstract.params, abstract.opt_state)
    ck.close()
    step, params, opt_state = state(pod, 12)
    assert restored.step == step == 12
    np.testing.assert_array_equal(np.asarray(restored.params["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]),
                                  params["encoder"]["layers_0"]["mlp"]["wo"]["kernel"])
    assert len(jax.tree_util.tree_leaves(restored.opt_state)) == len(jax.tree_util.tree_leaves(opt_state))

    # 1 process -> 2, on mesh (1,4,2): the fsdp axis spans both hosts (its all-gathers cross processes) and the
    # model axis lies within each (``pod`` runs the data axis across hosts; tests/training/test_train.py compares
    # more meshes in one process). The 2 data shards continue exactly (each at example 56 of epoch 0 after 14
    # steps of 4).
    one_to_two = tmp_path / "1to2"
    shutil.copytree(single, one_to_two)
    job = run(one_to_two, "--gin.TRAIN_STEPS=14", "--gin.EvalConfig.every_steps=0",
              "--gin.Partitioner.mesh_shape=(1,4,2)")
    log = job.log(0)
    assert "resumed from the checkpoint at step 12" in log
    assert "written by 1 process(es), this run has 2" in log and "2 data shards continue exactly" in log
    assert sorted(rows(one_to_two)) == list(range(1, 15))
    assert [(s["config"]["shard_id"], s["epoch"], s["position"]) for s in meta(one_to_two, 14)["input_states"]] \
        == [(0, 0, 56), (1, 0, 56)]

    # 2 processes -> 1 reading both data shards: each continues exactly, so steps 13 and 14 see the batches the
    # 1 -> 2 run saw, from a state equal within 1e-5: the same losses within 1e-5 on meshes (8,1,1) and (1,4,2).
    two_to_one = _continue_in_this_process(pod, tmp_path / "2to1", capsys, "--gin.DataConfig.num_data_shards=2")
    assert "written by 2 process(es), this run has 1" in two_to_one.out
    assert "2 data shards continue exactly" in two_to_one.out
    assert [(s["config"]["shard_id"], s["epoch"], s["position"]) for s in meta(two_to_one.dir, 14)["input_states"]] \
        == [(0, 0, 56), (1, 0, 56)]
    a, b = rows(one_to_two), rows(two_to_one.dir)
    assert all(abs(a[s]["loss"] - b[s]["loss"]) <= 1e-5 for s in (13, 14)), (a, b)

    # 2 processes -> 1 reading 1 data shard: no position maps onto the new shard, so it restarts epoch 0 (and says so).
    restarted = _continue_in_this_process(pod, tmp_path / "2to1_one_shard", capsys)
    assert "written by 2 process(es), this run has 1" in restarted.out
    assert "restarts at the beginning of epoch 0" in restarted.out
    assert [(s["config"]["num_shards"], s["epoch"], s["position"])
            for s in meta(restarted.dir, 14)["input_states"]] == [(1, 0, 16)]


def _continue_in_this_process(model_dir, copy, capsys, *extra):
    """A copy of MODEL_DIR continued to step 14 by ``main`` in this process (8 devices): its folder and output."""
    shutil.copytree(model_dir, copy)
    capsys.readouterr()
    assert main(flags(copy, "--gin.TRAIN_STEPS=14", "--gin.EvalConfig.every_steps=0", *extra)) == 0
    out = capsys.readouterr().out
    assert "resumed from the checkpoint at step 12" in out
    assert sorted(rows(copy)) == list(range(1, 15))
    return types.SimpleNamespace(dir=copy, out=out)
