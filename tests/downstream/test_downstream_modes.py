"""LoRA and full fine-tuning, lookup, and both contact protocols through the runner (tiny random encoder)."""

import csv
import json

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ankh_jax import finetune
from ankh_jax.downstream import lora
from ankh_jax.testing import apply_jitted, random_encoder

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
    before = apply_jitted(module, {"params": enc.params}, tokens)
    merged = lora.merge(enc.params, adapters, alpha=16.0, rank=4)
    np.testing.assert_array_equal(apply_jitted(module, {"params": merged}, tokens), before)
    bumped = jax.tree_util.tree_map(lambda x: x + 0.01, adapters)
    bumped_params = lora.merge(enc.params, bumped, alpha=16.0, rank=4)
    assert not np.allclose(apply_jitted(module, {"params": bumped_params}, tokens), before)
    with pytest.raises(ValueError, match="not projections"):
        lora.init(enc.params, rank=4, targets=("qkv",), key=jax.random.key(0))


@pytest.mark.parametrize("rank", [4, 0])
def test_full_mode_trains_lora_and_head_only_or_everything(tmp_path, rank, random_encoder_dir):
    rng = np.random.default_rng(0)
    seqs = _random_seqs(rng, 56, 15, 30)  # one length bucket: one compiled shape; 16 test proteins
    rows = [[s, int("W" in s)] for s in seqs]
    for name, part in (("train", rows[:32]), ("validation", rows[32:40]), ("test", rows[40:])):
        _write(tmp_path / f"{name}.csv", ["sequences", "labels"], part)
    model_dir = tmp_path / "run"
    finetune.main(["--gin_file=configs/downstream/solubility.gin", f"--gin.MODEL_DIR='{model_dir}'",
                   f"--gin.DATA_DIR='{tmp_path}'", f"--gin.ENCODER='{random_encoder_dir()}'", "--gin.run.mode='full'",
                   f"--gin.LoraConfig.rank={rank}", "--gin.StoppingConfig.max_epochs=1",
                   "--gin.OptimizerConfig.grad_accum_steps=2",
                   "--gin.BatchingConfig.batch_size=8", "--gin.run.progress=False"])
    results = json.loads((model_dir / "results.json").read_text())
    assert results["mode"] == "full"
    saved = ocp.StandardCheckpointer().restore(str(model_dir / "best"))
    enc = random_encoder("tiny")
    encoder_params = lora.merge(enc.params, saved["lora"], alpha=16.0, rank=rank) if rank else saved["encoder"]
    # The known answer: the saved (best) encoder and head, applied one unpadded protein at a time.
    assert results["tests"]["solubility"]["accuracy"] == _accuracy_of(enc, encoder_params, saved["head"],
                                                                      rows[40:])
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


def _accuracy_of(enc, encoder_params, head_params, rows) -> float:
    """Test accuracy recomputed from the saved parameters without the runner (one padded batch, jitted): a run
    that evaluated other parameters than it saved (say, the encoder without its LoRA adapters) scores differently
    (16 proteins: a coincidence is possible, but no longer anything in [0, 1] passes)."""
    from ankh_jax.data.tokenizer import AnkhTokenizer
    from ankh_jax.downstream.heads import ConvBertForBinaryClassification

    d = enc.config.d_model
    head = ConvBertForBinaryClassification(input_dim=d, nhead=4, hidden_dim=d // 2, num_layers=1, kernel_size=7,
                                           dropout=0.2, pooling="max")
    width = 32                                                  # every protein here has < 31 residues
    tokens = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width - 1), np.int32)
    for r, (seq, _) in enumerate(rows):
        tokens[r, :len(seq) + 1] = AnkhTokenizer().encode(seq)
        mask[r, :len(seq)] = 1

    @jax.jit
    def logits(enc_params, head_params):
        hidden = enc.module().apply({"params": enc_params}, tokens)[:, :width - 1]
        return head.apply({"params": head_params}, hidden, attention_mask=mask)[:, 0]

    predicted = np.asarray(logits(encoder_params, head_params)) > 0
    return float(np.mean(predicted == np.array([bool(label) for _, label in rows])))


