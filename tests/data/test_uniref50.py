"""The uniref TFDS builder on the shipped sample: splits, shards, statistics, bad records, configs, data built
before the configs existed, the input read once, and the dataset chosen by gin."""

import gzip
import hashlib
import shutil

import gin
import pytest
import seqio
import tensorflow_datasets as tfds

from ankh_jax.data import uniref, uniref_records
from ankh_jax.data.fasta import load_fasta, write_fasta
from ankh_jax.data.splits import is_validation
from ankh_jax.data.tokenizer import InvalidSequenceError
from ankh_jax.errors import InputError


@pytest.fixture(scope="module")
def sample_records(sample_fasta):
    return {r.id: r.sequence for r in load_fasta(sample_fasta)}


def test_split_rule_is_a_hash_of_the_id():
    ids = [f"UniRef50_P{i:06d}" for i in range(40000)]
    chosen = [i for i in ids if is_validation(i, 0.05)]
    assert abs(len(chosen) / len(ids) - 0.05) < 0.005  # binomial sd 0.0011
    # Independent re-implementation of the documented rule.
    expected = [i for i in ids if int(hashlib.sha1(i.encode()).hexdigest()[:16], 16) / 2**64 < 0.05]
    assert chosen == expected


def test_sample_build_splits_shards_and_stats(sample_tfds_dir, sample_records):
    builder = tfds.builder("uniref50", data_dir=sample_tfds_dir)
    splits = builder.info.splits
    expected_val = {i for i in sample_records if is_validation(i, 0.05)}
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
        uniref.build(bad_fasta, tmp_path / "strict", num_shards=1, validation_fraction=0.1, skip_invalid=False)
    message = str(err.value)
    assert str(bad_fasta) in message and "'BAD1'" in message and "position 7" in message


