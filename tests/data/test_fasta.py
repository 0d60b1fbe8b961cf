"""FASTA headers as the bio tools read them: the id is the header's first whitespace-delimited word (Biopython's
``record.id``), the description the whole header (``record.description``); duplicates are found on the ids."""

import pytest

from ankh_jax.data.fasta import FastaFormatError, load_fasta, read_fasta


def test_the_id_is_the_first_word_and_the_description_the_whole_header(tmp_path):
    fasta = tmp_path / "h.fasta"
    fasta.write_text(">sp|P12345|ABC_HUMAN\tProtein ABC OS=Homo sapiens\nMKV\n>P2  two  spaces \nGS\n>P3\nWY\n")
    records = list(read_fasta(fasta))
    assert [r.id for r in records] == ["sp|P12345|ABC_HUMAN", "P2", "P3"]
    assert [r.description for r in records] == ["sp|P12345|ABC_HUMAN\tProtein ABC OS=Homo sapiens", "P2  two  spaces",
                                                "P3"]
    assert [r.sequence for r in records] == ["MKV", "GS", "WY"]


@pytest.mark.parametrize("second", [">P1\tanother description", ">P1 b", ">P1"])
def test_duplicates_are_found_on_the_ids(tmp_path, second):
    fasta = tmp_path / "d.fasta"
    fasta.write_text(f">P1 a\nMKV\n{second}\nGS\n")
    with pytest.raises(FastaFormatError, match=r"duplicate id 'P1' at lines 1 and 3"):
        load_fasta(fasta)


def test_a_header_of_only_whitespace_has_no_id(tmp_path):
    fasta = tmp_path / "e.fasta"
    fasta.write_text(">\t \nMKV\n")
    with pytest.raises(FastaFormatError, match="line 1: header without an id"):
        load_fasta(fasta)
