"""scripts/prepare_uniref50.py on the shipped sample: the dataset, stats.json, progress, flags, and each bad input
(too small for the validation fraction, not FASTA, a glob matching nothing, an unknown config) as one line, exit 2,
before anything is written."""

import gzip
import json
import re
import shutil

import pytest

from ankh_jax.data.fasta import load_fasta, write_fasta
from ankh_jax.data.splits import validation_score


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


def test_prepare_strict_names_the_bad_record(prepare, tmp_path, capsys):
    fasta = tmp_path / "bad.fasta"
    fasta.write_text(">OK1\nMKVLAAGG\n>BAD2 x\nMKV*LL\n")
    assert prepare.main([f"--fasta={fasta}", f"--output_dir={tmp_path / 'o'}", "--num_shards=1",
                         "--validation_fraction=0", "--strict", "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert re.search(r"bad\.fasta.*'BAD2'.*position 4", err)
    assert not (tmp_path / "o" / "uniref50" / "1.0.0").exists()  # nothing half-written


def _one_line_error(prepare, capsys, argv) -> str:
    assert prepare.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("prepare_uniref50: error: ") and "\n" not in err, err
    return err


def test_small_fasta_with_the_default_fraction_is_refused_before_any_work(prepare, sample_fasta, tmp_path, capsys):
    """200 proteins at the default 0.0005 expect 0.1 validation records: tfds used to fail after the whole build
    ("No examples were yielded"); now one line names the fraction that works, and nothing is written."""
    records = [r for r in load_fasta(sample_fasta) if validation_score(r.id) >= 0.0005][:200]
    fasta = tmp_path / "p200.fasta"
    write_fasta(fasta, records)
    out = tmp_path / "out"
    err = _one_line_error(prepare, capsys, [f"--fasta={fasta}", f"--output_dir={out}"])
    assert str(fasta) in err and "--validation_fraction=0.0005 puts none of its 200" in err
    suggested = float(re.search(r"use --validation_fraction=([0-9.e-]+) or more", err).group(1))
    smallest = min(validation_score(r.id) for r in records)
    assert smallest < suggested <= 1.5 * smallest  # the suggestion puts at least one record there, and not many
    assert not out.exists()
    assert prepare.main([f"--fasta={fasta}", f"--output_dir={out}", f"--validation_fraction={suggested}",
                         "--no_progress"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["splits"]["validation"]["records"] == sum(validation_score(r.id) < suggested for r in records) >= 1


@pytest.mark.parametrize("make_input,expected", [
    (lambda d: (d / "notes.txt").write_text("hello\nMKV\n") and f"{d}/notes.txt",
     r"notes\.txt: line 1: sequence data before the first '>' header"),
    (lambda d: (d / "x.fasta").write_bytes(b"\x00\x01binary") and f"{d}/x.fasta", r"x\.fasta: line 1: binary data"),
    (lambda d: (d / "empty.fasta").write_text("") is not None and f"{d}/empty.fasta", r"empty\.fasta: no FASTA record"),
    (lambda d: f"{d}/parts/*.fasta.gz", r"parts/\*\.fasta\.gz: the pattern matches no file"),
    (lambda d: f"{d}/nope.fasta", r"nope\.fasta: no such FASTA file"),
    (lambda d: str(d), r"is a directory, not a FASTA file"),
])
def test_bad_input_is_one_line_before_any_work(prepare, tmp_path, capsys, make_input, expected):
    fasta = make_input(tmp_path)
    err = _one_line_error(prepare, capsys, [f"--fasta={fasta}", f"--output_dir={tmp_path / 'out'}"])
    assert re.search(expected, err), err
    assert not (tmp_path / "out").exists()


def test_unknown_config_and_stray_beam_flags_are_one_line(prepare, sample_fasta, tmp_path, capsys):
    err = _one_line_error(prepare, capsys, [f"--fasta={sample_fasta}", f"--output_dir={tmp_path}", "--config=uniref60"])
    assert "unknown dataset config 'uniref60'; choose one of uniref50, uniref90, uniref100, bfd" in err
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error, exit 2
        prepare.main([f"--fasta={sample_fasta}", f"--output_dir={tmp_path}", "--direct_num_workers=2"])
    assert exit_.value.code == 2
    assert "Beam pipeline options need --beam_runner" in capsys.readouterr().err


def test_an_id_in_two_files_is_one_line_naming_it(prepare, tmp_path, capsys):
    (tmp_path / "a.fasta").write_text(">A1\nMKVLAAGG\n>A2\nMKVLAAGG\n")
    (tmp_path / "b.fasta").write_text(">B1\nMKVLAAGG\n>A1 again\nMKVLAAGG\n")
    out = tmp_path / "out"
    assert prepare.main([f"--fasta={tmp_path}/*.fasta", f"--output_dir={out}", "--validation_fraction=0",
                         "--no_progress"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("prepare_uniref50: error: 'A1' appears twice in the input")
    assert not (out / "uniref50" / "1.0.0").exists()