def test_bad_record_is_skipped_and_counted(bad_fasta, tmp_path):
    builder = uniref.build(bad_fasta, tmp_path / "lenient", num_shards=1, validation_fraction=0.1,
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


def read_ids(builder) -> dict[str, set]:
    return {split: {ex["id"].decode() for ex in tfds.as_numpy(builder.as_dataset(split=split))}
            for split in builder.info.splits}


@pytest.fixture(scope="module")
def legacy_dir(repo_root, tmp_path_factory):
    """``tests/data/legacy_uniref50``: 60 shipped proteins built by the single-dataset ``uniref50`` builder before
    the configs (1 shard per split, 10% validation; its metadata's source path shortened), copied so reading
    cannot touch the checkout."""
    out = tmp_path_factory.mktemp("legacy")
    shutil.copytree(repo_root / "tests" / "data" / "legacy_uniref50", out, dirs_exist_ok=True)
    return out


def test_data_built_before_the_configs_still_reads(legacy_dir, sample_fasta):
    first60 = [r.id for r in load_fasta(sample_fasta)[:60]]
    expected = {"train": {i for i in first60 if not is_validation(i, 0.1)},
                "validation": {i for i in first60 if is_validation(i, 0.1)}}
    assert len(expected["validation"]) == 6
    for name in ("uniref50", "uniref/uniref50", "uniref50:1.0.0", "uniref/uniref50:1.0.0"):
        builder = tfds.builder(name, data_dir=legacy_dir)
        assert builder.data_dir == str(legacy_dir / "uniref50" / "1.0.0")
        assert read_ids(builder) == expected
        assert builder.info.metadata["records_in_fasta"] == 60


def test_data_built_before_the_configs_feeds_the_pretraining_task(legacy_dir):
    from ankh_jax.tasks import pretraining

    from ankh_jax.data.input_pipeline import make_input

    with gin.unlock_config():
        gin.bind_parameter("pretraining_data.data_dir", str(legacy_dir))
    try:
        assert pretraining.pretraining_data() == ("uniref50", str(legacy_dir))
        it = make_input("uniref50_ankh_validation", "validation", feature_lengths={"inputs": 32, "targets": 14},
                        batch_size=6, seed=0, shard_id=0, num_shards=1, shuffle=False)
        batch = next(it)
        assert batch["encoder_input_tokens"].shape == (6, 32) and (batch["decoder_loss_weights"].sum(1) > 0).all()
    finally:
        gin.clear_config()


def test_configs_live_side_by_side_and_unknown_is_refused(tmp_path, sample_fasta):
    records = load_fasta(sample_fasta)[:80]
    fasta = tmp_path / "uniref90.fasta"
    write_fasta(fasta, records)
    built = uniref.build(fasta, tmp_path / "tfds", config="uniref90", num_shards=1, validation_fraction=0.2)
    assert built.data_dir == str(tmp_path / "tfds" / "uniref90" / "1.0.0")
    assert sorted(p.name for p in (tmp_path / "tfds" / "uniref90" / "1.0.0").glob("*.tfrecord*")) == [
        "uniref90-train.tfrecord-00000-of-00001", "uniref90-validation.tfrecord-00000-of-00001"]
    again = tfds.builder("uniref/uniref90", data_dir=tmp_path / "tfds")
    assert read_ids(again) == {"train": {r.id for r in records if not is_validation(r.id, 0.2)},
                               "validation": {r.id for r in records if is_validation(r.id, 0.2)}}
    assert again.info.metadata["config"] == "uniref90"
    assert not (tmp_path / "tfds" / "uniref50").exists()
    with pytest.raises(InputError, match="unknown dataset config 'uniref60'.*uniref50, uniref90, uniref100, bfd"):
        uniref.build(fasta, tmp_path / "tfds", config="uniref60")


def test_the_input_is_read_once_per_build(tmp_path, sample_fasta, monkeypatch):
    reads = []
    real = uniref_records.read_fasta
    monkeypatch.setattr(uniref_records, "read_fasta", lambda path, **kw: reads.append(str(path)) or real(path, **kw))
    parts = [tmp_path / "a.fasta", tmp_path / "b.fasta"]
    records = load_fasta(sample_fasta)[:100]
    write_fasta(parts[0], records[:50])
    write_fasta(parts[1], records[50:])
    # 0.4 expects 40 validation records, enough that the pre-check does not count them exactly (by a read of its
    # own, done for small inputs only: uniref_inputs.check_validation_split).
    builder = uniref.build(str(tmp_path / "*.fasta"), tmp_path / "tfds", num_shards=1, validation_fraction=0.4)
    assert sorted(reads) == sorted(str(p) for p in parts)  # two splits written, each file opened once
    assert sum(s.num_examples for s in builder.info.splits.values()) == 100
    assert builder.info.metadata["source_files"] == [str(p) for p in parts]


def test_pretraining_dataset_is_a_gin_binding(tmp_path, sample_fasta):
    from ankh_jax.tasks import pretraining

    records = load_fasta(sample_fasta)[:80]
    write_fasta(tmp_path / "u100.fasta", records)
    uniref.build(tmp_path / "u100.fasta", tmp_path / "tfds", config="uniref100", num_shards=1,
                 validation_fraction=0.2)
    task = seqio.get_mixture_or_task(pretraining.VALIDATION_TASK)
    with gin.unlock_config():
        gin.parse_config([f"pretraining_data.data_dir = '{tmp_path / 'tfds'}'",
                          "pretraining_data.dataset = 'uniref100'"])
    try:
        ids = {ex["id"].decode() for ex in tfds.as_numpy(task.source.get_dataset("validation", shuffle=False))}
        assert ids == {r.id for r in records if is_validation(r.id, 0.2)}
        with gin.unlock_config():
            gin.bind_parameter("pretraining_data.dataset", "uniref90")
        with pytest.raises(InputError, match=f"no uniref90 dataset at {tmp_path / 'tfds' / 'uniref90'}"):
            task.source.get_dataset("validation")
    finally:
        gin.clear_config()



def test_beam_is_imported_only_for_a_beam_build(tmp_path, sample_fasta):
    """The one-process build, the pretraining task and the command's start never import Apache Beam."""
    import subprocess
    import sys

    write_fasta(tmp_path / "p.fasta", [(r.id, r.sequence) for r in load_fasta(sample_fasta)[:60]])
    code = (f"import sys; from ankh_jax.data import uniref; import ankh_jax.tasks.pretraining; "
            f"uniref.build({str(tmp_path / 'p.fasta')!r}, {str(tmp_path / 'tfds')!r}, num_shards=1, "
            "validation_fraction=0.5); print('apache_beam' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
