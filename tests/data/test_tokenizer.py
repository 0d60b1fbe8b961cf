"""Ankh's vocabulary, three ways: the plain tokenizer, seqio's SentencePiece vocabulary and HF's AutoTokenizer.

The three must give identical ids for the shipped real proteins; the layout itself is checked against the
released Ankh vocabulary as documented (specials 0..2, residues 3..27 in ProtT5 order, sentinel k = 143 - k).
"""

import json

import numpy as np
import pytest

from ankh_jax.data import tokenizer as tk
from ankh_jax.data.fasta import load_fasta

# The released Ankh tokenizer.json's order, written out independently of ankh_jax.data.tokenizer.
EXPECTED_FIRST_28 = ["<pad>", "</s>", "<unk>"] + list("ALGVSREDTIPKFQNYMHWCXBOUZ")


@pytest.fixture(scope="module")
def sample_sequences(sample_fasta):
    return [r.sequence for r in load_fasta(sample_fasta)]


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("hf_tok")
    tk.write_hf_tokenizer(str(out))
    return transformers.AutoTokenizer.from_pretrained(str(out))


def test_vocabulary_layout():
    assert tk.VOCAB_SIZE == 144
    assert tk.ID_TO_TOKEN[:28] == EXPECTED_FIRST_28
    assert tk.sentinel_id(0) == 143 and tk.sentinel_id(115) == 28
    assert tk.ID_TO_TOKEN[143] == "<extra_id_0>" and tk.ID_TO_TOKEN[28] == "<extra_id_115>"
    with pytest.raises(ValueError):
        tk.sentinel_id(116)


def test_plain_encode_appends_eos_without_bos():
    tok = tk.AnkhTokenizer()
    ids = tok.encode("mkv a\n*")  # cleaned: whitespace dropped, upper-cased, one trailing '*' dropped
    np.testing.assert_array_equal(ids, [19, 14, 6, 3, 1])
    assert ids.dtype == np.int32
    assert tok.decode(ids) == "MKVA"


