"""Ankh's objective: exact format, noise statistics, determinism, crops and the ablation knobs."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from ankh_jax.data import span_corruption as sc
from ankh_jax.data.fasta import load_fasta
from ankh_jax.data.tokenizer import EOS_ID, AnkhTokenizer, sentinel_id, seqio_vocabulary

TOK = AnkhTokenizer()
LENGTHS = {"inputs": 512, "targets": 205}


def ids(seq):
    return list(TOK.encode(seq, add_eos=False))


@pytest.fixture(scope="module")
def features():
    vocab = seqio_vocabulary()
    return {"inputs": seqio.Feature(vocab, add_eos=True, required=False), "targets": seqio.Feature(vocab, add_eos=True)}


def run(sequences, features, lengths=LENGTHS, seeds=None, **knobs):
    """The task's preprocessing chain on raw strings; per-example seeds (row i: [7, i]) unless given."""
    seeds = np.array([[7, i] for i in range(len(sequences))] if seeds is None else seeds, np.int64)
    ds = tf.data.Dataset.from_tensor_slices({"sequence": sequences, sc.EXAMPLE_SEED_KEY: seeds})
    ds = sc.tokenize_residues(ds)
    ds = sc.random_crop(ds, lengths, features)
    ds = sc.span_corruption(ds, lengths, features, **knobs)
    ds = seqio.preprocessors.append_eos_after_trim(ds, features, lengths)
    return list(ds.as_numpy_iterator())


def test_exact_format_with_fixed_mask():
    tokens = ids("ABCDEFG")
    mask = [False, False, True, False, False, False, True]  # C and G
    inputs, targets = sc.corrupt_with_mask(tokens, mask, one_sentinel_per_residue=True)
    s0, s1 = sentinel_id(0), sentinel_id(1)
    assert (s0, s1) == (143, 142)
    assert inputs.numpy().tolist() == ids("AB") + [s0] + ids("DEF") + [s1]
    assert targets.numpy().tolist() == [s0] + ids("C") + [s1] + ids("G")


def test_adjacent_masks_merge_only_when_asked():
    tokens, mask = ids("ABCDEFG"), [False, False, True, True, False, False, True]
    sep_in, sep_tg = sc.corrupt_with_mask(tokens, mask, one_sentinel_per_residue=True)
    assert sep_in.numpy().tolist() == ids("AB") + [143, 142] + ids("EF") + [141]
    assert sep_tg.numpy().tolist() == [143] + ids("C") + [142] + ids("D") + [141] + ids("G")
    mrg_in, mrg_tg = sc.corrupt_with_mask(tokens, mask, one_sentinel_per_residue=False)
    assert mrg_in.numpy().tolist() == ids("AB") + [143] + ids("EF") + [142]
    assert mrg_tg.numpy().tolist() == [143] + ids("CD") + [142] + ids("G")
    full_in, full_tg = sc.corrupt_with_mask(tokens, mask, one_sentinel_per_residue=True, full_reconstruction=True)
    assert full_in.numpy().tolist() == sep_in.numpy().tolist() and full_tg.numpy().tolist() == tokens


def reconstruct(inputs, targets):
    """Undo the corruption (inputs/targets with </s>) -> the original residues; checks the format on the way."""
    assert inputs[-1] == EOS_ID and targets[-1] == EOS_ID
    spans, current = {}, None
    for t in targets[:-1]:
        if t >= 28:
            current = t
            spans[current] = []
        else:
            spans[current].append(t)
    assert list(spans) == list(range(143, 143 - len(spans), -1))  # sentinels count down from 143
    out = []
    for t in inputs[:-1]:
        out.extend(spans.pop(t) if t >= 28 else [t])
    assert not spans
    return out


def test_pipeline_format_crop_and_targets_length(features):
    proteins = [r.sequence for r in load_fasta("data/sample_proteins.fasta")[:40]] + ["MKV" * 400, "AC", "W"]
    outs = run(proteins, features)
    for seq, ex in zip(proteins, outs):
        original = reconstruct(list(ex["inputs"]), list(ex["targets"]))
        n = min(len(seq), 511)
        assert len(original) == n
        full = ids(seq)
        starts = [i for i in range(len(full) - n + 1) if full[i: i + n] == original]
        assert starts, "the crop is a contiguous window of the protein"
        masked = (len(ex["targets"]) - 1) // 2
        assert masked == sc.num_noise_tokens(n, 0.2)  # exact count per example, 1-gram: one sentinel each
        assert len(ex["inputs"]) == n + 1 and len(ex["targets"]) <= sc.targets_length_for(512)
    assert sc.targets_length_for(512) == 205 == max(len(ex["targets"]) for ex in outs)
    long = run(["MKVLA" * 300] * 30, features, seeds=[[3, i] for i in range(30)])
    windows = {tuple(reconstruct(list(e["inputs"]), list(e["targets"]))[:5]) for e in long}
    assert len(windows) > 1, "crop offsets vary with the seed"


