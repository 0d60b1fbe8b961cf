"""The checks before a build: file lists from globs, the record-count estimate behind the validation check."""

import gzip

import pytest

from ankh_jax.data import uniref_inputs
from ankh_jax.data.fasta import load_fasta, write_fasta
from ankh_jax.data.uniref_records import BuildRules
from ankh_jax.errors import InputError


def test_globs_and_paths_resolve_in_order_without_duplicates(tmp_path):
    for name in ("b.fasta", "a.fasta", "c.fa"):
        (tmp_path / name).write_text(">X\nMK\n")
    files = uniref_inputs.resolve_fasta_files([f"{tmp_path}/c.fa,{tmp_path}/*.fasta", f"{tmp_path}/a.fasta"])
    assert files == [str(tmp_path / "c.fa"), str(tmp_path / "a.fasta"), str(tmp_path / "b.fasta")]
    with pytest.raises(InputError, match=r"\*\.faa: the pattern matches no file"):
        uniref_inputs.resolve_fasta_files(f"{tmp_path}/*.faa")


@pytest.mark.parametrize("compress", [False, True])
def test_record_estimate_from_the_first_mib(tmp_path, sample_fasta, compress):
    records = load_fasta(sample_fasta)
    copies = [(f"{r.id}#{c}", r.sequence) for c in range(6) for r in records]  # ~3 MiB, 8,676 records
    plain = tmp_path / "many.fasta"
    write_fasta(plain, copies)
    path = plain
    if compress:
        path = tmp_path / "many.fasta.gz"
        with open(plain, "rb") as src, gzip.open(path, "wb") as dst:
            dst.write(src.read())
    estimate = uniref_inputs.estimate_records([str(path)])
    assert abs(estimate / len(copies) - 1) < 0.15
    assert uniref_inputs.estimate_records([str(sample_fasta)]) == len(records)  # read whole: exact


def test_validation_check_passes_when_a_record_lands_there(sample_fasta, tmp_path):
    records = load_fasta(sample_fasta)[:200]
    write_fasta(tmp_path / "p.fasta", records)
    uniref_inputs.check_validation_split([str(tmp_path / "p.fasta")], BuildRules(validation_fraction=0.05))
    uniref_inputs.check_validation_split([str(tmp_path / "p.fasta")], BuildRules(validation_fraction=0))
    with pytest.raises(InputError, match="none of its 2 records passes the length filter"):
        write_fasta(tmp_path / "short.fasta", [("S1", "MK"), ("S2", "MKV")])
        uniref_inputs.check_validation_split([str(tmp_path / "short.fasta")],
                                             BuildRules(validation_fraction=0.01, min_length=10))
