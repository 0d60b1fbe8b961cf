"""The trainer's input: batch layout, per-host sharding, determinism and exact resume from get_state()."""

import json

import gin
import numpy as np
import pytest

from ankh_jax.data.fasta import load_fasta
from ankh_jax.data.input_pipeline import make_input
from ankh_jax.data.tokenizer import AnkhTokenizer
from ankh_jax.errors import InputError

TOK = AnkhTokenizer()
SMALL = {"inputs": 64, "targets": 27}


def make(sample_tfds_dir, **kw):
    args = {"task_name": "uniref50_ankh", "split": "train", "feature_lengths": SMALL, "batch_size": 8, "seed": 3,
            "shard_id": 0, "num_shards": 1}
    args.update(kw)
    return make_input(**args)


def take(it, n):
    return [next(it) for _ in range(n)]


def same(a, b):
    return len(a) == len(b) and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


def test_batch_layout_unpacked(sample_tfds_dir):
    batch = next(make(sample_tfds_dir))
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "encoder_input_tokens": ((8, 64), np.int32), "decoder_input_tokens": ((8, 27), np.int32),
        "decoder_target_tokens": ((8, 27), np.int32), "decoder_loss_weights": ((8, 27), np.int32)}
    tgt = batch["decoder_target_tokens"]
    assert (batch["decoder_input_tokens"][:, 1:] == tgt[:, :-1]).all() and (batch["decoder_input_tokens"][:, 0] == 0).all()
    assert (batch["decoder_loss_weights"] == (tgt > 0)).all()
    assert ((batch["encoder_input_tokens"] == 1).sum(axis=1) == 1).all()  # one </s> per row
    assert (tgt.max(axis=1) == 143).all()  # every target opens with the first sentinel


def test_batch_layout_packed(sample_tfds_dir):
    it = make(sample_tfds_dir, feature_lengths={"inputs": 256, "targets": 103}, pack=True, pack_chunk_size=64)
    batch = next(it)
    assert set(batch) >= {"encoder_segment_ids", "encoder_positions", "decoder_segment_ids", "decoder_positions"}
    seg, pos = batch["encoder_segment_ids"], batch["encoder_positions"]
    assert seg.max() >= 2, "short proteins are packed several to a row"
    for r in range(8):
        for s in range(1, seg[r].max() + 1):
            where = np.flatnonzero(seg[r] == s)
            assert (pos[r, where] == np.arange(len(where))).all()
            assert batch["encoder_input_tokens"][r, where[-1]] == 1  # each packed example ends with </s>
    assert set(it.element_spec) == set(batch)


def test_per_host_shards_are_disjoint_and_complete(sample_tfds_dir, sample_fasta):
    """Two hosts read different files; with full reconstruction the targets are the proteins themselves."""
    train_ids = {r.sequence for r in load_fasta(sample_fasta)}
    lengths = {"inputs": 1400, "targets": 1400}
    seen = []
    with gin.unlock_config():
        gin.bind_parameter("span_corruption.full_reconstruction", True)
        gin.bind_parameter("span_corruption.noise_density", 0.05)  # 70 sentinels for 1399 residues: within 116
    try:
        for shard in (0, 1):
            it = make(sample_tfds_dir, feature_lengths=lengths, shard_id=shard, num_shards=2, repeat=False,
                      shuffle=False, batch_size=64)
            proteins = [TOK.decode(row) for b in it for row in b["decoder_target_tokens"] if row.any()]
            seen.append(proteins)
    finally:
        gin.clear_config()
    a, b = set(seen[0]), set(seen[1])
    assert len(a) == len(seen[0]) and len(b) == len(seen[1]) and a and b
    assert not a & b
    import tensorflow_datasets as tfds

    builder = tfds.builder("uniref50", data_dir=sample_tfds_dir)
    train = {ex["sequence"].decode() for ex in tfds.as_numpy(builder.as_dataset(split="train"))}
    assert a | b == train and train <= train_ids