def test_noise_density_over_many_draws():
    # 4000 draws of a 100-residue mask: each position is masked with probability 0.2. Binomial sd per position
    # is sqrt(.2*.8/4000) = 0.0063, so 0.2 +- 0.03 (4.7 sd) holds for all 100 positions unless masks are biased.
    draws = tf.data.Dataset.range(4000).map(
        lambda i: sc.noise_mask(100, tf.stack([tf.constant(11, tf.int64), i]), 0.2, 1.0))
    masks = np.stack(list(draws.as_numpy_iterator()))
    assert (masks.sum(axis=1) == 20).all()
    assert np.abs(masks.mean(axis=0) - 0.2).max() < 0.03
    assert (masks[:, 1:] & masks[:, :-1]).any(), "1-gram masks may touch (merging has something to merge)"
    # Spans of mean length 3 (the 3-gram ablation): round(30 / 3) = 10 non-touching spans of 30 residues.
    spans = tf.data.Dataset.range(1000).map(
        lambda i: sc.noise_mask(200, tf.stack([tf.constant(5, tf.int64), i]), 0.15, 3.0))
    span_masks = np.stack(list(spans.as_numpy_iterator())).astype(int)
    assert (span_masks.sum(axis=1) == 30).all()
    runs = (np.diff(np.pad(span_masks, [(0, 0), (1, 0)]), axis=1) == 1).sum(axis=1)
    assert (runs == 10).all()
    # Per position: binomial sd sqrt(.15*.85/1000) = 0.011, inflated by the spans (3 neighbours move together)
    # to about 0.02; 0.15 +- 0.07 leaves 3.5 sd. Placement is uniform, so within a span length of either end a
    # position is covered by fewer placements (the very ends at about density / span length); T5's scheme
    # instead never masks the first residue and always masks the last.
    assert np.abs(span_masks[:, 3:-3].mean(axis=0) - 0.15).max() < 0.07
    assert 0.02 < span_masks[:, 0].mean() < 0.12 and 0.02 < span_masks[:, -1].mean() < 0.12


def test_deterministic_given_seed(features):
    proteins = [r.sequence for r in load_fasta("data/sample_proteins.fasta")[:20]]
    a, b = run(proteins, features), run(proteins, features)
    c = run(proteins, features, seeds=[[8, i] for i in range(20)])
    assert all((x["inputs"] == y["inputs"]).all() and (x["targets"] == y["targets"]).all() for x, y in zip(a, b))
    assert any(len(x["inputs"]) != len(z["inputs"]) or (x["inputs"] != z["inputs"]).any() for x, z in zip(a, c))
    # Without per-example seeds the preprocessors take seqio's seeds: same seed, same output.
    def seqio_run(seed):
        ds = tf.data.Dataset.from_tensor_slices({"sequence": proteins})
        with seqio.utils.map_seed_manager(seed):
            ds = sc.span_corruption(sc.random_crop(sc.tokenize_residues(ds), LENGTHS, features), LENGTHS, features)
        return [x["inputs"].tolist() for x in ds.as_numpy_iterator()]
    assert seqio_run(3) == seqio_run(3) != seqio_run(4)


def test_ablation_knobs(features):
    proteins = [r.sequence for r in load_fasta("data/sample_proteins.fasta")[:30]]
    n = [min(len(p), 511) for p in proteins]
    low = run(proteins, features, noise_density=0.1)
    assert [(len(e["targets"]) - 1) // 2 for e in low] == [sc.num_noise_tokens(k, 0.1) for k in n]
    full = run(proteins, features, {"inputs": 512, "targets": 512}, full_reconstruction=True)
    for p, k, e in zip(proteins, n, full):
        assert len(e["targets"]) == k + 1 and len(e["inputs"]) == k + 1
        assert e["targets"][:-1].tolist() in [ids(p)[i: i + k] for i in range(len(p) - k + 1)]
    merged = run(proteins, features, merge_adjacent_spans=True)
    plain = run(proteins, features)
    adjacent = lambda x: np.any((x[1:] >= 28) & (x[:-1] >= 28))
    assert not any(adjacent(e["inputs"]) for e in merged) and any(adjacent(e["inputs"]) for e in plain)
    tri = run(proteins, features, mean_noise_span_length=3.0)
    for k, e in zip(n, tri):
        sentinels = int((e["inputs"] >= 28).sum())
        assert sentinels == sc.num_noise_spans(k, 0.2, 3.0)
        assert len(e["targets"]) == sc.num_noise_tokens(k, 0.2) + sentinels + 1
    assert sc.targets_length_for(512, mean_noise_span_length=3.0) == 102 + 34 + 1
    with pytest.raises(ValueError, match="116"):
        run(proteins[:1], features, noise_density=0.3)  # 153 sentinels needed at 511 residues


def test_tokenize_matches_seqio_vocabulary():
    proteins = [r.sequence for r in load_fasta("data/sample_proteins.fasta")[:200]]
    ds = sc.tokenize_residues(tf.data.Dataset.from_tensor_slices({"sequence": proteins}))
    vocab = seqio_vocabulary()
    for p, ex in zip(proteins, ds.as_numpy_iterator()):
        assert ex["targets"].tolist() == list(vocab.encode(p)) == ids(p)
    bad = sc.tokenize_residues(tf.data.Dataset.from_tensor_slices({"sequence": ["MK1V"]}))
    with pytest.raises(tf.errors.InvalidArgumentError, match="a character outside Ankh"):
        list(bad.as_numpy_iterator())


def test_too_short_targets_length_is_refused(features):
    with pytest.raises(ValueError, match="targets length 100 is too short.*need 205"):
        run(["MKV" * 10], features, {"inputs": 512, "targets": 100})
