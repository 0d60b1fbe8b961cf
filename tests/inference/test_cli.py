"""``python -m ankh_jax.score`` and ``python -m ankh_jax.generate`` end to end on the tiny exported model, the
``AnkhModel`` methods, infilling's answer reading, and bad input (one line, exit 2, nothing written)."""

import csv

import numpy as np
import pytest

import ankh_jax
from ankh_jax import generate, score
from ankh_jax.data.tokenizer import EOS_ID, RESIDUE_TO_ID, sentinel_id
from ankh_jax.inference import decoding, infilling, scoring
from ankh_jax.testing import DECODING_CFG as CFG
from ankh_jax.testing import DECODING_SEQS as SEQS


@pytest.fixture(scope="module")
def model(exported):
    return ankh_jax.load_model(str(exported))


@pytest.fixture()
def fasta(tmp_path):
    path = tmp_path / "in.fasta"
    path.write_text("".join(f">p{i} protein {i}\n{s}\n" for i, s in enumerate(SEQS)))
    return path


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_score_cli_pseudo_likelihood_equals_the_api(model, exported, fasta, tmp_path):
    out = tmp_path / "pll.csv"
    assert score.main([f"--model={exported}", f"--fasta={fasta}", f"--output={out}"]) == 0
    rows = _rows(out)
    assert [r["id"] for r in rows] == ["p0", "p1", "p2"]
    assert [int(r["length"]) for r in rows] == [len(s) for s in SEQS]
    np.testing.assert_allclose([float(r["pseudo_likelihood"]) for r in rows], model.pseudo_likelihood(SEQS),
                               rtol=1e-6)
    assert score.main([f"--model={exported}", f"--fasta={fasta}", f"--output={out}", "--max_records=2"]) == 0
    assert [r["id"] for r in _rows(out)] == ["p0", "p1"]


def test_score_cli_mutations_adds_a_column_and_spearman(model, exported, tmp_path, capsys):
    wt = SEQS[1]  # G S H M S L F D F F K N K G
    dms = tmp_path / "dms.csv"
    dms.write_text("mutant,DMS_score\nG1A,0.5\nS2T:H3Y,-1.0\nK11R,2.0\nF7W,0.1\n")
    out = tmp_path / "scored.csv"
    assert score.main([f"--model={exported}", f"--mutations={dms}", f"--wildtype={wt}", f"--output={out}"]) == 0
    rows = _rows(out)
    assert list(rows[0]) == ["mutant", "DMS_score", "ankh_score"]
    ours = [float(r["ankh_score"]) for r in rows]
    np.testing.assert_allclose(ours, model.score_mutations(wt, [r["mutant"] for r in rows]), rtol=1e-6)
    printed = capsys.readouterr().out
    from ankh_jax.downstream.metrics import spearman

    assert f'"spearman": {spearman(ours, [0.5, -1.0, 2.0, 0.1])}' in printed


@pytest.mark.parametrize("content,wt,msg", [
    ("mutant\nG1A\nS2A:X9Y\n", None, "line 3: mutant 'S2A:X9Y': X9Y: the wild type has 'F'"),
    ("mutant,DMS_score\nG1A,abc\n", None, "line 2: DMS_score='abc'"),
    ("variant\nG1A\n", None, "no column 'mutant'"),
    ("mutant\nG1A\n", "GSH1", "invalid residue '1' at position 4"),
])
def test_score_cli_bad_input_is_one_line_and_writes_nothing(exported, tmp_path, capsys, content, wt, msg):
    dms = tmp_path / "dms.csv"
    dms.write_text(content)
    out = tmp_path / "scored.csv"
    rc = score.main([f"--model={exported}", f"--mutations={dms}", f"--wildtype={wt or SEQS[1]}", f"--output={out}"])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_read_answer_accepts_only_the_exact_form():
    parent = "MKAL"
    r = {c: RESIDUE_TO_ID[c] for c in "GWK"}
    s0, s1 = sentinel_id(0), sentinel_id(1)
    assert infilling.read_answer([s0, r["G"], s1, r["W"], EOS_ID, 0], parent, (1, 3)) == ("MGAW", None)
    # what follows the last answer is ignored (small models go on with the next sentinel instead of </s>)
    assert infilling.read_answer([s0, r["G"], s1, r["W"], sentinel_id(2), r["K"]], parent, (1, 3)) == ("MGAW", None)
    for answer, why in [([s0, r["G"], s0, r["W"], EOS_ID], "expected <extra_id_1>"),
                        ([s1, r["G"], s0, r["W"], EOS_ID], "expected <extra_id_0>"),
                        ([s0, s1, r["W"], EOS_ID], "expected a residue"),
                        ([s0, r["G"], r["K"], s1, r["W"], EOS_ID], "expected <extra_id_1>"),
                        ([s0, r["G"], EOS_ID, 0, 0], "expected <extra_id_1>"),
                        ([s0, r["G"]], "stops before sentinel 1")]:
        filled, error = infilling.read_answer(answer, parent, (1, 3))
        assert filled is None and why in error, (answer, error)
    assert infilling.parse_mask_spec("2-3, 1,3", 4) == (0, 1, 2)
    for spec in ("0", "3-2", "5", "a"):
        with pytest.raises(ValueError):
            infilling.parse_mask_spec(spec, 4)


