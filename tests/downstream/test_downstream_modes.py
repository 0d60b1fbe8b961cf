"""LoRA and full fine-tuning, lookup, and both contact protocols through the runner (tiny random encoder)."""

import csv
import json

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ankh_jax.downstream import finetune, lora
from ankh_jax.downstream.encoder_source import random_encoder

ALPHABET = list("ACDEFGHIKLMNPQRSTVWY")


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _random_seqs(rng, n, lo=20, hi=40):
    return ["".join(rng.choice(ALPHABET, rng.integers(lo, hi))) for _ in range(n)]


def test_lora_starts_as_the_unchanged_encoder():
    enc = random_encoder("tiny")
    adapters = lora.init(enc.params, rank=4, targets=("query", "value", "out"), key=jax.random.key(3))
    assert len(adapters) == 3 * enc.config.num_encoder_layers
    tokens = np.array([[5, 8, 3, 9, 12, 1, 0, 0]], np.int32)
    module = enc.module()
    before = module.apply({"params": enc.params}, tokens)
    merged = lora.merge(enc.params, adapters, alpha=16.0, rank=4)
    np.testing.assert_array_equal(module.apply({"params": merged}, tokens), before)
    bumped = jax.tree_util.tree_map(lambda x: x + 0.01, adapters)
    assert not np.allclose(module.apply({"params": lora.merge(enc.params, bumped, alpha=16.0, rank=4)}, tokens),
                           before)
    with pytest.raises(ValueError, match="not projections"):
        lora.init(enc.params, rank=4, targets=("qkv",), key=jax.random.key(0))


@pytest.mark.parametrize("rank", [4, 0])
def test_full_mode_trains_lora_and_head_only_or_everything(tmp_path, rank):
    rng = np.random.default_rng(0)
    seqs = _random_seqs(rng, 48, 15, 30)  # one length bucket: one compiled shape
    rows = [[s, int("W" in s)] for s in seqs]
    for name, part in (("train", rows[:32]), ("validation", rows[32:40]), ("test", rows[40:])):
        _write(tmp_path / f"{name}.csv", ["sequences", "labels"], part)
    model_dir = tmp_path / "run"
    finetune.main(["--gin_file=configs/downstream/solubility.gin", f"--gin.MODEL_DIR='{model_dir}'",
                   f"--gin.DATA_DIR='{tmp_path}'", "--gin.ENCODER='random:tiny'", "--gin.run.mode='full'",
                   f"--gin.LoraConfig.rank={rank}", "--gin.OptimizerConfig.max_epochs=1",
                   "--gin.OptimizerConfig.grad_accum_steps=2",
                   "--gin.OptimizerConfig.batch_size=8", "--gin.run.progress=False"])
    results = json.loads((model_dir / "results.json").read_text())
    assert 0.0 <= results["tests"]["solubility"]["accuracy"] <= 1.0 and results["mode"] == "full"
    saved = ocp.StandardCheckpointer().restore(str(model_dir / "best"))
    enc = random_encoder("tiny")
    if rank:
        assert set(saved) == {"head", "lora"}
        assert all(np.abs(np.asarray(a["b"])).max() > 0 for a in saved["lora"].values())
        merged = lora.merge(enc.params, saved["lora"], alpha=16.0, rank=rank)
        flat_old = dict(jax.tree_util.tree_flatten_with_path(enc.params)[0])
        for path, new in jax.tree_util.tree_flatten_with_path(merged)[0]:
            name = jax.tree_util.keystr(path)
            changed = not np.array_equal(np.asarray(new), np.asarray(flat_old[path]))
            assert changed == ("['query']" in name or "['value']" in name), name
    else:
        assert set(saved) == {"head", "encoder"}
        old = np.asarray(enc.params["encoder"]["layers_0"]["mlp"]["wo"]["kernel"])
        assert not np.array_equal(np.asarray(saved["encoder"]["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]), old)


def test_lookup_finds_each_query_in_the_lookup_set(tmp_path):
    rng = np.random.default_rng(1)
    seqs = _random_seqs(rng, 12, 30, 60)
    labels = [f"{1 + i % 3}.{10 + i % 2}.{i}.{i * 7}" for i in range(12)]
    _write(tmp_path / "lookup.csv", ["sequence", "label"], list(zip(seqs, labels)))
    _write(tmp_path / "test.csv", ["sequence", "label"], list(zip(seqs[:6], labels[:6])))
    model_dir = tmp_path / "run"
    finetune.main(["--gin_file=configs/downstream/lookup.gin", f"--gin.MODEL_DIR='{model_dir}'",
                   f"--gin.DATA_DIR='{tmp_path}'", "--gin.ENCODER='random:tiny'", "--gin.run.progress=False"])
    results = json.loads((model_dir / "results.json").read_text())
    assert results["tests"]["cath"] == {"C": 1.0, "A": 1.0, "T": 1.0, "H": 1.0}


def _protein(rng, n):
    steps = rng.normal(size=(n, 3))
    steps = 3.8 * steps / np.linalg.norm(steps, axis=1, keepdims=True)
    coords = np.cumsum(steps, axis=0) * 0.6               # a compact random walk: some long-range contacts
    return "".join(rng.choice(ALPHABET, n)), " ".join(f"{v:.2f}" for v in coords.ravel())


@pytest.mark.parametrize("mode", ["frozen", "attention"])
def test_contact_protocols_run_and_score(tmp_path, mode):
    rng = np.random.default_rng(2)
    header = ["primary", "tertiary", "valid_mask"]
    for name, count in (("train", 6), ("valid", 2), ("test", 2)):
        rows = []
        for _ in range(count):
            seq, coords = _protein(rng, int(rng.integers(40, 64)))
            rows.append([seq, coords, " ".join(["1"] * len(seq))])
        _write(tmp_path / f"{name}.csv", header, rows)
    model_dir = tmp_path / mode
    gin_file = "contacts.gin" if mode == "frozen" else "contacts_attention.gin"
    finetune.main([f"--gin_file=configs/downstream/{gin_file}", f"--gin.MODEL_DIR='{model_dir}'",
                   f"--gin.DATA_DIR='{tmp_path}'", "--gin.ENCODER='random:tiny'", "--gin.run.progress=False",
                   "--gin.OptimizerConfig.max_epochs=2", "--gin.run_attention_contacts.max_pairs=5000"])
    results = json.loads((model_dir / "results.json").read_text())
    scores = results["tests"]["proteinnet"]
    assert set(scores) == {"precision_L/5", "precision_L/1"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