def test_lookup_scores_each_cath_level_of_the_nearest_protein(tmp_path, random_encoder_dir):
    """Queries are point mutants of lookup proteins (not copies), labelled to agree with their parent down to a
    chosen CATH level: the known answer is C 5/6, A 4/6, T 3/6, H 2/6. The parent is checked to be the nearest
    protein by a float64 numpy cosine search of its own; a search that returned the query itself, the wrong
    neighbour, or compared the wrong levels would miss."""
    from ankh_jax.inference.embedding import embed_sequences

    rng = np.random.default_rng(1)
    seqs = _random_seqs(rng, 12, 30, 60)
    labels = [f"{1 + i % 4}.{10 + i}.{20 + i}.{30 + i}" for i in range(12)]
    parents = [0, 3, 5, 7, 9, 11]
    queries = []
    for p in parents:
        pos = int(rng.integers(len(seqs[p])))
        queries.append(seqs[p][:pos] + ("W" if seqs[p][pos] != "W" else "Y") + seqs[p][pos + 1:])
    query_labels = []
    for p, keep in zip(parents, [4, 3, 2, 1, 0, 4], strict=True):   # levels shared with the parent
        parts = labels[p].split(".")
        query_labels.append(".".join(parts[:keep] + [f"9{n}" for n in range(keep, 4)]))
    _write(tmp_path / "lookup.csv", ["sequence", "label"], list(zip(seqs, labels)))
    _write(tmp_path / "test.csv", ["sequence", "label"], list(zip(queries, query_labels)))

    enc = random_encoder("tiny")
    db = np.stack(embed_sequences(enc.config, enc.params, seqs, pooling="mean")).astype(np.float64)
    q = np.stack(embed_sequences(enc.config, enc.params, queries, pooling="mean")).astype(np.float64)
    cosine = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (db / np.linalg.norm(db, axis=1, keepdims=True)).T
    assert list(np.argmax(cosine, axis=1)) == parents

    model_dir = tmp_path / "run"
    finetune.main(["--gin_file=configs/downstream/lookup.gin", f"--gin.MODEL_DIR='{model_dir}'",
                   f"--gin.DATA_DIR='{tmp_path}'", f"--gin.ENCODER='{random_encoder_dir()}'",
                   "--gin.run.progress=False"])
    results = json.loads((model_dir / "results.json").read_text())
    assert results["tests"]["cath"] == {"C": 5 / 6, "A": 4 / 6, "T": 3 / 6, "H": 2 / 6}


def _protein(rng, n, compaction=0.6):
    steps = rng.normal(size=(n, 3))
    steps = 3.8 * steps / np.linalg.norm(steps, axis=1, keepdims=True)
    coords = np.cumsum(steps, axis=0) * compaction        # a compact random walk: some long-range contacts
    return "".join(rng.choice(ALPHABET, n)), " ".join(f"{v:.2f}" for v in coords.ravel())


def _write_contact_splits(tmp_path, rng, counts=(("train", 6), ("valid", 2), ("test", 2)), compaction=0.6):
    proteins = {}
    for name, count in counts:
        rows = [_protein(rng, int(rng.integers(40, 64)), compaction) for _ in range(count)]
        _write(tmp_path / f"{name}.csv", ["primary", "tertiary", "valid_mask"],
               [[seq, coords, " ".join(["1"] * len(seq))] for seq, coords in rows])
        proteins[name] = rows
    return proteins


def test_contact_protocol_from_embeddings_runs_and_scores(tmp_path, random_encoder_dir):
    _write_contact_splits(tmp_path, np.random.default_rng(2))
    model_dir = tmp_path / "frozen"
    finetune.main(["--gin_file=configs/downstream/contacts.gin", f"--gin.MODEL_DIR='{model_dir}'",
                   f"--gin.DATA_DIR='{tmp_path}'", f"--gin.ENCODER='{random_encoder_dir()}'",
                   "--gin.run.progress=False",
                   "--gin.StoppingConfig.max_epochs=2"])
    results = json.loads((model_dir / "results.json").read_text())
    assert set(results["tests"]["proteinnet"]) == {"precision_L/5", "precision_L/1"}
    assert results["test_proteins"] == "whole"