def test_generate_cli_writes_variants_and_counts_malformed(exported, fasta, tmp_path, monkeypatch, capsys):
    """The decoder is replaced by known answers: well-formed for p0 (sample 1) and p2, malformed for the rest."""
    real = decoding.generate

    def scripted(config, params, enc, **kw):
        out = real(config, params, enc, **kw)  # the real program runs; its answer is then overridden
        for row in range(enc.shape[0]):
            n = int((enc[row] >= sentinel_id(115)).sum())
            if row % 2 == 0:
                answer = [t for k in range(n) for t in (sentinel_id(k), RESIDUE_TO_ID["W"])] + [EOS_ID]
                out[row, :] = 0
                out[row, : len(answer)] = answer
        return out

    monkeypatch.setattr(decoding, "generate", scripted)
    out = tmp_path / "variants.fasta"
    argv = [f"--model={exported}", f"--fasta={fasta}", f"--output={out}", "--mask=2,4-5", "--num_samples=2",
            "--strategy=greedy", "--batch_tokens=64"]
    assert generate.main(argv) == 0
    rows = _rows(tmp_path / "variants.csv")
    assert [(r["id"], r["sample"]) for r in rows] == [("p0", "1"), ("p0", "2"), ("p1", "1"), ("p1", "2"),
                                                      ("p2", "1"), ("p2", "2")]
    assert all(r["masked"] == "2 4 5" for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    bad = [r for r in rows if r["status"].startswith("malformed: ")]
    assert ok and bad and len(ok) + len(bad) == 6
    records = out.read_text().split(">")[1:]
    assert len(records) == len(ok)
    for rec in records:
        header, *lines = rec.strip().splitlines()
        rid, parent = header.split()[0], header.split()[1].removeprefix("parent=")
        seq = "".join(lines)
        orig = SEQS[int(parent[1:])]
        assert rid.startswith(parent + "_sample") and len(seq) == len(orig)
        assert seq[1] == seq[3] == seq[4] == "W" and seq[2] == orig[2] and seq[5:] == orig[5:]
        changed = header.split("changed=")[1]
        assert changed == ",".join(f"{orig[p]}{p + 1}W" for p in (1, 3, 4) if orig[p] != "W")
    assert f'"malformed": {len(bad)}' in capsys.readouterr().out


def test_generate_cli_bad_mask_names_the_record(exported, fasta, tmp_path, capsys):
    out = tmp_path / "v.fasta"
    rc = generate.main([f"--model={exported}", f"--fasta={fasta}", f"--output={out}", "--mask=10"])
    err = capsys.readouterr().err
    assert rc == 2 and "record 'p2'" in err and "past the end" in err and not out.exists()
    assert not (tmp_path / "v.csv").exists()


def test_model_methods_delegate(model, params):
    ids = model.tokenizer.batch_encode(SEQS)[0]
    np.testing.assert_array_equal(model.generate(ids, max_new_tokens=6),
                                  decoding.generate(CFG, params, ids, max_new_tokens=6))
    samples = model.infill(SEQS[0], [2, 5], num_samples=3, seed=4)
    assert [s.sample for s in samples] == [1, 2, 3] and all(s.masked == (1, 4) for s in samples)
    assert all((s.sequence is None) == (s.error is not None) for s in samples)
    assert all(np.isfinite(s.log_likelihood) and s.log_likelihood < 0 for s in samples)
    prepared = decoding.prepare_params(CFG, params)
    np.testing.assert_allclose(model.pseudo_likelihood(SEQS[1:]), scoring.pseudo_likelihood(CFG, prepared, SEQS[1:]))
