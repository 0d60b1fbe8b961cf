"""The Beam build (DirectRunner, in-process) against the one-process build: the same ids in the same splits and the
same statistics, on ~10^5 synthetic records in several files and on the shipped proteins through the command; a
worker's error names the file and the record."""

import json
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

pytest.importorskip("apache_beam")

from ankh_jax.data import uniref
from ankh_jax.data.splits import is_validation

N_RECORDS = 100_000
N_FILES = 4
RESIDUES = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", np.uint8)
BUILD_KEYS_THAT_DIFFER = {"beam_runner", "build_seconds"}


def synthetic_fasta(folder, n=N_RECORDS, files=N_FILES, seed=0) -> dict[str, str]:
    """``n`` records (lengths 3..60, so some fall below min_length 5) dealt round-robin over ``files`` files;
    records ``i % 997 == 500`` hold a digit (invalid). Returns id -> sequence as written."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 61, n)
    letters = RESIDUES[rng.integers(0, len(RESIDUES), int(lengths.sum()))].tobytes().decode()
    ends = np.cumsum(lengths)
    written = {}
    handles = [open(folder / f"part-{k}.fasta", "w") for k in range(files)]  # noqa: SIM115
    try:
        for i in range(n):
            seq = letters[ends[i] - lengths[i]: ends[i]]
            if i % 997 == 500:
                seq = seq[:1] + "7" + seq[2:]
            rid = f"UniRef90_S{i:06d}"
            written[rid] = seq
            handles[i % files].write(f">{rid} synthetic n={i}\n{seq}\n")
    finally:
        for h in handles:
            h.close()
    return written


def split_ids(builder) -> set[tuple[str, str]]:
    """(split, id) of every record in the built shards, read straight from the TFRecords in large batches."""
    import tensorflow as tf

    pairs = set()
    for split in builder.info.splits:
        files = sorted(str(p) for p in builder.data_path.glob(f"*-{split}.tfrecord-*"))
        assert len(files) == builder.info.splits[split].num_shards
        ids = tf.data.TFRecordDataset(files).batch(20_000).map(
            lambda x: tf.io.parse_example(x, {"id": tf.io.FixedLenFeature([], tf.string)})["id"])
        pairs.update((split, i.decode()) for batch in ids.as_numpy_iterator() for i in batch)
    return pairs


def comparable(metadata) -> dict:
    return {k: v for k, v in metadata.items() if k not in BUILD_KEYS_THAT_DIFFER}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    written = synthetic_fasta(folder)
    return folder, written


def test_beam_and_one_process_agree_on_100k_records_in_4_files(synthetic):
    folder, written = synthetic
    settings = {"config": "uniref90", "num_shards": 2, "validation_fraction": 0.01, "min_length": 5}
    one = uniref.build(str(folder / "part-*.fasta"), folder / "one", **settings)
    beam = uniref.build(str(folder / "part-*.fasta"), folder / "beam", beam_runner="DirectRunner", **settings)
    pairs = split_ids(one)
    assert split_ids(beam) == pairs
    kept = {i for i, s in written.items() if len(s) >= 5 and "7" not in s}
    assert pairs == {("validation" if is_validation(i, 0.01) else "train", i) for i in kept}
    assert comparable(beam.info.metadata) == comparable(one.info.metadata)
    meta = one.info.metadata
    assert meta["records_in_fasta"] == N_RECORDS and meta["beam_runner"] is None
    assert beam.info.metadata["beam_runner"] == "DirectRunner"
    skipped = meta["skipped"]
    invalid = [i for i in range(N_RECORDS) if i % 997 == 500]
    assert skipped["invalid_residue"]["count"] == len(invalid)
    # "first" examples are first in input order (file, then record) both ways: part-k holds records k, k+4, ...
    first = sorted(invalid, key=lambda i: (i % N_FILES, i))[:5]
    assert [e["id"] for e in skipped["invalid_residue"]["examples"]] == [f"UniRef90_S{i:06d}" for i in first]
    assert skipped["too_short"]["count"] == sum(len(s) < 5 and "7" not in s for s in written.values())
    assert meta["train_stats"]["records"] + meta["validation_stats"]["records"] == len(kept)
    assert {s.num_shards for s in beam.info.splits.values()} == {2}


def test_command_with_direct_runner_matches_one_process_on_the_shipped_proteins(prepare, sample_fasta, tmp_path):
    common = [f"--fasta={sample_fasta}", "--num_shards=2", "--validation_fraction=0.05", "--no_progress"]
    assert prepare.main([*common, f"--output_dir={tmp_path / 'one'}"]) == 0
    assert prepare.main([*common, f"--output_dir={tmp_path / 'beam'}", "--beam_runner=DirectRunner",
                         "--direct_num_workers=1"]) == 0
    one = tfds.builder("uniref50", data_dir=tmp_path / "one")
    beam = tfds.builder("uniref50", data_dir=tmp_path / "beam")
    assert split_ids(beam) == split_ids(one)
    assert len(split_ids(one)) == 1446
    stats = {k: json.loads((tmp_path / k / "stats.json").read_text()) for k in ("one", "beam")}
    for key in ("records_in_fasta", "skipped", "parameters"):
        assert stats["beam"][key] == stats["one"][key]
    for split in ("train", "validation"):
        for key in ("records", "residues", "min_length", "max_length", "length_histogram", "shards"):
            assert stats["beam"]["splits"][split][key] == stats["one"]["splits"][split][key]
    assert (stats["one"]["beam_runner"], stats["beam"]["beam_runner"]) == (None, "DirectRunner")


def test_a_worker_error_names_the_file_and_the_record(prepare, tmp_path, capsys):
    (tmp_path / "a.fasta").write_text(">A1\nMKVLAAGG\n>A2\nMKVLAAGG\n")
    (tmp_path / "b.fasta").write_text(">B1\nMKVLAAGG\n>B2 broken\nMKV#LL\n")
    out = tmp_path / "out"
    assert prepare.main([f"--fasta={tmp_path}/*.fasta", f"--output_dir={out}", "--validation_fraction=0",
                         "--strict", "--beam_runner=DirectRunner"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("prepare_uniref50: error: ")
    assert re.search(r"b\.fasta \(line 3\): record 'B2': invalid residue '#' at position 4", last), last
    assert not (out / "uniref50" / "1.0.0").exists()
