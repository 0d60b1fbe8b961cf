"""Inference at scale: every local device (4 of the suite's 8 fake CPU devices against 1), shards across hosts
(``--num_shards/--shard_index``, ``read_embeddings`` over the set), and the FASTA streamed in windows.

The model is the tiny encoder-decoder exported by ``tests/inference/conftest.py``; every comparison is against a
run on one device or one shard, which the other tests compare with transformers."""

import csv
import json

import numpy as np
import pytest

from ankh_jax import embed, generate, score
from ankh_jax.data.batching import assign_shards, batch_rows, plan_batches
from ankh_jax.data.fasta import FastaFormatError, load_fasta, read_windows, write_fasta
from ankh_jax.errors import InputError
from ankh_jax.io import embeddings_h5, shards

TOL = 1e-5  # max |difference| relative to max |value|: float rounding of another batch shape


@pytest.fixture(scope="module")
def proteins(sample_fasta):
    """24 shipped proteins, cut to at most 120 residues (a spread of lengths, several buckets, fast)."""
    recs = load_fasta(sample_fasta)[:24]
    return [(r.id, r.sequence[: 20 + (7 * i) % 100]) for i, r in enumerate(recs)]


@pytest.fixture()
def fasta(proteins, tmp_path):
    path = tmp_path / "in.fasta"
    write_fasta(path, proteins)
    return path


def _embed(exported, fasta, out, *extra):
    assert embed.main([f"--model={exported}", f"--fasta={fasta}", f"--output={out}", "--no_progress",
                       "--compilation_cache_dir=", "--batch_tokens=512", *extra]) == 0
    metrics = out.with_name(out.stem + ".metrics.json") if "--num_shards=2" not in extra else None
    return json.loads(metrics.read_text()) if metrics else None


def _assert_same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for key, value in a.items():
        assert value.shape == b[key].shape
        err = np.abs(value - b[key]).max() / np.abs(b[key]).max()
        assert err <= TOL, f"{key}: {err:.2e}"


@pytest.fixture(scope="module")
def one_device(exported, proteins, tmp_path_factory):
    """The reference: embed on one device, one shard, one window."""
    tmp = tmp_path_factory.mktemp("one")
    write_fasta(tmp / "in.fasta", proteins)
    metrics = _embed(exported, tmp / "in.fasta", tmp / "emb.h5", "--num_devices=1")
    assert metrics["devices"] == 1 and metrics["processes"] == 1 and metrics["windows"] == 1
    return embeddings_h5.read_embeddings(str(tmp / "emb.h5"))


def test_embed_on_4_devices_equals_1_device(exported, fasta, tmp_path, one_device):
    metrics = _embed(exported, fasta, tmp_path / "emb.h5", "--num_devices=4", "--window=9")
    assert metrics["devices"] == 4 and metrics["processes"] == 1 and metrics["shard_index"] == 0
    assert metrics["windows"] == 3 and metrics["sequences_embedded"] == 24
    assert 0 <= metrics["device_idle_share"] <= 1 and metrics["device_busy_seconds"] > 0
    _assert_same(embeddings_h5.read_embeddings(str(tmp_path / "emb.h5")), one_device)


