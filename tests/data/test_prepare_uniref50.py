"""scripts/prepare_uniref50.py on the shipped sample: the dataset, stats.json, progress, flags."""

import gzip
import importlib.util
import json
import shutil

import pytest

from ankh_jax.data.fasta import load_fasta
from ankh_jax.data.tokenizer import InvalidSequenceError


@pytest.fixture(scope="module")
def prepare(repo_root):
    spec = importlib.util.spec_from_file_location("prepare_uniref50", repo_root / "scripts" / "prepare_uniref50.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_sample_writes_dataset_and_stats(prepare, sample_fasta, tmp_path, capsys):
    fasta = tmp_path / "uniref50.fasta.gz"
    with open(sample_fasta, "rb") as src, gzip.open(fasta, "wb") as dst:
        shutil.copyfileobj(src, dst)
    out = tmp_path / "out"
    assert prepare.main([f"--fasta={fasta}", f"--output_dir={out}", "--num_shards=2",
                         "--validation_fraction=0.1", "--max_length=300"]) == 0
    captured = capsys.readouterr()
    assert "records/s" in captured.err  # the progress bar
    stats = json.loads((out / "stats.json").read_text())
    lengths = [len(r.sequence) for r in load_fasta(sample_fasta)]
    too_long = sum(n > 300 for n in lengths)
    assert stats["records_in_fasta"] == len(lengths)
    assert stats["skipped"]["too_long"]["count"] == too_long > 0
    splits = stats["splits"]
    assert splits["train"]["records"] + splits["validation"]["records"] == len(lengths) - too_long
    assert splits["train"]["shards"] == splits["validation"]["shards"] == 2
    assert splits["train"]["max_length"] <= 300
    assert sum(b["count"] for b in splits["train"]["length_histogram"]) == splits["train"]["records"]
    assert stats["parameters"]["validation_fraction"] == 0.1 and stats["version"] == "1.0.0"
    assert sorted(p.name for p in (out / "uniref50" / "1.0.0").glob("uniref50-train.tfrecord-*")) == [
        "uniref50-train.tfrecord-00000-of-00002", "uniref50-train.tfrecord-00001-of-00002"]
    assert (out / "uniref50" / "1.0.0" / "dataset_info.json").exists()


def test_prepare_strict_names_the_bad_record(prepare, tmp_path):
    fasta = tmp_path / "bad.fasta"
    fasta.write_text(">OK1\nMKVLAAGG\n>BAD2 x\nMKV*LL\n")
    with pytest.raises(InvalidSequenceError, match=r"bad\.fasta.*'BAD2'.*position 4"):
        prepare.main([f"--fasta={fasta}", f"--output_dir={tmp_path / 'o'}", "--num_shards=1",
                      "--validation_fraction=0", "--strict", "--no_progress"])


def test_prepare_rejects_missing_fasta(prepare, tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        prepare.main([f"--fasta={tmp_path / 'nope.fasta'}", f"--output_dir={tmp_path}"])