def test_batch_encode_pads_and_truncates():
    tok = tk.AnkhTokenizer()
    ids, mask = tok.batch_encode(["MKV", "A"], pad_to=6)
    np.testing.assert_array_equal(ids, [[19, 14, 6, 1, 0, 0], [3, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    ids, _ = tok.batch_encode(["MKVLA"], max_length=3)
    np.testing.assert_array_equal(ids, [[19, 14, 1]])


@pytest.mark.parametrize("bad, pos, char", [("MKXJ", 4, "J"), ("MK-V", 3, "-"), ("M*K", 2, "*"), ("MK**", 3, "*")])
def test_invalid_residue_error_names_record_and_position(bad, pos, char):
    with pytest.raises(tk.InvalidSequenceError) as e:
        tk.clean_sequence(bad, record="P12345", source="x.fasta")
    msg = str(e.value)
    assert "x.fasta" in msg and "P12345" in msg and f"position {pos}" in msg and repr(char) in msg


def test_empty_sequence_rejected():
    with pytest.raises(tk.InvalidSequenceError, match="empty"):
        tk.clean_sequence(" *\n", record="r1")


def test_autotokenizer_matches_plain_tokenizer(hf_tokenizer, sample_sequences):
    tok = tk.AnkhTokenizer()
    assert len(hf_tokenizer) == 144
    for seq in sample_sequences:
        assert hf_tokenizer(seq)["input_ids"] == tok.encode(seq).tolist()
    # Every residue letter, and the sentinels / specials by token string.
    assert hf_tokenizer(tk.RESIDUES)["input_ids"] == list(range(3, 28)) + [1]
    assert hf_tokenizer.convert_tokens_to_ids("<extra_id_0>") == 143
    assert hf_tokenizer.convert_tokens_to_ids("<extra_id_115>") == 28
    assert (hf_tokenizer.pad_token_id, hf_tokenizer.eos_token_id, hf_tokenizer.unk_token_id) == (0, 1, 2)


def test_hf_export_returns_only_t5_inputs(hf_tokenizer, tmp_path):
    """``model(**tokenizer(...))`` needs exactly input_ids and attention_mask (transformers 4 added
    token_type_ids unless the tokenizer declares its inputs)."""
    tk.write_hf_tokenizer(str(tmp_path))
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["model_input_names"] == ["input_ids", "attention_mask"]
    assert set(hf_tokenizer(["MKV", "A"], padding=True)) == {"input_ids", "attention_mask"}


def test_autotokenizer_cleans_like_ankh_jax(hf_tokenizer, sample_sequences):
    """Lowercase, whitespace and one trailing '*' give the ids ankh_jax.embed gives (not <unk>)."""
    tok = tk.AnkhTokenizer()
    for seq in sample_sequences[:200]:
        messy = " ".join(seq[i:i + 10] for i in range(0, len(seq), 10)).lower() + "*\n"
        assert hf_tokenizer(messy)["input_ids"] == tok.encode(messy).tolist()
    assert hf_tokenizer("mk\tv a")["input_ids"] == [19, 14, 6, 3, 1]
    assert hf_tokenizer("mkJ")["input_ids"] == [19, 14, 2, 1]  # invalid: <unk>, not an error
    assert hf_tokenizer("MK<extra_id_0>v")["input_ids"] == [19, 14, 143, 6, 1]


@pytest.mark.parametrize("cls", ["T5TokenizerFast", "T5Tokenizer"])
def test_t5_tokenizer_classes_load_the_export_with_the_same_ids(cls, hf_tokenizer, sample_sequences, tmp_path):
    """The classes the released Ankh repos load with: no 'Both extra_ids (100) and additional_special_tokens'
    error, the same 144 ids (transformers 4's SentencePiece T5Tokenizer reads spiece.model)."""
    transformers = pytest.importorskip("transformers")
    tk.write_hf_tokenizer(str(tmp_path))
    t5 = getattr(transformers, cls).from_pretrained(str(tmp_path))
    assert len(t5) == 144 and (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    assert [t5.convert_tokens_to_ids(f"<extra_id_{k}>") for k in (0, 1, 115)] == [143, 142, 28]
    for seq in sample_sequences[:200]:
        assert t5(seq)["input_ids"] == hf_tokenizer(seq)["input_ids"]
        assert t5(seq.lower())["input_ids"] == hf_tokenizer(seq)["input_ids"]
    assert t5("MK<extra_id_0>V")["input_ids"] == [19, 14, 143, 6, 1]
    padded = t5(["MKV", "A"], padding=True)
    assert set(padded) == {"input_ids", "attention_mask"} and padded["input_ids"] == [[19, 14, 6, 1], [3, 1, 0, 0]]


def test_autotokenizer_batch_padding_matches(hf_tokenizer):
    seqs = ["MKVLA", "GS", "WWWYC"]
    hf = hf_tokenizer(seqs, padding=True, return_tensors="np")
    ids, mask = tk.AnkhTokenizer().batch_encode(seqs)
    np.testing.assert_array_equal(hf["input_ids"], ids)
    np.testing.assert_array_equal(hf["attention_mask"], mask)


def test_seqio_vocabulary_matches_plain_tokenizer(sample_sequences):
    pytest.importorskip("seqio")
    vocab = tk.seqio_vocabulary()
    tok = tk.AnkhTokenizer()
    assert vocab.vocab_size == 144
    # seqio's encode adds no EOS (its feature converters append it); compare the residue ids.
    for seq in sample_sequences[:300]:
        assert vocab.encode(seq) == tok.encode(seq, add_eos=False).tolist()
    assert vocab.encode(tk.RESIDUES) == list(range(3, 28))
    # seqio counts sentinels down from the top of the vocabulary, as Ankh does.
    # (SentencePiece puts a space before a sentinel it decodes; the ids are what matters.)
    assert vocab.decode([143]).strip() == "<extra_id_0>"
    assert vocab.decode([28]).strip() == "<extra_id_115>"
    assert vocab.decode([19, 14, 6]) == "MKV"
