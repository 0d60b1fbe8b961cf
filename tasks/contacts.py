"""Contact prediction (ProteinNet / CASP14): long-range precision at L/1 and L/5 (|i-j| >= 24, Cβ < 8 Å).

Two protocols, as in the Ankh paper:
* from embeddings: ``run.mode='frozen'`` (or ``'full'``) trains ``ConvBertForContactPrediction`` (ConvBERT
  layers, then ``ankh``'s pairwise head) on pairs with both residues valid and |i-j| >= 6;
* from attention maps: ``run.mode='attention'`` (:func:`run_attention_contacts`) takes every encoder layer's
  attention maps, symmetrised and APC-corrected, as pair features for a logistic regression trained on the
  training proteins.
Columns (TAPE layout): ``primary`` (sequence), ``tertiary`` ([L, 3] Cβ coordinates in Å: nested lists in a
``save_to_disk`` dir, or a flat / nested list of numbers in a CSV), optional ``valid_mask`` (per residue, 0 =
unresolved). ``max_length`` (512) crops training and validation proteins; test proteins are evaluated whole, so
L is the protein's length and every long-range pair counts (the standard P@L, P@L/5; ``results.json`` says
``"test_proteins": "whole"``). Gin: ``configs/downstream/contacts.gin``, ``contacts_attention.gin``.
"""

from __future__ import annotations

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ankh_jax.data.batching import power_of_two_bucket
from ankh_jax.data.tokenizer import AnkhTokenizer
from ankh_jax.downstream.kinds import contact_labels
from ankh_jax.downstream.metrics import contact_precision
from ankh_jax.downstream.task_spec import TaskSpec


@gin.configurable
def contact_task(data_dir: str = gin.REQUIRED, train: str = "train.csv", valid: str = "valid.csv",
                 tests=(("proteinnet", "test.csv"),), sequence_column: str = "primary",
                 label_column: str = "tertiary", mask_column: str | None = "valid_mask",
                 max_length: int | None = 512) -> TaskSpec:
    return TaskSpec(name="contacts", kind="contact", metric="contact_precision", data_dir=data_dir, train=train,
                    valid=valid, tests=tuple(tuple(t) for t in tests), sequence_column=sequence_column,
                    label_column=label_column, mask_column=mask_column or None, max_length=max_length)


def apc(maps: np.ndarray) -> np.ndarray:
    """Average product correction per channel: F - F_i. F_.j / F_.. on [C, L, L]."""
    row = maps.sum(axis=-1, keepdims=True)
    col = maps.sum(axis=-2, keepdims=True)
    total = maps.sum(axis=(-1, -2), keepdims=True)
    return maps - row * col / np.maximum(total, 1e-12)


def attention_features(encoder, sequence: str) -> np.ndarray:
    """[L, L, layers * heads]: symmetrised, APC-corrected attention maps of one sequence (``</s>`` dropped)."""
    ids = AnkhTokenizer().encode(sequence, clean=False)
    n = len(sequence)
    width = power_of_two_bucket(len(ids))
    tokens = np.zeros((1, width), np.int32)
    tokens[0, :len(ids)] = ids
    _, state = _attention_fn(encoder)(encoder.params, tokens)
    maps = [np.asarray(w)[0, :, :n, :n] for w in _attention_leaves(state)]      # each [H, L, L]
    stacked = np.concatenate(maps, axis=0).astype(np.float64)
    stacked = stacked + np.swapaxes(stacked, -1, -2)
    return np.moveaxis(apc(stacked), 0, -1).astype(np.float32)


_FNS: dict = {}


def _attention_fn(encoder):
    if id(encoder) not in _FNS:
        module = encoder.module()
        _FNS[id(encoder)] = jax.jit(lambda p, t: module.apply({"params": p}, t, mutable=["intermediates"]))
    return _FNS[id(encoder)]


def _attention_leaves(state):
    flat = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
    def layer_index(path):
        names = [str(getattr(k, "key", k)) for k in path]
        layer = next((n for n in names if n.startswith("layers_")), "layers_0")
        return int(layer.split("_")[1])
    leaves = [(layer_index(p), leaf) for p, leaf in flat if "attention_weights" in str(p)]
    out = []
    for _, leaf in sorted(leaves, key=lambda x: x[0]):
        leaf = np.asarray(leaf)
        out += list(leaf) if leaf.ndim == 5 else [leaf]   # scanned layers stack a leading layer axis
    return out


def _pair_data(encoder, examples, min_separation, max_pairs, rng):
    xs, ys = [], []
    for seq, (contacts, valid) in zip(examples.sequences, examples.labels, strict=True):
        feats = attention_features(encoder, seq)
        labels = contact_labels(contacts, valid, min_separation)
        i, j = np.triu_indices(len(seq), k=min_separation)
        keep = labels[i, j] >= 0
        xs.append(feats[i[keep], j[keep]])
        ys.append(labels[i[keep], j[keep]])
    x, y = np.concatenate(xs), np.concatenate(ys).astype(np.float32)
    if len(y) > max_pairs:
        pick = rng.choice(len(y), max_pairs, replace=False)
        x, y = x[pick], y[pick]
    return x, y


def fit_logistic_regression(x: np.ndarray, y: np.ndarray, *, l1: float = 1e-3, steps: int = 500,
                            learning_rate: float = 0.05) -> tuple[np.ndarray, float]:
    """L1-regularised logistic regression by full-batch Adam; returns (weights, bias)."""
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def loss(p):
        logits = xj @ p["w"] + p["b"]
        return optax.sigmoid_binary_cross_entropy(logits, yj).mean() + l1 * jnp.abs(p["w"]).sum()

    tx = optax.adam(learning_rate)
    params = {"w": jnp.zeros(x.shape[1]), "b": jnp.zeros(())}
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(steps):
        params, state = step(params, state)
    return np.asarray(params["w"]), float(params["b"])


def _precision(encoder, examples, w, b):
    probs = []
    for seq in examples.sequences:
        f = attention_features(encoder, seq)
        probs.append(1 / (1 + np.exp(-(f @ w + b))))
    result = contact_precision(probs, [c for c, _ in examples.labels], [v for _, v in examples.labels])
    return {"precision_L/5": result["L/5"], "precision_L/1": result["L/1"]}


@gin.configurable(denylist=["data", "encoder", "model_dir", "seed", "progress"])
def run_attention_contacts(data, encoder, *, model_dir: str, seed: int = 0, progress: bool = True,
                           l1: float = 1e-3, max_pairs: int = 200_000) -> dict:
    """Fits the attention-map logistic regression on ``train`` and scores ``valid`` and every test set."""
    spec = data.spec
    x, y = _pair_data(encoder, data.splits["train"], spec.min_contact_separation, max_pairs,
                      np.random.default_rng(seed))
    print(f"attention contacts: {x.shape[1]} features (layers x heads), {len(y)} training pairs, "
          f"{int(y.sum())} contacts")
    w, b = fit_logistic_regression(x, y, l1=l1)
    np.savez(f"{model_dir}/attention_logreg.npz", weights=w, bias=b)
    valid = _precision(encoder, data.splits["valid"], w, b) if "valid" in data.splits else {}
    tests = {name[len("test/"):]: _precision(encoder, data.splits[name], w, b) for name in data.test_names()}
    return {"valid_best": valid, "tests": tests}