def test_attention_features_are_the_symmetrised_apc_maps_of_transformers(tmp_path):
    """Every layer's and head's attention map, from PyTorch transformers' T5EncoderModel (an independent model),
    symmetrised and APC-corrected in float64 numpy, in layer-major order."""
    import torch
    import transformers
    from ankh_jax.tasks.contacts import attention_features

    from ankh_jax.data.tokenizer import AnkhTokenizer
    from ankh_jax.io.hf_export import export

    enc = random_encoder("tiny")
    export(enc.config, enc.params, str(tmp_path), encoder_only=True)
    model = transformers.T5EncoderModel.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    seq = "MKVLAAGGHWLLKDEEFRSTVW"
    ids = torch.tensor([AnkhTokenizer().encode(seq).tolist()])
    with torch.no_grad():
        maps = model(input_ids=ids, output_attentions=True).attentions          # per layer [1, H, L+1, L+1]
    n = len(seq)
    f = np.concatenate([m[0, :, :n, :n].double().numpy() for m in maps])      # [layers * heads, L, L]
    f = f + f.transpose(0, 2, 1)
    expected = f - f.sum(2, keepdims=True) * f.sum(1, keepdims=True) / f.sum((1, 2), keepdims=True)
    ours = attention_features(enc, seq)
    assert ours.shape == (n, n, enc.config.num_encoder_layers * enc.config.num_heads)
    np.testing.assert_allclose(np.moveaxis(ours, -1, 0), expected, atol=2e-5)


def _perfect_precision(contacts: np.ndarray, fraction: int) -> float:
    """What a ranking with every true long-range contact first scores: min(#contacts, L // k) / (L // k)."""
    n = len(contacts)
    true = sum(bool(contacts[i, j]) for i in range(n) for j in range(i + 24, n))
    top = max(n // fraction, 1)
    return min(true, top) / top


def test_attention_protocol_ranks_oracle_features_perfectly(tmp_path, monkeypatch, random_encoder_dir):
    """With attention features replaced by the true contact map (plus a noise channel), the logistic regression
    must rank every long-range contact first: the run reports exactly the perfect ranking's P@L and P@L/5 on the
    whole test proteins. Misaligned pair labels, a transposed map or cropped test proteins would not."""
    from ankh_jax.tasks import contacts as contacts_task

    from ankh_jax.downstream.metrics import contact_map

    rng = np.random.default_rng(2)
    proteins = _write_contact_splits(tmp_path, rng, (("train", 4), ("valid", 1), ("test", 2)), compaction=0.8)
    truth = {}
    for rows in proteins.values():
        for seq, coords in rows:
            xyz = np.array(coords.split(), float).reshape(-1, 3)
            truth[seq] = contact_map(xyz)

    def oracle(encoder, sequence):  # training proteins arrive cropped to 30 residues
        n = len(sequence)
        contacts = next(c for s, c in truth.items() if s.startswith(sequence))[:n, :n]
        noise = np.random.default_rng(n).uniform(0, 0.01, contacts.shape)
        return np.stack([contacts.astype(np.float32), noise.astype(np.float32)], axis=-1)

    monkeypatch.setattr(contacts_task, "attention_features", oracle)
    model_dir = tmp_path / "attention"
    finetune.main(["--gin_file=configs/downstream/contacts_attention.gin", f"--gin.MODEL_DIR='{model_dir}'",
                   f"--gin.DATA_DIR='{tmp_path}'", f"--gin.ENCODER='{random_encoder_dir()}'",
                   "--gin.run.progress=False",
                   "--gin.contact_task.max_length=30"])
    scores = json.loads((model_dir / "results.json").read_text())["tests"]["proteinnet"]
    tests = [truth[seq] for seq, _ in proteins["test"]]
    assert scores["precision_L/1"] == pytest.approx(np.mean([_perfect_precision(c, 1) for c in tests]))
    assert scores["precision_L/5"] == pytest.approx(np.mean([_perfect_precision(c, 5) for c in tests]))
    assert 0 < scores["precision_L/1"] < 1                                   # not a trivial all-ones answer