def test_two_shards_hold_every_id_once_and_read_back_as_one(exported, fasta, tmp_path, one_device, monkeypatch):
    out = tmp_path / "emb.h5"
    _embed(exported, fasta, out, "--num_shards=2", "--shard_index=1", "--window=9", "--num_devices=1")
    with pytest.raises(InputError, match=r"1 of 2 shards missing: emb-00000-of-00002\.h5"):
        embeddings_h5.read_embeddings(str(out))
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")  # shard 0 from a JAX multi-process launch's environment
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    assert embed.main([f"--model={exported}", f"--fasta={fasta}", f"--output={out}", "--no_progress",
                       "--compilation_cache_dir=", "--batch_tokens=512", "--window=9", "--num_devices=1"]) == 0
    metrics = json.loads((tmp_path / "emb-00000-of-00002.metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["shard_index"] == 0
    parts = [set(embeddings_h5.read_embeddings(str(tmp_path / f"emb-0000{i}-of-00002.h5"))) for i in (0, 1)]
    assert not parts[0] & parts[1] and parts[0] | parts[1] == set(one_device)
    _assert_same(embeddings_h5.read_embeddings(str(out)), one_device)
    # each shard resumes on its own: a re-run of shard 1 finds everything done
    _embed(exported, fasta, out, "--num_shards=2", "--shard_index=1", "--window=9", "--num_devices=1")
    again = json.loads((tmp_path / "emb-00001-of-00002.metrics.json").read_text())
    assert again["sequences_embedded"] == 0 and again["skipped_existing"] == len(parts[1])


def test_a_bad_record_in_a_later_window_keeps_earlier_windows(exported, proteins, tmp_path, one_device, capsys):
    bad = tmp_path / "bad.fasta"
    rows = list(proteins)
    rows[20] = (rows[20][0], rows[20][1][:5] + "J" + rows[20][1][6:])  # window 3 of 9-sequence windows
    write_fasta(bad, rows)
    out = tmp_path / "emb.h5"
    rc = embed.main([f"--model={exported}", f"--fasta={bad}", f"--output={out}", "--no_progress",
                     "--compilation_cache_dir=", "--batch_tokens=512", "--window=9", "--num_devices=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert str(bad) in err[0] and rows[20][0] in err[0] and "position 6" in err[0]
    assert not out.exists() and list((tmp_path / "emb.h5.partial").glob("part-*.h5"))  # windows 1-2 kept
    good = tmp_path / "good.fasta"
    write_fasta(good, proteins)
    metrics = _embed(exported, good, out, "--window=9", "--num_devices=1")
    assert metrics["skipped_existing"] == 18 and metrics["sequences_embedded"] == 6
    _assert_same(embeddings_h5.read_embeddings(str(out)), one_device)


def test_read_windows_finds_duplicates_across_windows(tmp_path):
    path = tmp_path / "dup.fasta"
    write_fasta(path, [("a", "MK"), ("b", "MKV"), ("c", "G"), ("d", "W"), ("b", "AC")])
    windows = read_windows(path, 2)
    assert [r.id for r in next(windows)] == ["a", "b"]
    assert [r.id for r in next(windows)] == ["c", "d"]
    with pytest.raises(FastaFormatError, match=r"duplicate id 'b' at lines 3 and 9"):
        next(windows)
    with pytest.raises(FastaFormatError, match=r"duplicate id 'b' at lines 3 and 9"):
        list(read_windows(path, 10))


def test_shards_are_balanced_by_residues_and_disjoint():
    assert assign_shards([10, 9, 8, 7, 6, 5], 2).tolist() == [0, 1, 1, 0, 0, 1]  # 23 and 22 residues
    lengths = np.random.default_rng(0).integers(1, 1000, 5000)
    split = assign_shards(lengths, 8)
    totals = np.bincount(split, weights=lengths, minlength=8)
    assert totals.max() - totals.min() <= lengths.max()
    assert np.array_equal(split, assign_shards(list(lengths), 8))  # the same on every host


def test_plan_gives_every_device_rows_of_one_bucket():
    lengths = np.random.default_rng(1).integers(3, 300, 101)
    plan = plan_batches(lengths, batch_tokens=256, row_multiple=4)
    rows = batch_rows(plan, 4)
    assert sorted(i for _, m in plan for i in m) == list(range(101))
    for width, members in plan:
        assert rows[width] % 4 == 0 and len(members) <= rows[width]
        assert all(lengths[i] <= width for i in members)
        assert rows[width] // 4 <= max(1, 256 // width)  # the budget holds per device


def test_shard_names_and_incomplete_sets(tmp_path):
    assert shards.shard_path("out/emb.h5", 1, 2) == "out/emb-00001-of-00002.h5"
    assert shards.shard_path("pll.csv", 0, 1) == "pll.csv"
    with pytest.raises(InputError, match="--shard_index=2; must be in 0..1"):
        shards.resolve_shards(2, 2)
    for name in ("x-00000-of-00003.csv", "x-00002-of-00003.csv"):
        (tmp_path / name).write_text("")
    with pytest.raises(InputError, match=r"1 of 3 shards missing: x-00001-of-00003\.csv"):
        shards.find_shards(str(tmp_path / "x.csv"))
    with pytest.raises(FileNotFoundError):
        shards.find_shards(str(tmp_path / "y.csv"))


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_score_on_4_devices_and_in_2_shards_equals_1_device(exported, fasta, tmp_path, capsys):
    base = [f"--model={exported}", f"--fasta={fasta}", "--max_records=4", "--batch_tokens=512"]
    assert score.main([*base, f"--output={tmp_path / 'one.csv'}", "--num_devices=1"]) == 0
    assert score.main([*base, f"--output={tmp_path / 'four.csv'}", "--num_devices=4"]) == 0
    assert '"devices": 4, "processes": 1' in capsys.readouterr().out
    one, four = _rows(tmp_path / "one.csv"), _rows(tmp_path / "four.csv")
    assert [r["id"] for r in one] == [r["id"] for r in four]
    np.testing.assert_allclose([float(r["pseudo_likelihood"]) for r in four],
                               [float(r["pseudo_likelihood"]) for r in one], rtol=1e-5)
    for i in (0, 1):
        assert score.main([*base, f"--output={tmp_path / 'pll.csv'}", "--num_shards=2", f"--shard_index={i}",
                           "--num_devices=1"]) == 0
    split = _rows(tmp_path / "pll-00000-of-00002.csv") + _rows(tmp_path / "pll-00001-of-00002.csv")
    assert sorted(r["id"] for r in split) == sorted(r["id"] for r in one)
    by_id = {r["id"]: float(r["pseudo_likelihood"]) for r in one}
    np.testing.assert_allclose([float(r["pseudo_likelihood"]) for r in split], [by_id[r["id"]] for r in split],
                               rtol=1e-5)


def test_generate_greedy_on_4_devices_equals_1_device(exported, fasta, tmp_path):
    base = [f"--model={exported}", f"--fasta={fasta}", "--max_records=3", "--mask_fraction=0.1",
            "--strategy=greedy", "--num_samples=2"]
    for n in (1, 4):
        assert generate.main([*base, f"--output={tmp_path / f'v{n}.fasta'}", f"--num_devices={n}"]) == 0
    assert (tmp_path / "v1.fasta").read_text() == (tmp_path / "v4.fasta").read_text()
    one, four = _rows(tmp_path / "v1.csv"), _rows(tmp_path / "v4.csv")
    np.testing.assert_allclose([float(r["log_likelihood"]) for r in four], [float(r["log_likelihood"]) for r in one],
                               rtol=1e-5, atol=1e-5)


def test_model_embed_on_4_devices_equals_1(exported):
    import ankh_jax

    model = ankh_jax.load_model(str(exported), encoder_only=True)
    seqs = ["MKALCLLLLPVLGLLVSSKTLCSMEEAINERIQ", "GSHMSLFDFF", "WYC", "MK" * 40, "A"]
    one, four = model.embed(seqs, num_devices=1), model.embed(seqs, num_devices=4)
    assert model.embedding_params(4).parallel.size == 4
    for a, b in zip(four, one):
        assert a.shape == b.shape and np.abs(a - b).max() <= TOL * np.abs(b).max()
