"""Mesh construction, logical axis rules, optimizer-state specs, sharded init and global batches (8 CPU devices)."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from ankh_jax.model.config import T5Config
from ankh_jax.model.network import Transformer
from ankh_jax.training.optim import make_optimizer
from ankh_jax.training.partitioning import Partitioner, resolve_mesh_shape
from ankh_jax.training.steps import StateLayout


def test_resolve_mesh_shape():
    assert resolve_mesh_shape((-1, 1, 1), 8) == (8, 1, 1)
    assert resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="at most one"):
        resolve_mesh_shape((-1, -1, 1), 8)
    with pytest.raises(ValueError, match="needs 6 devices"):
        resolve_mesh_shape((3, 2, 1), 8)
    with pytest.raises(ValueError, match="does not divide"):
        resolve_mesh_shape((3, -1, 1), 8)


@pytest.fixture(scope="module")
def layout_222():
    tx = make_optimizer(0.01, adafactor_min_dim_size_to_factor=32)
    return StateLayout(Transformer(T5Config.tiny()), tx, Partitioner(mesh_shape=(2, 2, 2)))


def test_parameter_specs_follow_the_rules(layout_222):
    specs = layout_222.param_specs
    assert specs["token_embedder"]["embedding"] == P("model", "fsdp")          # (vocab, embed)
    mlp = specs["encoder"]["layers_0"]["mlp"]
    assert mlp["wi_0"]["kernel"] == P("fsdp", "model")                          # (embed, mlp)
    assert mlp["wo"]["kernel"] == P("model", "fsdp")                            # (mlp, embed)
    assert specs["encoder"]["layers_0"]["attention"]["query"]["kernel"] == P("fsdp", "model", None)
    assert specs["decoder"]["logits_dense"]["kernel"] == P("fsdp", "model")


def test_factored_adafactor_state_drops_the_reduced_axis(layout_222):
    # tiny d_model 64, d_ff 128, min_dim_size_to_factor 32: the MLP kernels (64, 128) are factored.
    factored = layout_222.opt_specs[1][0]  # chain(clip, adafactor) -> adafactor's FactoredState
    abstract = layout_222.abstract_opt_state[1][0]
    wi = ("encoder", "layers_0", "mlp", "wi_0", "kernel")

    def get(tree):
        for k in wi:
            tree = tree[k]
        return tree
    assert get(abstract.v_row).shape == (64,) and get(abstract.v_col).shape == (128,)
    assert get(factored.v_row) == P("fsdp")     # v_row averages over the largest axis (mlp)
    assert get(factored.v_col) == P("model")
    assert factored.count == P()


def test_state_is_created_sharded(layout_222):
    state = layout_222.create(jax.random.key(0))
    emb = state.params["token_embedder"]["embedding"]
    assert emb.shape == (144, 64)
    shard_shapes = {s.data.shape for s in emb.addressable_shards}
    assert shard_shapes == {(72, 32)}  # vocab over model (2), embed over fsdp (2): no device holds it all
    wi = state.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert {s.data.shape for s in wi.addressable_shards} == {(32, 64)}
    v_row = state.opt_state[1][0].v_row["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert {s.data.shape for s in v_row.addressable_shards} == {(32,)}


def test_undividable_dimensions_fall_back_to_replicated():
    p = Partitioner(mesh_shape=(1, 1, 8))
    layout = StateLayout(Transformer(T5Config.tiny()), optax.sgd(0.1), p)
    # tiny has 4 heads: not divisible by model=8, so heads stay replicated; d_ff 128 is split 8 ways.
    assert layout.param_specs["encoder"]["layers_0"]["attention"]["query"]["kernel"] == P("fsdp", None, None)
    assert layout.param_specs["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"] == P("fsdp", "model")
    assert "parameter dimensions replicated" in p.describe()


def test_global_batch_from_host_data():
    p = Partitioner(mesh_shape=(2, 2, 2))
    assert p.batch_shards == 4
    assert p.host_data_shard(16) == (0, 1, 16)
    with pytest.raises(ValueError, match="not divisible"):
        p.host_data_shard(6)
    local = {"encoder_input_tokens": np.arange(16 * 3, dtype=np.int32).reshape(16, 3)}
    arr = p.make_global_batch(local)["encoder_input_tokens"]
    assert arr.shape == (16, 3)
    assert {s.data.shape for s in arr.addressable_shards} == {(4, 3)}
    np.testing.assert_array_equal(np.asarray(arr), local["encoder_input_tokens"])
