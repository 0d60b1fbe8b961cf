"""Checkpointer: sharded round trip with the input state, keep-last-K, fallback from corrupt checkpoints,
load_params, and SIGTERM -> preemption flag."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ankh_jax.io.checkpoints import (
    UNREADABLE_SUBDIR,
    Checkpointer,
    CheckpointError,
    CheckpointMismatchError,
    load_params,
    read_meta,
    write_model_config,
)
from ankh_jax.model.config import T5Config
from ankh_jax.training.partitioning import make_mesh
from ankh_jax.training.preemption import PreemptionWatcher


@pytest.fixture(scope="module")
def trees():
    mesh = make_mesh((2, 2, 2))
    w = jax.device_put(jnp.arange(64.0).reshape(8, 8), NamedSharding(mesh, P("fsdp", "model")))
    params = {"enc": {"w": w}, "b": jax.device_put(jnp.ones(4), NamedSharding(mesh, P()))}
    opt = {"count": jax.device_put(jnp.array(3, jnp.int32), NamedSharding(mesh, P())),
           "v": jax.tree_util.tree_map(lambda x: x * 0.5, params)}
    return params, opt


def _abstract(tree):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _scaled(tree, s):
    return jax.tree_util.tree_map(lambda x: x * s if x.dtype != jnp.int32 else x + s, tree)


def test_round_trip_keeps_last_k_and_input_state(tmp_path, trees):
    params, opt = trees
    ck = Checkpointer(str(tmp_path), save_interval_steps=2, max_to_keep=2)
    for step in (2, 4, 6):
        ck.save(step, _scaled(params, step), _scaled(opt, step), [{"epoch": 0, "position": step}])
    ck.wait()
    assert ck.all_steps() == [4, 6]
    r = ck.restore_latest(_abstract(params), _abstract(opt))
    step, p, o = r.step, r.params, r.opt_state
    assert step == 6 and r.input_states == [{"epoch": 0, "position": 6}]
    np.testing.assert_array_equal(np.asarray(p["enc"]["w"]), np.arange(64.0).reshape(8, 8) * 6)
    assert p["enc"]["w"].sharding.spec == P("fsdp", "model")
    assert int(o["count"]) == 9
    assert read_meta(str(tmp_path), 6)["step"] == 6
    ck.close()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_latest_falls_back_to_previous_and_says_so(tmp_path, trees, damage):
    params, opt = trees
    ck = Checkpointer(str(tmp_path), save_interval_steps=1, max_to_keep=3, async_save=False)
    ck.save(1, params, opt, [{"position": 1}])
    ck.save(2, _scaled(params, 2), _scaled(opt, 2), [{"position": 2}])
    ck.wait()
    data_files = [os.path.join(root, f) for root, _, files in os.walk(tmp_path / "checkpoints" / "2" / "params")
                  for f in files if os.sep + "d" + os.sep in os.path.join(root, f)]
    assert data_files
    for path in data_files:
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            if damage == "truncate":
                f.truncate(size // 2)
            else:  # same length, different bytes: only the fingerprint can tell
                f.seek(size // 2)
                f.write(bytes(np.random.default_rng(0).integers(0, 256, size - size // 2, dtype=np.uint8)))
    messages = []
    r = ck.restore_latest(_abstract(params), _abstract(opt), report=messages.append)
    step, p = r.step, r.params
    assert step == 1 and r.input_states == [{"position": 1}]
    np.testing.assert_array_equal(np.asarray(p["enc"]["w"]), np.asarray(params["enc"]["w"]))
    assert len(messages) == 1
    assert "step 2" in messages[0] and "unreadable" in messages[0] and "falling back to step 1" in messages[0]
    assert (tmp_path / UNREADABLE_SUBDIR / "2").is_dir() and ck.all_steps() == [1]
    ck.close()


def test_no_readable_checkpoint_is_an_error(tmp_path, trees):
    params, opt = trees
    ck = Checkpointer(str(tmp_path), save_interval_steps=1, async_save=False)
    assert ck.restore_latest(_abstract(params), _abstract(opt)) is None
    ck.save(1, params, opt, None)
    for root, _, files in os.walk(tmp_path / "checkpoints" / "1" / "opt_state"):
        for f in files:
            if os.sep + "d" + os.sep in os.path.join(root, f):
                os.truncate(os.path.join(root, f), 3)
    with pytest.raises(CheckpointError, match=r"every checkpoint was set aside"):
        ck.restore_latest(_abstract(params), _abstract(opt), report=lambda m: None)
    assert (tmp_path / UNREADABLE_SUBDIR / "1").is_dir()
    # Re-running must not quietly start from step 0 on top of the set-aside checkpoint.
    with pytest.raises(CheckpointError, match=r"Not starting again from step 0"):
        ck.restore_latest(_abstract(params), _abstract(opt), report=lambda m: None)
    ck.close()


def test_a_checkpoint_of_another_configuration_is_a_mismatch_not_damage(tmp_path, trees):
    """Another optimizer state or another parameter tree: CheckpointMismatchError naming it, nothing moved."""
    params, opt = trees
    ck = Checkpointer(str(tmp_path), save_interval_steps=1, async_save=False)
    ck.save(1, params, opt, None)
    other_opt = {"count": opt["count"], "mu": opt["v"], "nu": opt["v"]}  # e.g. Adam instead of Adafactor
    with pytest.raises(CheckpointMismatchError, match=r"another optimizer state.*only in the checkpoint \(e\.g\. v/"):
        ck.restore_latest(_abstract(params), _abstract(other_opt))
    stacked = {"enc": {"layers": params["enc"]["w"][None]}, "b": params["b"]}
    with pytest.raises(CheckpointMismatchError, match=r"scan_layers differs"):
        ck.restore_latest(_abstract(stacked), _abstract(opt))
    assert ck.all_steps() == [1] and not (tmp_path / UNREADABLE_SUBDIR).exists()
    r = ck.restore_latest(_abstract(params), _abstract(opt))
    assert r.step == 1 and r.input_states is None
    ck.close()


def test_load_params_reads_config_and_params(tmp_path, trees):
    params, opt = trees
    write_model_config(str(tmp_path), T5Config.tiny())
    ck = Checkpointer(str(tmp_path), save_interval_steps=1, async_save=False)
    ck.save(3, params, opt, None)
    ck.save(5, _scaled(params, 2), opt, None)
    ck.close()
    config, loaded = load_params(str(tmp_path))
    assert config == T5Config.tiny()
    np.testing.assert_array_equal(np.asarray(loaded["enc"]["w"]), np.arange(64.0).reshape(8, 8) * 2)
    _, loaded3 = load_params(str(tmp_path), step=3)
    np.testing.assert_array_equal(np.asarray(loaded3["b"]), np.ones(4))
    with pytest.raises(CheckpointError, match="no checkpoint at step 4"):
        load_params(str(tmp_path), step=4)
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        load_params(str(tmp_path / "nowhere"))


def test_sigterm_sets_the_preemption_flag():
    watcher = PreemptionWatcher()
    try:
        assert not watcher.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert watcher.reached(2)
    finally:
        watcher.close()
