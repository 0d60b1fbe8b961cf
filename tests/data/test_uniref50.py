"""The UniRef50 TFDS builder on the shipped sample: splits, shards, statistics, bad records."""

import gzip
import hashlib
import shutil

import pytest
import tensorflow_datasets as tfds

from ankh_jax.data import uniref50
from ankh_jax.data.fasta import load_fasta
from ankh_jax.data.tokenizer import InvalidSequenceError


@pytest.fixture(scope="module")
def sample_records(sample_fasta):
    return {r.id: r.sequence for r in load_fasta(sample_fasta)}


def test_split_rule_is_a_hash_of_the_id():
    ids = [f"UniRef50_P{i:06d}" for i in range(40000)]
    chosen = [i for i in ids if uniref50.is_validation(i, 0.05)]
    assert abs(len(chosen) / len(ids) - 0.05) < 0.005  # binomial sd 0.0011
    # Independent re-implementation of the documented rule.
    expected = [i for i in ids if int(hashlib.sha1(i.encode()).hexdigest()[:16], 16) / 2**64 < 0.05]
    assert chosen == expected


def test_sample_build_splits_shards_and_stats(sample_tfds_dir, sample_records):
    builder = tfds.builder("uniref50", data_dir=sample_tfds_dir)
    splits = builder.info.splits
    expected_val = {i for i in sample_records if uniref50.is_validation(i, 0.05)}
    assert splits["validation"].num_examples == len(expected_val) > 0
    assert splits["train"].num_examples == len(sample_records) - len(expected_val)
    assert splits["train"].num_shards == splits["validation"].num_shards == 8
    assert str(builder.info.version) == "1.0.0"
    read = {}
    for split in ("train", "validation"):
        for ex in tfds.as_numpy(builder.as_dataset(split=split)):
            read[ex["id"].decode()] = (split, ex["sequence"].decode())
    assert {k: v[1] for k, v in read.items()} == sample_records  # every record, unchanged, exactly once
    assert {k for k, v in read.items() if v[0] == "validation"} == expected_val
    meta = builder.info.metadata
    assert meta["records_in_fasta"] == len(sample_records) and meta["skipped"] == {}
    stats = meta["train_stats"]
    lengths = [len(s) for i, s in sample_records.items() if i not in expected_val]
    assert stats["records"] == len(lengths) and stats["residues"] == sum(lengths)
    assert (stats["min_length"], stats["max_length"]) == (min(lengths), max(lengths))
    hist = stats["length_histogram"]
    assert sum(b["count"] for b in hist) == len(lengths)
    assert all(b["count"] == sum(b["from"] <= n < (b["below"] or 1e9) for n in lengths) for b in hist)


@pytest.fixture()
def bad_fasta(tmp_path, sample_fasta):
    with open(sample_fasta) as f:
        text = f.read().split(">")[1:41]
    records = [">" + r for r in text]
    records.insert(3, ">BAD1 broken\nMKVL\nAA1GG\n")
    path = tmp_path / "bad.fasta.gz"
    with gzip.open(path, "wt") as f:
        f.write("".join(records))
    return path


def test_bad_record_is_an_error_naming_file_record_position(bad_fasta, tmp_path):
    with pytest.raises(InvalidSequenceError) as err:
        uniref50.build(bad_fasta, tmp_path / "strict", num_shards=1, validation_fraction=0.1, skip_invalid=False)
    message = str(err.value)
    assert str(bad_fasta) in message and "'BAD1'" in message and "position 7" in message


def test_bad_record_is_skipped_and_counted(bad_fasta, tmp_path):
    builder = uniref50.build(bad_fasta, tmp_path / "lenient", num_shards=1, validation_fraction=0.1,
                             min_length=100)
    meta = builder.info.metadata
    assert meta["records_in_fasta"] == 41
    assert meta["skipped"]["invalid_residue"]["count"] == 1
    assert meta["skipped"]["invalid_residue"]["examples"][0]["id"] == "BAD1"
    short = [r for r in load_fasta_skip(bad_fasta) if len(r.sequence) < 100]
    assert meta["skipped"]["too_short"]["count"] == len(short)
    kept = sum(s.num_examples for s in builder.info.splits.values())
    assert kept == 40 - len(short)
    shutil.rmtree(tmp_path / "lenient")


def load_fasta_skip(path):
    from ankh_jax.data.fasta import read_fasta

    return list(read_fasta(path, skip_invalid=True))