@pytest.mark.parametrize("pack", [False, True])
def test_state_round_trip_continues_identically(sample_tfds_dir, pack):
    # The validation split (69 proteins) with repeat: 12 batches cross two epoch boundaries.
    kw = {"split": "validation", "pack": pack, "batch_size": 16 if not pack else 8,
          "feature_lengths": {"inputs": 128, "targets": 51}}
    it = make(sample_tfds_dir, **kw)
    take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, 9)
    resumed = make(sample_tfds_dir, **kw)
    resumed.set_state(state)
    assert same(take(resumed, 9), expected)
    assert state["epoch"] == 0 and it.get_state()["epoch"] >= 1  # the continuation crossed an epoch boundary
    assert pack or state["position"] == 48
    # Restoring twice into one iterator is fine; a state of another configuration is refused.
    resumed.set_state(state)
    assert same(take(resumed, 2), expected[:2])
    other = make(sample_tfds_dir, **{**kw, "seed": 4})
    with pytest.raises(ValueError, match="seed"):
        other.set_state(state)


def test_deterministic_and_seeded(sample_tfds_dir):
    a, b = take(make(sample_tfds_dir), 3), take(make(sample_tfds_dir), 3)
    c = take(make(sample_tfds_dir, seed=4), 3)
    assert same(a, b) and not same(a, c)


def test_one_epoch_pads_last_batch_then_stops(sample_tfds_dir):
    it = make(sample_tfds_dir, split="validation", repeat=False, batch_size=16)
    batches = list(it)
    n = 69
    assert len(batches) == -(-n // 16)
    last = batches[-1]
    real = last["decoder_loss_weights"].any(axis=1)
    assert real.sum() == n - 16 * (len(batches) - 1) and not last["encoder_input_tokens"][~real].any()
    with pytest.raises(StopIteration):
        next(it)


def test_resume_in_a_fresh_process(sample_tfds_dir, repo_root):
    """What a restart does: another Python process, same configuration, the saved state -> the same batches."""
    import hashlib
    import subprocess
    import sys

    kw = {"feature_lengths": SMALL, "batch_size": 8, "seed": 3, "shard_id": 1, "num_shards": 2, "pack": True}
    it = make_input("uniref50_ankh", "train", **kw)
    take(it, 5)
    state = it.get_state()
    digest = hashlib.sha256()
    for batch in take(it, 3):
        for k in sorted(batch):
            digest.update(batch[k].tobytes())
    script = (
        "import hashlib, json, sys\n"
        "import ankh_jax.tasks.pretraining as p\n"
        f"p.set_data_dir({sample_tfds_dir!r})\n"
        "from ankh_jax.data.input_pipeline import make_input\n"
        f"it = make_input('uniref50_ankh', 'train', **{kw!r})\n"
        "it.set_state(json.loads(sys.argv[1]))\n"
        "h = hashlib.sha256()\n"
        "for _ in range(3):\n"
        "    b = next(it)\n"
        "    for k in sorted(b): h.update(b[k].tobytes())\n"
        "print(h.hexdigest())\n")
    out = subprocess.run([sys.executable, "-c", script, json.dumps(state)], cwd=repo_root, capture_output=True,
                         text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == digest.hexdigest()


def test_missing_data_dir_is_a_clear_error(sample_tfds_dir, tmp_path):
    with gin.unlock_config():
        gin.bind_parameter("uniref50_data_dir.data_dir", str(tmp_path / "nowhere"))
    try:
        with pytest.raises(InputError, match=r"nowhere.*prepare_uniref50\.py"):
            next(make(sample_tfds_dir))
    finally:
        gin.clear_config()


def test_more_hosts_than_files_is_a_clear_error(sample_tfds_dir):
    with pytest.raises(ValueError, match="8 files, fewer than the 16 hosts"):
        next(make(sample_tfds_dir, shard_id=3, num_shards=16))
